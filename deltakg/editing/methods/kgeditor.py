"""KGEditor (deltaKG): KE's hypernetwork pointed at added side-FFN slots only; the base model stays frozen.

The slots' weights never train directly: an edit computes the fine-tuning gradient of the slot matrices
for each case, the hypernetwork turns (condition text, gradient) into an update, and the update is added
to the slot weights. Training the hypernetwork (:mod:`deltakg.editing.methods.kgeditor_training`) uses the
KL Lagrangian on stable facts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kg_data.errors import KGDataError
from kg_data.formats import read_json_object

from ..editor import Editor, register_editor
from ..gradients import per_edit_gradients
from ..hypernetwork import KEHypernetwork
from ..slots import add_slots, resolve_layers, slot_parameter_names
from ..target import EncodedFacts, KGETarget
from ..weights import apply_delta

__all__ = ["KGEditorConfig", "KGEditor"]


@dataclass
class KGEditorConfig:
    """KGEditor hyperparameters (defaults per dataset in ``deltakg/configs/kgeditor.json``)."""

    layers: list[int] = field(default_factory=lambda: [-1])
    extra: int = 16
    lstm_hidden: int = 128
    cond_dim: int = 1024
    hidden: int = 128
    max_condition_length: int = 64
    init_step: float = 100.0
    normalize_grad: bool = True
    train_condition_embedding: bool = False
    margin: float = 0.1
    lr: float = 5e-4
    lambda_lr: float = 0.1
    edits_per_step: int = 2
    stable_per_step: int = 8
    epochs: int = 20
    patience: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.extra < 1:
            raise ValueError(f"extra must be >= 1, got {self.extra}")
        if not self.layers:
            raise ValueError("layers must name at least one layer")

    @classmethod
    def for_dataset(cls, dataset: str, **overrides: Any) -> "KGEditorConfig":
        """The defaults for ``dataset`` from the packaged config file, then ``overrides``."""
        table = json.loads(resources.files("deltakg").joinpath("configs/kgeditor.json").read_text())
        values = {**table.get("default", {}), **table.get(dataset.lower(), {})}
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown KGEditor option(s): {', '.join(sorted(unknown))}")
        return cls(**values)


@register_editor
class KGEditor(Editor):
    """Hypernetwork-generated updates of side-FFN slot weights."""

    name = "kgeditor"

    def __init__(self, config: KGEditorConfig | None = None, *, state: dict[str, torch.Tensor] | None = None,
                 slot_init: dict[str, torch.Tensor] | None = None) -> None:
        self.config = config or KGEditorConfig()
        self.hypernet: KEHypernetwork | None = None
        self._state, self._slot_init = state, slot_init
        self.slot_names: list[str] = []

    # ----------------------------------------------------------------------------------------- set-up
    def prepare(self, target: KGETarget) -> None:
        """Add the slots (with their saved initial weights) and build the hypernetwork for this model."""
        model = target.model
        if self.slot_names and set(self.slot_names) <= set(slot_parameter_names(model)):
            return
        if slot_parameter_names(model):
            raise ValueError("the model already holds slots from another editor; load a fresh model")
        generator_state = torch.get_rng_state()
        torch.manual_seed(self.config.seed)  # slot initialisation is part of the editor: seeded
        self.slot_names = add_slots(model, self.config.layers, self.config.extra)
        torch.set_rng_state(generator_state)
        named = dict(model.named_parameters())
        if self._slot_init is not None:
            with torch.no_grad():
                for name in self.slot_names:
                    if name not in self._slot_init or self._slot_init[name].shape != named[name].shape:
                        raise KGDataError(f"the editor's saved slots do not fit this model (slot {name})", field="editor")
                    named[name].copy_(self._slot_init[name])
        self._slot_init = {name: named[name].detach().clone() for name in self.slot_names}
        words = model.encoder.get_input_embeddings().weight
        shapes = {name: tuple(named[name].shape) for name in self.slot_names}
        self.hypernet = KEHypernetwork(
            words, shapes, pad_id=model.config.special_ids["pad"], lstm_hidden=self.config.lstm_hidden,
            cond_dim=self.config.cond_dim, hidden=self.config.hidden, init_step=self.config.init_step,
            normalize=self.config.normalize_grad,
        ).to(words.device)
        # a trainable copy of the word table is KE's choice; frozen it costs far less per step on a CPU
        self.hypernet.encoder.embedding.weight.requires_grad_(self.config.train_condition_embedding)
        if self._state is not None:
            self.hypernet.load_state_dict(self._state)
        self.hypernet.eval()

    def touched(self, target: KGETarget) -> list[str]:
        """The slot weights."""
        return list(self.slot_names)

    def parameter_counts(self, target: KGETarget) -> dict[str, int]:
        """Hypernetwork parameters (trained) and slot parameters (added to the model)."""
        named = dict(target.model.named_parameters())
        return {
            "trainable": sum(p.numel() for p in self.hypernet.parameters() if p.requires_grad) if self.hypernet else 0,
            "added": sum(named[n].numel() for n in self.slot_names),
        }

    # ----------------------------------------------------------------------------------------- editing
    def condition_inputs(self, target: KGETarget, cases: EncodedFacts) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask of the cases' condition texts (in the base vocabulary)."""
        encoded = target.model.tokenizer(
            target.condition_texts(cases), padding=True, truncation=True,
            max_length=self.config.max_condition_length, return_tensors="pt",
        )
        device = target.model.entity_bias.device
        return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)

    def updates(self, target: KGETarget, cases: EncodedFacts) -> dict[str, torch.Tensor]:
        """The hypernetwork's slot updates for a batch (differentiable w.r.t. the hypernetwork)."""
        grads = per_edit_gradients(target, cases, self.slot_names)
        ids, mask = self.condition_inputs(target, cases)
        return self.hypernet(ids, mask, grads)

    def edit(self, target: KGETarget, cases: EncodedFacts) -> None:
        """Add the hypernetwork's updates to the slot weights."""
        if self.hypernet is None:
            raise RuntimeError("call prepare() (or run_edits) before edit()")
        with torch.no_grad():
            deltas = self.updates(target, cases)
        named = dict(target.model.named_parameters())
        for name, delta in deltas.items():
            apply_delta(named[name], delta, name=name)

    # ----------------------------------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``kgeditor.json``, the hypernetwork and the slots' initial weights."""
        if self.hypernet is None:
            raise RuntimeError("nothing to save: the editor has not been prepared on a model")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"method": self.name, "config": asdict(self.config), "slots": self.slot_names}
        (directory / "kgeditor.json").write_text(json.dumps(meta, indent=2) + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.hypernet.state_dict().items()},
                  str(directory / "hypernetwork.safetensors"))
        save_file({k: v.cpu().contiguous() for k, v in self._slot_init.items()}, str(directory / "slots.safetensors"))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "KGEditor":
        """Load an editor written by :meth:`save_pretrained` (it is prepared on the model at edit time)."""
        directory = Path(directory)
        meta_path = directory / "kgeditor.json"
        meta = read_json_object(meta_path, written_by="deltakg train-editor")
        if meta.get("method") != cls.name:
            raise KGDataError(f"an editor of method {meta.get('method')!r}, expected {cls.name!r}", path=meta_path)
        editor = cls(KGEditorConfig(**meta["config"]), state=load_file(str(directory / "hypernetwork.safetensors")),
                     slot_init=load_file(str(directory / "slots.safetensors")))
        return editor

    def layers_of(self, target: KGETarget) -> list[int]:
        """The absolute layer indices holding slots."""
        return resolve_layers(target.model, self.config.layers)
