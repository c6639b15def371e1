"""FT-L: fine-tune one FFN output projection on the edit targets, each weight kept within +/-eps of its start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from ..editor import register_editor
from .adapter import KEY_POSITIONS, weight_name
from .base import LocateEditor

__all__ = ["FTLConfig", "FTL"]


@dataclass
class FTLConfig:
    """FT-L's settings; None fields take the model type's defaults (:data:`FTL_DEFAULTS`)."""

    layer: int | None = None  # the tuned layer's FFN output projection (negative counts from the end)
    lr: float | None = None  # Adam learning rate
    steps: int | None = None  # most Adam steps per batch
    eps: float | None = None  # L-inf radius around the original weights
    stop_loss: float | None = None  # stop once the batch's mean target NLL is below this

    def __post_init__(self) -> None:
        for name in ("lr", "steps", "eps"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.stop_loss is not None and self.stop_loss < 0:
            raise ValueError(f"stop_loss must be >= 0, got {self.stop_loss}")


FTL_DEFAULTS: dict[str, dict[str, Any]] = {
    "*": {"lr": 5e-4, "steps": 25, "eps": 5e-3, "stop_loss": 1e-2},
    "gpt2": {"layer": -1},
    "llama": {"layer": -1},
    "bert": {"layer": -1},
}


@register_editor
class FTL(LocateEditor):
    """FT-L (Zhu et al. 2020, as EasyEdit runs it): Adam on one MLP output projection under an L-inf clamp."""

    name = "ft-l"
    summary = "FT-L: Adam on one FFN output projection, weights clamped to +/-eps of the original (L-inf)"
    defaults: ClassVar[dict] = FTL_DEFAULTS

    def __init__(self, config: FTLConfig | None = None, corpus: Sequence[object] | None = None) -> None:
        super().__init__(config or FTLConfig(), corpus)

    def edit(self, target: Any, cases: Any) -> None:
        """Adam steps on the batch's target NLL; after each, clamp every weight to [w0 - eps, w0 + eps]."""
        adapter = self.adapter(target)
        config = self.resolved(adapter)
        (layer,) = self.layers(adapter)
        weight = dict(adapter.model.named_parameters())[weight_name(adapter, layer)]
        original = weight.detach().clone()
        probe = adapter.target_probe(cases, KEY_POSITIONS[1], [""])
        frozen = [p for p in adapter.model.parameters() if p.requires_grad and p is not weight]
        for p in frozen:
            p.requires_grad_(False)
        weight.requires_grad_(True)
        optimizer = torch.optim.Adam([weight], lr=config.lr)
        was_training = adapter.model.training
        adapter.model.eval()
        try:
            for _ in range(config.steps):
                loss = adapter.target_nll(probe, adapter.forward(probe.inputs)).mean()
                if float(loss.detach()) < config.stop_loss:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    weight.copy_(torch.maximum(torch.minimum(weight, original + config.eps), original - config.eps))
        finally:
            optimizer.zero_grad(set_to_none=True)
            for p in frozen:
                p.requires_grad_(True)
            adapter.model.train(was_training)
