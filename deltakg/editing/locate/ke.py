"""KE, KnowledgeEditor (De Cao et al. 2021): a hypernetwork conditioned on the edit writes the weight update.

The condition text ``<old> >> <new> || <query>`` is embedded (from the model's own embedding table), read by a
BiLSTM and projected; per edited matrix a weight-normed MLP turns it into ``A`` and ``B`` (rank one each), and
the update is ``mean over edits of sigmoid(s) * (G * A + B)`` with ``G`` the edit's fine-tuning gradient
(:mod:`deltakg.editing.hypernetwork`, the same code KGEditor points at its slots). Trained with KE's
Lagrangian, ``NLL + lambda * (KL - margin)`` (lambda >= 0 by gradient ascent) and centred RMSprop.

Written once against the locate adapter: the same class edits the KG model and causal LMs. It edits the FFN
output projections (every layer of the KG model by default, the last 2 of a causal LM); the paper's KE edits
every linear weight. The hypernetwork head normalises ``G`` and learns a step size (``normalize``,
``init_step``), as KGEditor's does; ``normalize=False, init_step=1`` is the paper's formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..editor import register_editor
from ..hypernetwork import KEHypernetwork
from .adapter import LocateAdapter
from .network import NetworkConfig, NetworkEditor, gradient_factors

__all__ = ["KEConfig", "KE", "KE_DEFAULTS"]


@dataclass
class KEConfig(NetworkConfig):
    """KE's settings; None fields take the model type's defaults (:data:`KE_DEFAULTS`)."""

    lstm_hidden: int = 128
    cond_dim: int = 1024
    hidden: int = 128
    max_condition_length: int = 64
    normalize: bool = True  # unit-norm G per edit (beyond the paper; see the module docstring)
    init_step: float | None = None  # the head's starting step size
    lagrangian: bool = True  # KE's constrained objective instead of a fixed locality weight
    margin: float = 0.1  # the KL the constraint allows
    lambda_lr: float = 0.1  # gradient-ascent rate of the multiplier
    train_condition_embedding: bool = False  # KE trains its copy of the table; frozen is far cheaper on a CPU

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lstm_hidden", "cond_dim", "hidden", "max_condition_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.margin < 0 or self.lambda_lr <= 0:
            raise ValueError(f"margin must be >= 0 and lambda_lr > 0, got {self.margin}, {self.lambda_lr}")


KE_DEFAULTS: dict[str, dict[str, Any]] = {
    "*": {"lr": 5e-4, "optimizer": "rmsprop", "init_step": 1.0, "last_layers": 2},
    "bert": {"last_layers": 64},  # every layer of the KG model's encoder
    "roberta": {"last_layers": 64},
    "electra": {"last_layers": 64},
}


@register_editor
class KE(NetworkEditor):
    """KE: a hypernetwork conditioned on the edit text turns the fine-tuning gradient into the update."""

    name = "ke"
    summary = "KE (KnowledgeEditor): a BiLSTM-conditioned hypernetwork turns fine-tuning gradients into updates"
    config_class: ClassVar[type] = KEConfig
    defaults: ClassVar[dict] = KE_DEFAULTS

    def build(self, adapter: LocateAdapter, config: KEConfig, shapes: dict[str, list[int]]) -> nn.Module:
        """The condition encoder and one update head per edited matrix."""
        embedding, pad_id = adapter.condition_embedding()
        net = KEHypernetwork(embedding.detach().float(), {n: tuple(s) for n, s in shapes.items()}, pad_id=pad_id,
                             lstm_hidden=config.lstm_hidden, cond_dim=config.cond_dim, hidden=config.hidden,
                             init_step=config.init_step, normalize=config.normalize)
        net.encoder.embedding.weight.requires_grad_(config.train_condition_embedding)
        return net

    def param_groups(self, config: KEConfig) -> list[dict[str, Any]]:
        """The hypernetwork's trainable parameters."""
        return [{"params": [p for p in self.net.parameters() if p.requires_grad], "lr": config.lr}]

    def deltas(self, adapter: LocateAdapter, requests: Any) -> dict[str, torch.Tensor]:
        """The hypernetwork's (out, in) update per edited matrix from each edit's own gradient."""
        config = self.resolved(adapter)
        factors, owners = gradient_factors(adapter, requests, self.names, config.key_position)
        count = adapter.requests_count(requests)
        grads = {}
        for name, (u, delta) in factors.items():
            # per edit i: G_i = sum over its tokens of delta u^T, (count, out, in)
            grads[name] = torch.stack([delta[owners == i].T @ u[owners == i] for i in range(count)])
        ids, mask = adapter.condition_inputs(requests, config.max_condition_length)
        return self.net(ids, mask, grads)
