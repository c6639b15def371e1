"""MEMIT (Meng et al. 2023): many edits at once, spread over several layers' FFN output projections.

The value step is ROME's, at the last edited layer L: z_i = h_L(request i) + delta_i. Then, for each edited
layer l in order, with the weights as the earlier layers left them: keys K_l (n, in), residual
R = (z - h_L) / (layers remaining), and

    dW_l = R^T K_l (lambda C_l + K_l^T K_l)^-1      (float64)

With ``exact_value`` the last layer's residuals are not the value step's deltas but values optimised through
that layer's update itself: ``dW = D^T A`` with ``A = K (lambda C + K^T K)^-1`` adds ``sum_i (x . A_i) d_i`` at
every position, so the batch's deltas D are optimised jointly under that sum (the least-squares compromise
between edits, and their bleed into later positions, are then in the loss instead of discovered afterwards).

Sequential editing with ``preserve_weight`` p > 0: the editor remembers the keys it has written (per model and
layer, ``P = sum K_j^T K_j``) and solves with ``lambda C + p P + K^T K`` instead, so a later batch keeps the
outputs at earlier edits' keys (least squares over the corpus, every earlier edit and the new batch). With
p = 1 this is recursive least squares: a sequence of batches solves the same problem as one batch of all of
them (values aside, which each batch computes under the weights the earlier ones left). Rollback restores P.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch

from ..editor import register_editor
from ..weights import WeightSnapshot
from .adapter import LocateAdapter, add_to_weight
from .base import LocateEditor
from .hooks import capture, read_at
from .rome import VALUE_DEFAULTS, ValueConfig, _mean_by_owner, compute_keys, optimise_values

__all__ = ["MEMITConfig", "MEMIT", "memit_update", "memit_directions", "PreservedKeysSnapshot", "EditedKeys"]


@dataclass
class MEMITConfig(ValueConfig):
    """MEMIT's settings; None fields take the model type's defaults (:data:`MEMIT_DEFAULTS`)."""

    layers: list[int] | None = None  # edited layers (negative count from the end); the last one holds z
    mom2_weight: float | None = None  # lambda in lambda C + K K^T
    ridge: float | None = None  # C + ridge * mean(diag C) * I, for a corpus too small to make C invertible
    stats_keys: int | None = None
    stats_dir: str | None = None
    progress: bool | None = None
    key_batch: int = field(default=256)  # requests per forward pass when reading keys
    preserve_weight: float | None = None  # p: weight of earlier edits' keys in sequential editing (0: off)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mom2_weight is not None and self.mom2_weight <= 0:
            raise ValueError(f"mom2_weight must be > 0, got {self.mom2_weight}")
        if self.preserve_weight is not None and self.preserve_weight < 0:
            raise ValueError(f"preserve_weight must be >= 0, got {self.preserve_weight}")
        if self.layers is not None and not self.layers:
            raise ValueError("layers must name at least one layer")


MEMIT_DEFAULTS: dict[str, dict[str, Any]] = {
    "*": {**VALUE_DEFAULTS, "mom2_weight": 1e4, "preserve_weight": 0.0},
    "gpt2": {"layers": [0, 1], "exact_value": True},  # as ROME's (rome.ROME_DEFAULTS)
    "llama": {"layers": [0, 1, 2], "exact_value": True},
    "bert": {"layers": [-2, -1]},
}


def _chunks(adapter: LocateAdapter, requests: Any, size: int):
    count = adapter.requests_count(requests)
    for start in range(0, count, size):
        yield adapter.select(requests, list(range(start, min(start + size, count))))


@torch.no_grad()
def hidden_at_keys(adapter: LocateAdapter, requests: Any, layer: int, key_position: str,
                   prefixes: Sequence[str]) -> torch.Tensor:
    """The hidden state after ``layer`` at each request's key position, averaged over prefixes (n, d), float64."""
    probe = adapter.key_probe(requests, key_position, prefixes)
    with capture(adapter.model.get_submodule(adapter.layout.block.format(layer)), output=True) as seen:
        adapter.forward(probe.inputs)
    rows = read_at(seen[0], probe.positions.to(seen[0].device)).double()
    return _mean_by_owner(rows, probe.owners.to(rows.device), adapter.requests_count(requests))


def memit_directions(keys: torch.Tensor, mom2: torch.Tensor, weight: float,
                     preserved: torch.Tensor | None = None) -> torch.Tensor:
    """(n, in) rows of ``K (lambda C + P + K^T K)^-1``: the update ``R^T A`` adds ``sum_i (x . A_i) r_i`` at x.

    ``preserved`` (P, in x in) is the weighted sum of earlier edits' ``K^T K`` (none: zero).
    """
    keys = keys.to(mom2)
    system = weight * mom2 + keys.T @ keys
    if preserved is not None:
        system = system + preserved.to(mom2)
    return torch.linalg.solve(system, keys.T).T


def memit_update(keys: torch.Tensor, residual: torch.Tensor, mom2: torch.Tensor, weight: float,
                 preserved: torch.Tensor | None = None) -> torch.Tensor:
    """(out, in) update ``R^T K (lambda C + P + K^T K)^-1``; keys (n, in), residual (n, out), C (in, in), float64."""
    return residual.to(mom2).T @ memit_directions(keys, mom2, weight, preserved)


