"""MEND (Mitchell et al. 2022): a trained network maps the rank-one factors of a fine-tuning gradient to an update.

For a linear layer ``y = W x`` the gradient of a loss is ``sum_i delta_i u_i^T`` over tokens ``i`` (``u_i`` the
layer's input, ``delta_i = dL/dy_i``). MEND's editor network, shared by the edited layers of one shape, maps
each ``[u_i; delta_i]``, normalised by running statistics, through an identity-initialised low-rank residual
MLP with a per-layer scale and shift to ``[u~_i; delta~_i]``; the edit is ``W <- W - alpha_l sum_i delta~_i
u~_i^T`` with a learned step ``alpha_l`` per layer. It is trained (:func:`train_mend`) so that the edited model
gives the edit's target (NLL) while its output distribution on unrelated inputs stays (KL(pre || post)).

Written once against the locate adapter: the same class edits the KG model (FFN output projections of its
last 3 layers, the factors read at every token of the query) and causal LMs (GPT-2's ``Conv1D``, Llama's
``Linear``). It edits the FFN *output* projections only; the original also edits the input projections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..editor import register_editor
from ..hypernetwork import module_key
from .adapter import LocateAdapter
from .network import NetworkConfig, NetworkEditor, gradient_factors, train_network_editor

__all__ = ["MENDConfig", "MEND", "MENDNetwork", "train_mend", "MEND_DEFAULTS"]


@dataclass
class MENDConfig(NetworkConfig):
    """MEND's settings; None fields take the model type's defaults (:data:`MEND_DEFAULTS`)."""

    rank: int | None = None  # hidden width of the low-rank residual MLP (the original: 1920)
    init_log_alpha: float | None = None  # log of each layer's starting edit step
    alpha_lr: float = 1e-2  # Adam on the per-layer log steps (the original's lr_lr)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.alpha_lr <= 0:
            raise ValueError(f"alpha_lr must be > 0, got {self.alpha_lr}")


MEND_DEFAULTS: dict[str, dict[str, Any]] = {
    "*": {"rank": 256, "init_log_alpha": math.log(1e-2), "lr": 1e-3, "optimizer": "adam"},
    "gpt2": {"last_layers": 2},
    "llama": {"last_layers": 2},
    "bert": {"last_layers": 3},  # METHODS.md §2: the last 3 layers in the KGE setting
    "roberta": {"last_layers": 3},
    "electra": {"last_layers": 3},
}


class _RunningNorm(nn.Module):
    """Per-feature mean and variance, accumulated before training (Welford, float64), then fixed."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add rows of ``x`` to the statistics."""
        x = x.detach().double()
        n = x.shape[0]
        if n == 0:
            return
        mean, total = x.mean(dim=0), self.count + n
        delta = mean - self.mean
        self.m2 += ((x - mean) ** 2).sum(dim=0) + delta ** 2 * self.count * n / total
        self.mean += delta * n / total
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std``; the identity until statistics exist."""
        if float(self.count) < 2:
            return x
        std = (self.m2 / (self.count - 1)).clamp_min(1e-12).sqrt()
        return (x - self.mean.to(x.dtype)) / std.to(x.dtype)


class MENDNetwork(nn.Module):
    """The editor network of one weight shape: normalise, identity-initialised low-rank residual MLP, per-layer
    scale and shift; ``[u; delta]`` in, ``[u~; delta~]`` out."""

    def __init__(self, in_dim: int, out_dim: int, rank: int, layers: int) -> None:
        super().__init__()
        dim = in_dim + out_dim
        self.in_dim = in_dim
        self.norm = _RunningNorm(dim)
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)  # identity at the start: the untrained editor is a normalised gradient step
        nn.init.zeros_(self.up.bias)
        self.scale = nn.Parameter(torch.ones(layers, dim))
        self.shift = nn.Parameter(torch.zeros(layers, dim))

    def forward(self, u: torch.Tensor, delta: torch.Tensor, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Transformed factors of one layer (``slot`` its index among the layers sharing this network)."""
        x = self.norm(torch.cat([u, delta], dim=-1))
        h = x + self.up(torch.relu(self.down(x)))
        h = h * self.scale[slot] + self.shift[slot]
        return h[:, : self.in_dim], h[:, self.in_dim:]


class _MENDState(nn.Module):
    """One :class:`MENDNetwork` per weight shape and one log step per edited weight."""

    def __init__(self, shapes: dict[str, list[int]], rank: int, init_log_alpha: float) -> None:
        super().__init__()
        groups: dict[str, list[str]] = {}
        for name, (out_dim, in_dim) in shapes.items():
            groups.setdefault(f"{out_dim}x{in_dim}", []).append(name)
        self.slots = {name: (key, group.index(name)) for key, group in groups.items() for name in group}
        self.networks = nn.ModuleDict({key: MENDNetwork(shapes[group[0]][1], shapes[group[0]][0], rank, len(group))
                                       for key, group in groups.items()})
        self.log_alpha = nn.ParameterDict({module_key(n): nn.Parameter(torch.tensor(float(init_log_alpha)))
                                           for n in shapes})


@register_editor
class MEND(NetworkEditor):
    """MEND: a trained network turns the gradient's rank-one factors into an update of FFN output projections."""

    name = "mend"
    summary = "MEND: a trained network maps fine-tuning gradient factors to updates of the last FFN projections"
    config_class: ClassVar[type] = MENDConfig
    defaults: ClassVar[dict] = MEND_DEFAULTS

    def build(self, adapter: LocateAdapter, config: MENDConfig, shapes: dict[str, list[int]]) -> nn.Module:
        """The per-shape networks and per-layer steps."""
        return _MENDState(shapes, config.rank, config.init_log_alpha)

    def deltas(self, adapter: LocateAdapter, requests: Any) -> dict[str, torch.Tensor]:
        """``-alpha_l * sum_i delta~_i u~_i^T`` per edited weight."""
        factors, _ = gradient_factors(adapter, requests, self.names, self.resolved(adapter).key_position)
        out = {}
        for name, (u, delta) in factors.items():
            key, slot = self.net.slots[name]
            u_t, d_t = self.net.networks[key](u, delta, slot)
            out[name] = -self.net.log_alpha[module_key(name)].exp() * (d_t.T @ u_t)
        return out

    def warm_up(self, adapter: LocateAdapter, edits: Any, config: MENDConfig) -> None:
        """One pass over the training edits for the factors' statistics, so the network sees normalised inputs
        from its first step (the original normalises with running statistics from its start)."""
        count = adapter.requests_count(edits)
        for start in range(0, count, config.edits_per_step):
            batch = adapter.select(edits, list(range(start, min(start + config.edits_per_step, count))))
            factors, _ = gradient_factors(adapter, batch, self.names, config.key_position)
            for name, (u, delta) in factors.items():
                self.net.networks[self.net.slots[name][0]].norm.update(torch.cat([u, delta], dim=-1))

    def param_groups(self, config: MENDConfig) -> list[dict[str, Any]]:
        """The networks at ``lr``, the log steps at ``alpha_lr``."""
        return [{"params": list(self.net.networks.parameters()), "lr": config.lr},
                {"params": list(self.net.log_alpha.parameters()), "lr": config.alpha_lr}]

    def training_summary(self) -> dict[str, Any]:
        """The learnt per-layer steps."""
        return {"steps": {n: float(self.net.log_alpha[module_key(n)].detach().exp()) for n in self.names}}


def train_mend(editor: MEND, target: Any, edits: Any, locality: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`~deltakg.editing.locate.network.train_network_editor` for a MEND."""
    return train_network_editor(editor, target, edits, locality, **kwargs)
