"""MEMIT (Meng et al. 2023): many edits at once, spread over several layers' FFN output projections.

The value step is ROME's, at the last edited layer L: z_i = h_L(request i) + delta_i. Then, for each edited
layer l in order, with the weights as the earlier layers left them: keys K_l (n, in), residual
R = (z - h_L) / (layers remaining), and

    dW_l = R^T K_l (lambda C_l + K_l^T K_l)^-1      (float64)

With ``exact_value`` the last layer's residuals are not the value step's deltas but values optimised through
that layer's update itself: ``dW = D^T A`` with ``A = K (lambda C + K^T K)^-1`` adds ``sum_i (x . A_i) d_i`` at
every position, so the batch's deltas D are optimised jointly under that sum (the least-squares compromise
between edits, and their bleed into later positions, are then in the loss instead of discovered afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch

from ..editor import register_editor
from .adapter import LocateAdapter, add_to_weight
from .base import LocateEditor
from .hooks import capture, read_at
from .rome import VALUE_DEFAULTS, ValueConfig, _mean_by_owner, compute_keys, optimise_values

__all__ = ["MEMITConfig", "MEMIT", "memit_update", "memit_directions"]


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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mom2_weight is not None and self.mom2_weight <= 0:
            raise ValueError(f"mom2_weight must be > 0, got {self.mom2_weight}")
        if self.layers is not None and not self.layers:
            raise ValueError("layers must name at least one layer")


MEMIT_DEFAULTS: dict[str, dict[str, Any]] = {
    "*": {**VALUE_DEFAULTS, "mom2_weight": 1e4},
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


def memit_directions(keys: torch.Tensor, mom2: torch.Tensor, weight: float) -> torch.Tensor:
    """(n, in) rows of ``K (lambda C + K^T K)^-1``: the update ``R^T A`` adds ``sum_i (x . A_i) r_i`` at input x."""
    keys = keys.to(mom2)
    return torch.linalg.solve(weight * mom2 + keys.T @ keys, keys.T).T


def memit_update(keys: torch.Tensor, residual: torch.Tensor, mom2: torch.Tensor, weight: float) -> torch.Tensor:
    """(out, in) update ``R^T K (lambda C + K^T K)^-1``; keys (n, in), residual (n, out), C (in, in), float64."""
    return residual.to(mom2).T @ memit_directions(keys, mom2, weight)


@register_editor
class MEMIT(LocateEditor):
    """MEMIT: the whole batch in one least-squares update per layer, spread over several layers."""

    name = "memit"
    summary = "MEMIT: batch update of several FFN output projections (lambda C + K K^T, float64)"
    needs_stats = True
    defaults: ClassVar[dict] = MEMIT_DEFAULTS

    def __init__(self, config: MEMITConfig | None = None, corpus: Sequence[object] | None = None) -> None:
        super().__init__(config or MEMITConfig(), corpus)

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
                if config.exact_value and layer == last:
                    directions = memit_directions(keys, mom2, config.mom2_weight)
                    delta, _ = optimise_values(adapter, cases, layer, config, prefixes, directions, coupled=True)
                    add_to_weight(adapter, layer, delta.to(directions).T @ directions)
                    continue
                residual = (goal - self._batched(adapter, cases, config.key_batch, hidden)) / (len(layers) - i)
                add_to_weight(adapter, layer, memit_update(keys, residual, mom2, config.mom2_weight))
        finally:
            adapter.model.train(was_training)