class EditedKeys:
    """The keys an editor has written, per (model, layer), and ``P = sum_j p_j K_j^T K_j`` over them.

    Only the keys are kept (n x in per edit), so a snapshot is a count and a long sequential run does not hold a
    copy of P per edit; P is summed in edit order, so after a rollback it is recomputed bit-identically.
    """

    def __init__(self) -> None:
        self.keys: dict[tuple[int, int], list[tuple[float, torch.Tensor]]] = {}
        self._sums: dict[tuple[int, int], tuple[int, torch.Tensor]] = {}

    def add(self, where: tuple[int, int], keys: torch.Tensor, weight: float) -> None:
        """Remember ``keys`` (n, in) written at ``where`` with weight p."""
        total = self.preserved(where)
        entry = (weight, keys.detach().double().clone())
        self.keys.setdefault(where, []).append(entry)
        term = self._term(*entry)
        self._sums[where] = (len(self.keys[where]), term if total is None else total + term)

    @staticmethod
    def _term(weight: float, keys: torch.Tensor) -> torch.Tensor:
        return weight * keys.T @ keys

    def preserved(self, where: tuple[int, int]) -> torch.Tensor | None:
        """P at ``where`` (None before any edit there)."""
        entries = self.keys.get(where)
        if not entries:
            return None
        count, total = self._sums.get(where, (0, None))
        if count != len(entries):  # after a rollback: re-sum in edit order, as add did
            total = None
            for entry in entries:
                total = self._term(*entry) if total is None else total + self._term(*entry)
            self._sums[where] = (len(entries), total)
        return total

    def counts(self) -> dict[tuple[int, int], int]:
        """How many edits are remembered where (a snapshot)."""
        return {where: len(entries) for where, entries in self.keys.items()}

    def truncate(self, counts: dict[tuple[int, int], int]) -> None:
        """Forget the edits after ``counts`` (a rollback)."""
        for where in list(self.keys):
            kept = counts.get(where, 0)
            del self.keys[where][kept:]
            if not self.keys[where]:
                del self.keys[where]
                self._sums.pop(where, None)


class PreservedKeysSnapshot:
    """The touched weights and the editor's remembered keys now; ``restore`` puts both back (bit-exact)."""

    def __init__(self, weights: WeightSnapshot, memory: EditedKeys) -> None:
        self.weights = weights
        self.memory = memory
        self._counts = memory.counts()

    @property
    def names(self) -> list[str]:
        """The weights covered."""
        return self.weights.names

    def restore(self) -> None:
        """Put the weights and the remembered keys back."""
        self.weights.restore()
        self.memory.truncate(self._counts)


@register_editor
class MEMIT(LocateEditor):
    """MEMIT: the whole batch in one least-squares update per layer, spread over several layers."""

    name = "memit"
    summary = "MEMIT: batch update of several FFN output projections (lambda C + K K^T, float64)"
    needs_stats = True
    defaults: ClassVar[dict] = MEMIT_DEFAULTS

    def __init__(self, config: MEMITConfig | None = None, corpus: Sequence[object] | None = None) -> None:
        super().__init__(config or MEMITConfig(), corpus)
        self._edited = EditedKeys()  # for preserve_weight: the keys of earlier edits, per (id(model), layer)

    def snapshot(self, target: Any) -> PreservedKeysSnapshot:
        """The touched weights and the remembered keys of earlier edits."""
        return PreservedKeysSnapshot(WeightSnapshot(self.adapter(target).model, self.touched(target)),
                                     self._edited)

    def _batched(self, adapter: LocateAdapter, requests: Any, size: int, fn) -> torch.Tensor:
        return torch.cat([fn(part) for part in _chunks(adapter, requests, size)])

    def edit(self, target: Any, cases: Any) -> None:
        """Values at the last layer, then one update per layer with keys read under the current weights."""
        adapter = self.adapter(target)
        config = self.resolved(adapter)
        config.validate()
        layers = self.layers(adapter)
        last = layers[-1]
        position = config.key_position
        prefixes = adapter.context_prefixes(config.n_prefixes, config.prefix_length, config.seed)
        covariances = {layer: self.covariance(adapter, layer) for layer in layers}
        was_training = adapter.model.training
        adapter.model.eval()
        try:
            hidden = lambda part: hidden_at_keys(adapter, part, last, position, prefixes)  # noqa: E731
            goal = None
            if len(layers) > 1 or not config.exact_value:  # the lower layers' residuals need the goal z
                delta = self._batched(adapter, cases, config.value_batch,
                                      lambda part: optimise_values(adapter, part, last, config, prefixes)[0])
                goal = self._batched(adapter, cases, config.key_batch, hidden) + delta.double().to(
                    next(adapter.model.parameters()).device)
            for i, layer in enumerate(layers):
                keys = self._batched(adapter, cases, config.key_batch,
                                     lambda part: compute_keys(adapter, part, layer, position, prefixes))
                mom2 = covariances[layer].to(keys.device)
                memory = (id(adapter.model), layer)
                preserved = self._edited.preserved(memory)
                if config.exact_value and layer == last:
                    directions = memit_directions(keys, mom2, config.mom2_weight, preserved)
                    delta, _ = optimise_values(adapter, cases, layer, config, prefixes, directions, coupled=True)
                    add_to_weight(adapter, layer, delta.to(directions).T @ directions)
                else:
                    residual = (goal - self._batched(adapter, cases, config.key_batch, hidden)) / (len(layers) - i)
                    add_to_weight(adapter, layer, memit_update(keys, residual, mom2, config.mom2_weight, preserved))
                if config.preserve_weight:
                    self._edited.add(memory, keys, config.preserve_weight)
        finally:
            adapter.model.train(was_training)
