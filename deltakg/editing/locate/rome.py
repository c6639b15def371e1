"""ROME (Meng et al. 2022): a rank-one update of one FFN output projection per edit.

Key k* = the projection's input at the key position, averaged over short context prefixes. Value: a delta on
the projection's output there, optimised so that the model produces the new target (plus a KL term keeping
the subject's "essence" and a weight decay), clamped to ``clamp * |v0|``. Update, with C = E[k k^T]:

    W' = W + delta (C^-1 k*)^T / ((C^-1 k*)^T k*)

so that W' k* = W k* + delta. The same k* sits in numerator and denominator (the original mixed prefixed and
unprefixed keys there, which shrank or flipped some edits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch.nn import functional as F

from ..editor import register_editor
from .adapter import KEY_POSITIONS, LocateAdapter, add_to_weight
from .base import LocateEditor
from .hooks import add_at_positions, add_through_key, capture, read_at

__all__ = ["ROMEConfig", "ROME", "compute_keys", "optimise_values", "rank_one_update", "key_direction", "ValueConfig"]


@dataclass
class ValueConfig:
    """The value step shared by ROME and MEMIT."""

    key_position: str | None = None  # subject_last (the papers) | prompt_last
    n_prefixes: int | None = None  # context prefixes keys and values are averaged over (plus the bare prompt)
    prefix_length: int | None = None  # tokens per generated prefix
    v_lr: float | None = None  # Adam learning rate of the delta
    v_steps: int | None = None  # most Adam steps
    kl_weight: float | None = None  # weight of KL(original || edited) on the essence prompts
    weight_decay: float | None = None  # on |delta| / |v0|^2
    clamp: float | None = None  # |delta| <= clamp * |v0|
    stop_nll: float | None = None  # stop once every request's target NLL is below this
    value_batch: int | None = None  # requests optimised together (their deltas are independent)
    # the value step sees the update itself (at every position, through the key direction), not only a delta
    # at the key position as the papers' does: a whitened key still overlaps later positions' inputs, and that
    # bleed, unseen by the papers' value step, undid multi-token targets. MEMIT: its last layer's deltas,
    # jointly for the whole batch (one value batch then holds every edit)
    exact_value: bool | None = None
    seed: int = 0

    def validate(self) -> None:
        """Check the resolved fields."""
        if self.key_position is not None and self.key_position not in KEY_POSITIONS:
            raise ValueError(f"key_position must be one of {', '.join(KEY_POSITIONS)}, got {self.key_position!r}")
        for name in ("v_lr", "v_steps", "clamp", "value_batch", "prefix_length"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name in ("kl_weight", "weight_decay", "stop_nll", "n_prefixes"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def __post_init__(self) -> None:
        self.validate()


# shared by ROME and MEMIT; "*" applies to every model type, per-type rows override it
VALUE_DEFAULTS: dict[str, Any] = dict(key_position="subject_last", n_prefixes=10, prefix_length=5, v_lr=0.5,
                                      v_steps=25, kl_weight=0.0625, weight_decay=0.5, clamp=4.0, stop_nll=5e-2,
                                      value_batch=64, exact_value=False, stats_keys=100_000, stats_dir=None, progress=True,
                                      ridge=1e-3)


@dataclass
class ROMEConfig(ValueConfig):
    """ROME's settings; None fields take the model type's defaults (:data:`ROME_DEFAULTS`)."""

    layer: int | None = None  # the edited layer (negative counts from the end)
    ridge: float | None = None  # C + ridge * mean(diag C) * I, for a corpus too small to make C invertible
    stats_keys: int | None = None  # keys the statistics are estimated from
    stats_dir: str | None = None  # statistics cache (default $DELTAKG_CACHE/stats)
    progress: bool | None = None
    # rank-one updates per edit: a later pass re-optimises the value under the updated weights and corrects
    # what the first update changed elsewhere in the prompt (a pass whose target is already met adds nothing)
    passes: int | None = None
    def validate(self) -> None:
        """Check the resolved fields."""
        super().validate()
        if self.passes is not None and self.passes <= 0:
            raise ValueError(f"passes must be > 0, got {self.passes}")


ROME_DEFAULTS: dict[str, dict[str, Any]] = {
    "*": {**VALUE_DEFAULTS, "passes": 1},
    # causal LMs: exact values on (on 20 dev edits of the toy GPT-2, bare prompts, the paper's 25 steps:
    # reliability 0.95 -> 1.00 at prompt-last keys, 0.84 -> 0.93 at subject-last); the KG model keeps the
    # paper's value step, which its reported rows were measured with
    "gpt2": {"layer": 1, "exact_value": True},
    "llama": {"layer": 1, "exact_value": True},
    "bert": {"layer": -1},
}


def _mean_by_owner(rows: torch.Tensor, owners: torch.Tensor, count: int) -> torch.Tensor:
    total = torch.zeros(count, rows.shape[1], dtype=rows.dtype, device=rows.device).index_add_(0, owners, rows)
    per = torch.bincount(owners, minlength=count).clamp_min(1).to(rows.dtype)
    return total / per[:, None]


@torch.no_grad()
def compute_keys(adapter: LocateAdapter, requests: Any, layer: int, key_position: str,
                 prefixes: Sequence[str]) -> torch.Tensor:
    """k* per request: the FFN output projection's input at the key position, averaged over prefixes (n, in)."""
    probe = adapter.key_probe(requests, key_position, prefixes)
    module = adapter.model.get_submodule(adapter.layout.ffn_out.format(layer))
    with capture(module) as seen:
        adapter.forward(probe.inputs)
    keys = read_at(seen[0], probe.positions.to(seen[0].device))
    return _mean_by_owner(keys.double(), probe.owners.to(keys.device), adapter.requests_count(requests))


