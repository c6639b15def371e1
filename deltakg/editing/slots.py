"""Side-FFN slots (KGEditor, CaliNet): an extra branch in chosen FFN layers.

In a BERT layer the FFN is ``intermediate (d -> 4d, GELU)`` then ``output.dense (4d -> d)``, added to the
residual before LayerNorm. A slot adds ``up(down(x))`` with ``down: 4d -> ex`` and ``up: ex -> d`` (no
nonlinearity between) to ``output.dense(x)``, so it acts before the residual LayerNorm.

``down`` starts random (std 0.02); ``up`` starts at zero so that a model with fresh slots computes exactly
what it computed without them (the paper starts both random; a zero ``up`` keeps the unedited model intact
while its gradient, and so every hypernetwork update, is non-zero).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SideFFN", "FFN_OUTPUT_TEMPLATES", "add_slots", "remove_slots", "slot_parameter_names", "resolve_layers"]

# where the FFN output projection lives, per encoder family (exact model_type keys; unknown types are an error)
FFN_OUTPUT_TEMPLATES = {
    "bert": "encoder.encoder.layer.{}.output.dense",
    "roberta": "encoder.encoder.layer.{}.output.dense",
    "electra": "encoder.encoder.layer.{}.output.dense",
}


class SideFFN(nn.Module):
    """``dense(x) + up(down(x))``."""

    def __init__(self, dense: nn.Linear, extra: int, *, std: float = 0.02) -> None:
        super().__init__()
        self.dense = dense
        self.down = nn.Linear(dense.in_features, extra, bias=False)
        self.up = nn.Linear(extra, dense.out_features, bias=False)
        nn.init.normal_(self.down.weight, std=std)
        nn.init.zeros_(self.up.weight)
        # second moment of the keys of the edits this slot holds (editors that protect earlier edits use it);
        # a buffer, so that weight snapshots and rollback cover it; not saved with the model
        self.register_buffer("edit_keys", torch.zeros(extra, extra), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The FFN output plus the slot's contribution."""
        return self.dense(x) + self.up(self.down(x))


def _template(model: nn.Module) -> str:
    model_type = model.encoder.config.model_type
    if model_type not in FFN_OUTPUT_TEMPLATES:
        raise ValueError(f"no FFN layout known for model_type {model_type!r}; known: {', '.join(FFN_OUTPUT_TEMPLATES)}")
    return FFN_OUTPUT_TEMPLATES[model_type]


def resolve_layers(model: nn.Module, layers: list[int]) -> list[int]:
    """Absolute layer indices; negative ones count from the last layer."""
    n = model.encoder.config.num_hidden_layers
    out = sorted({i % n if -n <= i < n else _bad_layer(i, n) for i in layers})
    return out


def _bad_layer(i: int, n: int) -> int:
    raise ValueError(f"layer {i} is out of range for an encoder of {n} layers")


def add_slots(model: nn.Module, layers: list[int], extra: int) -> list[str]:
    """Wrap the FFN output of ``layers`` with fresh slots; returns the slots' weight names (down, up per layer)."""
    template = _template(model)
    names = []
    for layer in resolve_layers(model, layers):
        path = template.format(layer)
        parent_path, attr = path.rsplit(".", 1)
        parent = model.get_submodule(parent_path)
        current = getattr(parent, attr)
        if isinstance(current, SideFFN):
            raise ValueError(f"layer {layer} already has a slot")
        device = current.weight.device
        setattr(parent, attr, SideFFN(current, extra).to(device))
        names += [f"{path}.down.weight", f"{path}.up.weight"]
    return names


def slot_parameter_names(model: nn.Module) -> list[str]:
    """Names of all slot weights currently in the model."""
    return [f"{name}.{part}.weight" for name, module in model.named_modules() if isinstance(module, SideFFN)
            for part in ("down", "up")]


def remove_slots(model: nn.Module) -> None:
    """Put the original FFN output projections back (the model computes exactly what it did before)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, SideFFN):
            parent_path, attr = name.rsplit(".", 1)
            setattr(model.get_submodule(parent_path), attr, module.dense)
