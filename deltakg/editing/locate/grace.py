"""GRACE (Hartvigsen et al. 2023): a codebook of (key, value, radius, label) in front of one layer's output.

The query is the layer's input at a position; the nearest key within its radius replaces the layer's output
there and at every later position of that sequence (so a multi-token target is produced after a matching
prompt). New edit: no key within ``eps_init + radius`` -> add a key; a near key with another label -> add
one and shrink both radii to half their distance; the same label -> grow that key's radius to reach the
query. Values are trained (Adam) on the target's NLL. The codebook lives in a forward hook, so the model's
weights and parameter names never change; rolling an edit back removes its entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..editor import register_editor
from .adapter import KEY_POSITIONS, LocateAdapter
from .base import LocateEditor
from .hooks import capture, read_at

__all__ = ["GRACEConfig", "GRACE", "Codebook", "CodebookSnapshot"]


@dataclass
class GRACEConfig:
    """GRACE's settings; None fields take the model type's defaults (:data:`GRACE_DEFAULTS`)."""

    layer: int | None = None  # the wrapped layer's FFN output projection (negative counts from the end)
    eps_init: float | None = None  # radius of a new key (Euclidean, in the layer input's units)
    lr: float | None = None  # Adam learning rate of a value
    steps: int | None = None  # most Adam steps per edit
    stop_nll: float | None = None  # stop training a value once its target NLL is below this

    def __post_init__(self) -> None:
        for name in ("eps_init", "lr", "steps"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")


GRACE_DEFAULTS: dict[str, dict[str, Any]] = {
    "*": {"eps_init": 1.0, "lr": 1.0, "steps": 100, "stop_nll": 1e-2},
    "gpt2": {"layer": -1},
    "llama": {"layer": -1},
    "bert": {"layer": -1},
}


class Codebook:
    """Keys (m, in), values (m, out), radii (m,) and labels; ``hook`` applies it to a module's output."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.radii: torch.Tensor | None = None
        self.labels: list[str] = []
        self.handle: Any = None

    def __len__(self) -> int:
        return len(self.labels)

    def hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        """Replace the output from the first position whose input lies within a key's radius onward."""
        if not len(self):
            return out
        query = args[0]
        dist = torch.cdist(query.reshape(-1, query.shape[-1]).float(), self.keys.float()).view(*query.shape[:-1], -1)
        nearest, index = dist.min(dim=-1)  # (b, t)
        hit = nearest <= self.radii[index]
        if not bool(hit.any()):
            return out
        first = torch.where(hit.any(dim=1), hit.float().argmax(dim=1), torch.full_like(hit[:, 0], hit.shape[1],
                                                                                      dtype=torch.long))
        rows = torch.arange(hit.shape[0], device=hit.device)
        chosen = self.values[index[rows, first.clamp(max=hit.shape[1] - 1)]]  # (b, out)
        onward = torch.arange(hit.shape[1], device=hit.device)[None, :] >= first[:, None]
        return torch.where(onward[..., None], chosen[:, None, :].to(out.dtype), out)

    def add(self, key: torch.Tensor, value: torch.Tensor, radius: float, label: str) -> None:
        """Append an entry."""
        key, value = key.detach()[None].float(), value.detach()[None].float()
        radius_t = torch.tensor([radius], dtype=torch.float32, device=key.device)
        if self.keys is None:
            self.keys, self.values, self.radii = key, value, radius_t
        else:
            self.keys = torch.cat([self.keys, key])
            self.values = torch.cat([self.values, value])
            self.radii = torch.cat([self.radii, radius_t])
        self.labels.append(label)


class CodebookSnapshot:
    """The codebook's entries now; ``restore`` drops later entries and puts radii and values back (bit-exact)."""

    names: list[str] = []

    def __init__(self, codebook: Codebook) -> None:
        self.codebook = codebook
        clone = lambda t: None if t is None else t.clone()  # noqa: E731
        self._saved = (clone(codebook.keys), clone(codebook.values), clone(codebook.radii), list(codebook.labels))

    def restore(self) -> None:
        """Put the saved entries back."""
        keys, values, radii, labels = self._saved
        clone = lambda t: None if t is None else t.clone()  # noqa: E731
        self.codebook.keys, self.codebook.values, self.codebook.radii = clone(keys), clone(values), clone(radii)
        self.codebook.labels = list(labels)


