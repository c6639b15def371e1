"""CaliNet (Dong et al. 2022) on the KG model: train freshly added side-FFN slots on the edit batch.

The deltaKG paper's baseline: the same slots as KGEditor (``up(down(x))`` beside the FFN output of the last
layers, :mod:`deltakg.editing.slots`), with the base model frozen and only the slot weights trained on the edit
facts by Adafactor (lr 3e-4 in the paper). No hypernetwork: the slots are fitted per batch, so this is
"fine-tuning added parameters" and the row that shows what KGEditor's hypernetwork adds over it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from kg_data.errors import KGDataError

from ..editor import Editor, register_editor
from ..slots import add_slots, slot_parameter_names
from ..target import EncodedFacts, KGETarget
from .ft import fit_edit_batch

__all__ = ["CaliNet", "CaliNetConfig"]


@dataclass
class CaliNetConfig:
    """Slots (the paper: 32 wide in the last 2 layers) and their optimisation per edit batch."""

    layers: list[int] = field(default_factory=lambda: [-2, -1])
    extra: int = 32
    lr: float = 3e-4  # the paper's Adafactor learning rate
    steps: int = 20
    stop_when_done: bool = True  # stop once every target ranks first, as FT does
    seed: int = 0  # slot initialisation

    def __post_init__(self) -> None:
        if self.extra < 1 or self.steps < 1 or not self.lr > 0 or not self.layers:
            raise KGDataError(f"CaliNet needs extra >= 1, steps >= 1, lr > 0 and some layers, got {asdict(self)}",
                              field="calinet")


@register_editor
class CaliNet(Editor):
    """Adafactor steps on the edit batch's cross-entropy, through added slot weights only (base model frozen)."""

    name = "calinet"
    summary = "CaliNet: added side-FFN slots (last 2 layers, 32 wide) trained on the edit batch, base model frozen"

    def __init__(self, config: CaliNetConfig | None = None, **overrides) -> None:
        base = asdict(config) if config is not None else {}
        self.config = CaliNetConfig(**{**base, **overrides})
        self.slot_names: list[str] = []

    def prepare(self, target: KGETarget) -> None:
        """Add the slots once, seeded, so that every run of the editor starts from the same slot weights."""
        model = target.model
        present = slot_parameter_names(model)
        if self.slot_names and set(self.slot_names) <= set(present):
            return
        if present:
            raise ValueError("the model already holds slots from another editor; load a fresh model")
        generator_state = torch.get_rng_state()
        torch.manual_seed(self.config.seed)
        try:
            self.slot_names = add_slots(model, self.config.layers, self.config.extra)
        finally:
            torch.set_rng_state(generator_state)

    def touched(self, target: KGETarget) -> list[str]:
        """The slot weights (added first if this model has none yet)."""
        self.prepare(target)
        return list(self.slot_names)

    def parameter_counts(self, target: KGETarget) -> dict[str, int]:
        """The slot weights CaliNet adds and trains."""
        named = dict(target.model.named_parameters())
        return {"added": sum(named[n].numel() for n in self.touched(target))}

    def edit(self, target: KGETarget, cases: EncodedFacts) -> None:
        """Train the slots on the batch (dropout off, base weights without gradients: deterministic and cheap)."""
        from transformers.optimization import Adafactor

        # a fixed learning rate, as the paper's "Adafactor, lr 3e-4" (Adafactor's own relative step is off)
        fit_edit_batch(target, cases, self.touched(target),
                       lambda params: Adafactor(params, lr=self.config.lr, scale_parameter=False,
                                                relative_step=False, warmup_init=False),
                       steps=self.config.steps, stop_when_done=self.config.stop_when_done)