def _scatter_mean(values: torch.Tensor, owners: torch.Tensor, count: int) -> torch.Tensor:
    return _mean_by_owner(values[:, None], owners, count)[:, 0]


def optimise_values(adapter: LocateAdapter, requests: Any, layer: int, config: ValueConfig,
                    prefixes: Sequence[str], directions: torch.Tensor | None = None,
                    coupled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per request, the delta on the layer's FFN output at the key position that makes the target likely.

    Returns ``(delta, v0)``, both (n, out): the optimised delta and the unedited output it is added to (averaged
    over the prefixed prompts). Requests are independent (one request's loss never reaches another's delta)
    unless ``coupled``. With ``directions`` (n, in), the delta is applied as the rank-one update ``delta directions^T`` would apply
    it (at every position, scaled by the input's projection on the direction) instead of at the key position;
    ``coupled`` adds every request's term to every prompt (a batch update, MEMIT's), so the requests' deltas are
    optimised jointly.
    """
    model = adapter.model
    module = model.get_submodule(adapter.layout.ffn_out.format(layer))
    count = adapter.requests_count(requests)
    probe = adapter.target_probe(requests, config.key_position, prefixes)
    essence = adapter.essence_probe(requests, config.key_position) if config.kl_weight else None
    positions, owners = probe.positions, probe.owners
    with torch.no_grad():
        with capture(module, output=True) as seen:
            adapter.forward(probe.inputs)
        v0 = _mean_by_owner(read_at(seen[0], positions).float(), owners, count)
        reference = None
        if essence is not None:
            reference = adapter.essence_log_probs(essence, adapter.forward(essence.inputs)).detach()
    delta = torch.zeros_like(v0, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=config.v_lr)
    v0_norm = v0.norm(dim=1).clamp_min(1e-8)
    params = [p for p in model.parameters() if p.requires_grad]
    if directions is not None:
        directions = directions.to(device=v0.device, dtype=torch.float32)

    def added(at: torch.Tensor, by: torch.Tensor):
        if directions is None:
            return add_at_positions(module, delta, at, by)
        return add_through_key(module, delta, directions, by, coupled=coupled)

    for p in params:
        p.requires_grad_(False)  # only the delta learns; no gradient buffers for the model
    try:
        for _ in range(config.v_steps):
            with added(positions, owners):
                nll = _scatter_mean(adapter.target_nll(probe, adapter.forward(probe.inputs)), owners, count)
            loss = nll.sum()
            if essence is not None:
                with added(essence.positions, essence.owners):
                    log_probs = adapter.essence_log_probs(essence, adapter.forward(essence.inputs))
                kl = F.kl_div(log_probs, reference, log_target=True, reduction="none").sum(dim=1)
                loss = loss + config.kl_weight * _scatter_mean(kl, essence.owners, count).sum()
            if float(nll.detach().max()) < config.stop_nll:
                break
            loss = loss + config.weight_decay * (delta.norm(dim=1) / v0_norm ** 2).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                limit = config.clamp * v0_norm
                scale = (limit / delta.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
                delta.mul_(scale[:, None])
    finally:
        for p in params:
            p.requires_grad_(True)
    return delta.detach(), v0


def key_direction(key: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """``C^-1 k / (k^T C^-1 k)`` in float64: the update ``delta d^T`` adds ``(x . d) delta``, exactly delta at k."""
    key = key.to(cov)
    left = torch.linalg.solve(cov, key)
    return left / (left @ key)


def rank_one_update(key: torch.Tensor, delta: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """(out, in) update ``delta (C^-1 k)^T / ((C^-1 k)^T k)`` in float64; key (in,), delta (out,), C (in, in)."""
    return torch.outer(delta.to(cov), key_direction(key, cov))


@register_editor
class ROME(LocateEditor):
    """ROME: one rank-one update of one FFN output projection per edit (a batch is applied edit by edit)."""

    name = "rome"
    summary = "ROME: rank-one update of one FFN output projection per edit, whitened by cached key statistics"
    needs_stats = True
    defaults: ClassVar[dict] = ROME_DEFAULTS

    def __init__(self, config: ROMEConfig | None = None, corpus: Sequence[object] | None = None) -> None:
        super().__init__(config or ROMEConfig(), corpus)

    def edit(self, target: Any, cases: Any) -> None:
        """Edit after edit: key, value, rank-one update, each with the weights as the previous edit left them."""
        adapter = self.adapter(target)
        config = self.resolved(adapter)
        config.validate()
        (layer,) = self.layers(adapter)
        prefixes = adapter.context_prefixes(config.n_prefixes, config.prefix_length, config.seed)
        mom2 = self.covariance(adapter, layer)
        was_training = adapter.model.training
        adapter.model.eval()
        try:
            for i in range(adapter.requests_count(cases)):
                one = adapter.select(cases, [i])
                key = compute_keys(adapter, one, layer, config.key_position, prefixes)[0]
                direction = key_direction(key, mom2.to(key.device))
                seen = direction[None] if config.exact_value else None
                for _ in range(config.passes):
                    delta, _ = optimise_values(adapter, one, layer, config, prefixes, seen)
                    if not bool(delta.any()):
                        break  # the target is met already
                    add_to_weight(adapter, layer, torch.outer(delta[0].to(direction), direction))
        finally:
            adapter.model.train(was_training)