@register_editor
class GRACE(LocateEditor):
    """GRACE: a key-value codebook in front of one layer, grown edit by edit; built for lifelong editing."""

    name = "grace"
    summary = "GRACE: a codebook of (key, value, radius) replacing one layer's output near edited prompts"
    defaults: ClassVar[dict] = GRACE_DEFAULTS

    def __init__(self, config: GRACEConfig | None = None, corpus: Sequence[object] | None = None) -> None:
        super().__init__(config or GRACEConfig(), corpus)
        self._books: dict[int, Codebook] = {}

    def touched(self, target: Any) -> list[str]:
        """No weight is written."""
        return []

    def codebook(self, target: Any) -> Codebook:
        """The codebook attached to the target's model (attached on first use)."""
        adapter = self.adapter(target)
        book = self._books.get(id(adapter.model))
        if book is None:
            (layer,) = self.layers(adapter)
            book = Codebook()
            module = adapter.model.get_submodule(adapter.layout.ffn_out.format(layer))
            book.handle = module.register_forward_hook(book.hook)
            self._books[id(adapter.model)] = book
        return book

    def detach(self, target: Any) -> None:
        """Remove the codebook from the model (it computes exactly what it did before any edit)."""
        book = self._books.pop(id(self.adapter(target).model), None)
        if book is not None:
            book.handle.remove()

    def prepare(self, target: Any) -> None:
        """Attach the (empty) codebook."""
        self.codebook(target)

    def snapshot(self, target: Any) -> CodebookSnapshot:
        """The codebook's entries now."""
        return CodebookSnapshot(self.codebook(target))

    def parameter_counts(self, target: Any) -> dict[str, int]:
        """Numbers held by the codebook."""
        book = self.codebook(target)
        added = 0 if not len(book) else book.keys.numel() + book.values.numel() + book.radii.numel()
        return {"edited": 0, "added": added}

    def edit(self, target: Any, cases: Any) -> None:
        """Edit after edit: place or adjust a key at the last prompt token, then train its value."""
        adapter = self.adapter(target)
        config = self.resolved(adapter)
        book = self.codebook(target)
        (layer,) = self.layers(adapter)
        module = adapter.model.get_submodule(adapter.layout.ffn_out.format(layer))
        labels = adapter.labels(cases)
        was_training = adapter.model.training
        adapter.model.eval()
        try:
            for i in range(adapter.requests_count(cases)):
                self._edit_one(adapter, module, book, adapter.select(cases, [i]), labels[i], config)
        finally:
            adapter.model.train(was_training)

    def _edit_one(self, adapter: LocateAdapter, module: nn.Module, book: Codebook, request: Any, label: str,
                  config: GRACEConfig) -> None:
        probe = adapter.target_probe(request, KEY_POSITIONS[1], [""])
        with torch.no_grad():
            with capture(module) as inputs, capture(module, output=True) as outputs:
                handle, book.handle = book.handle, None
                handle.remove()  # read the unedited layer, not the codebook's replacement
                try:
                    adapter.forward(probe.inputs)
                finally:
                    book.handle = module.register_forward_hook(book.hook)
            query = read_at(inputs[0], probe.positions)[0].float()
            start = read_at(outputs[0], probe.positions)[0].float()
        index = len(book)
        if len(book):
            dist = torch.linalg.vector_norm(book.keys - query, dim=1)
            nearest = int(dist.argmin())
            d = float(dist[nearest])
            if d <= config.eps_init + float(book.radii[nearest]):
                if book.labels[nearest] == label:
                    book.radii[nearest] = max(float(book.radii[nearest]), d)
                    index, start = nearest, book.values[nearest]
                else:
                    book.radii[nearest] = d / 2
                    book.add(query, start, d / 2, label)
            else:
                book.add(query, start, config.eps_init, label)
        else:
            book.add(query, start, config.eps_init, label)
        self._train_value(adapter, book, index, probe, config)

    def _train_value(self, adapter: LocateAdapter, book: Codebook, index: int, probe: Any,
                     config: GRACEConfig) -> None:
        value = book.values[index].clone().requires_grad_(True)
        optimizer = torch.optim.Adam([value], lr=config.lr)
        others = book.values.detach()
        params = [p for p in adapter.model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            for _ in range(config.steps):
                book.values = torch.cat([others[:index], value[None], others[index + 1:]])
                loss = adapter.target_nll(probe, adapter.forward(probe.inputs)).mean()
                # no gradient: an earlier position of the prompt already falls in another entry's radius, so this
                # value never reaches the target; the edit then fails visibly (Succ@k) instead of raising
                if float(loss.detach()) < config.stop_nll or not loss.requires_grad:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        finally:
            for p in params:
                p.requires_grad_(True)
            values = torch.cat([others[:index], value.detach()[None], others[index + 1:]])
            if not torch.isfinite(values).all():
                raise FloatingPointError("GRACE trained a NaN/inf value; the codebook was restored")
            book.values = values
