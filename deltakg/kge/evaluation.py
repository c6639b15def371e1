"""Rank-based link-prediction evaluation, equal to PyKEEN's ``RankBasedEvaluator``.

A query hides one side of a triple: a *tail* query ``(h, r, ?)`` or a *head* query ``(?, r, t)``. Every entity is
scored as the answer and the rank of the true entity is taken with PyKEEN's three tie conventions:

- optimistic  = 1 + #candidates scored strictly higher than the target,
- pessimistic = #candidates scored higher or equal (the target itself included), i.e. 1 + #higher + #ties,
- realistic   = (optimistic + pessimistic) / 2, the expected rank under a random order of the ties.

Filtered ranking removes the *other* known answers (train + valid + test) from the candidates; the target itself is
never removed. The metrics are PyKEEN's: MR = mean rank, MRR = mean of 1 / rank, Hits@k = fraction of ranks <= k,
all on the same rank type (realistic by default, as in PyKEEN), per side and for both sides together.

NaN scores raise ``ValueError``: a NaN compares false with everything, so it would silently drop out of the ranking
(PyKEEN uses NaN as its own filter marker for exactly that reason) and make a broken model look better than it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

__all__ = [
    "RANK_TYPES",
    "SIDES",
    "FilterIndex",
    "LinkPredictionResult",
    "compute_ranks",
    "evaluate_ranking",
    "evaluate_scores",
    "evaluate_model",
    "batch_size_for_budget",
]

SIDES = ("head", "tail")
RANK_TYPES = ("optimistic", "pessimistic", "realistic")
DEFAULT_KS = (1, 3, 10)
# scores held per batch; with 40k entities this is ~1600 queries of float32 at a time
DEFAULT_MEMORY_BUDGET = 256 * 2**20
# rows handled per step inside a batch on CPU: 4 MB of float32 stays in cache across the several passes over it
# (2-3x faster than passes over a whole 256 MB batch). Smaller chunks are barely faster on an idle machine but need
# more thread-pool round trips, each of which can cost milliseconds when other processes compete for the cores
_CHUNK_ELEMENTS = 2**20

ScoreFn = Callable[[Tensor, str], Tensor]


def _column(side: str) -> int:
    if side == "head":
        return 0
    if side == "tail":
        return 2
    raise ValueError(f"side must be 'head' or 'tail', got {side!r}")


def _check_triples(triples: Tensor, num_entities: int) -> Tensor:
    if not isinstance(triples, Tensor):
        triples = torch.as_tensor(triples)
    if triples.dim() != 2 or triples.shape[1] != 3:
        raise ValueError(f"triples must have shape (n, 3), got {tuple(triples.shape)}")
    if triples.dtype.is_floating_point or triples.dtype == torch.bool:
        raise ValueError(f"triples must hold integer ids, got dtype {triples.dtype}")
    triples = triples.long()
    if triples.numel():
        entities = triples[:, [0, 2]]
        if int(entities.min()) < 0 or int(entities.max()) >= num_entities:
            found = f"{int(entities.min())}..{int(entities.max())}"
            raise ValueError(f"entity ids must lie in [0, {num_entities}), found {found}")
        if int(triples[:, 1].min()) < 0:
            raise ValueError("relation ids must be non-negative")
    return triples


def batch_size_for_budget(
    num_entities: int, memory_budget: int = DEFAULT_MEMORY_BUDGET, bytes_per_score: int = 4
) -> int:
    """Number of queries whose full score rows fit in ``memory_budget`` bytes (at least 1)."""
    return max(1, int(memory_budget) // max(1, num_entities * bytes_per_score))


@dataclass
class _Direction:
    """Known answers for one query direction, keyed by the query's two known ids."""

    keys: Tensor  # (u,) sorted unique query keys
    offsets: Tensor  # (u + 1,) CSR offsets into answers
    answers: Tensor  # (m,) answer entity ids, sorted within each key
    combined: Tensor  # (m,) sorted key * E + answer, for "is this triple known" lookups
    dense_slot: Tensor  # (u,) row of dense_masks for keys with many answers, else -1
    dense_masks: Tensor  # (d, E) bool answer masks of those keys

    def to(self, device: torch.device | str) -> "_Direction":
        return _Direction(*(getattr(self, f.name).to(device) for f in fields(self)))


class FilterIndex:
    """The known answers of every (h, r, ?) and (?, r, t) query, for filtered ranking.

    Both directions are stored CSR-style: sorted unique int64 query keys (``h * R + r`` for tail queries,
    ``r * E + t`` for head queries), offsets into a flat answer array sorted within each key. A batch lookup is one
    ``searchsorted`` plus gathers, with no Python loop over queries. Keys with at least ``dense_min_answers``
    answers (e.g. ``(?, gender, male)``) also get a dense boolean mask over the entities: comparing a whole score
    row under a mask is far cheaper than thousands of scattered per-answer gathers. Those masks cost at most
    ``num_entities / dense_min_answers`` bytes per indexed triple (32 by default).
    """

    def __init__(
        self,
        triples: Tensor,
        num_entities: int,
        num_relations: int | None = None,
        *,
        dense_min_answers: int | None = None,
    ) -> None:
        """Index ``triples`` (all known true triples, e.g. train + valid + test) over ``num_entities`` entities."""
        triples = _check_triples(triples, num_entities)
        self.num_entities = int(num_entities)
        max_relation = int(triples[:, 1].max()) + 1 if triples.numel() else 0
        if num_relations is None:
            num_relations = max_relation
        elif max_relation > num_relations:
            raise ValueError(f"relation id {max_relation - 1} out of range for num_relations={num_relations}")
        self.num_relations = max(int(num_relations), 1)
        if self.num_entities**2 * self.num_relations >= 2**63:
            raise ValueError("too many entities/relations for int64 triple keys")
        if dense_min_answers is None:
            dense_min_answers = max(64, self.num_entities // 32)
        self.dense_min_answers = max(1, int(dense_min_answers))
        h, r, t = triples.unbind(dim=1)
        E, R = self.num_entities, self.num_relations
        self._tail = self._build(h * R + r, t)
        self._head = self._build(r * E + t, h)

    def _build(self, keys: Tensor, answers: Tensor) -> _Direction:
        # one sort over (query key, answer) dedups repeated triples and orders the answers within each key
        combined = torch.unique(keys * self.num_entities + answers)
        keys, answers = combined.div(self.num_entities, rounding_mode="floor"), combined.remainder(self.num_entities)
        unique_keys, counts = torch.unique_consecutive(keys, return_counts=True)
        offsets = torch.zeros(unique_keys.numel() + 1, dtype=torch.long, device=keys.device)
        torch.cumsum(counts, dim=0, out=offsets[1:])
        dense = counts >= self.dense_min_answers
        dense_slot = torch.full_like(unique_keys, -1)
        dense_slot[dense] = torch.arange(int(dense.sum()), device=keys.device)
        dense_masks = torch.zeros(int(dense.sum()), self.num_entities, dtype=torch.bool, device=keys.device)
        key_index = torch.repeat_interleave(torch.arange(unique_keys.numel(), device=keys.device), counts)
        in_dense = dense[key_index]
        dense_masks[dense_slot[key_index[in_dense]], answers[in_dense]] = True
        return _Direction(unique_keys, offsets, answers, combined, dense_slot, dense_masks)

    @classmethod
    def from_kg(cls, kg) -> "FilterIndex":
        """Index all splits of a ``kg_data.KnowledgeGraph`` (anything with ``all_triples()``/``num_entities``)."""
        return cls(kg.all_triples(), kg.num_entities, kg.num_relations)

    @property
    def num_triples(self) -> int:
        """Number of distinct indexed triples."""
        return int(self._tail.answers.numel())

    @property
    def device(self) -> torch.device:
        """Device holding the index."""
        return self._tail.keys.device

    def to(self, device: torch.device | str) -> "FilterIndex":
        """Move the index to ``device`` (in place; returns self)."""
        self._tail, self._head = self._tail.to(device), self._head.to(device)
        return self

    def _lookup(self, queries: Tensor, side: str) -> dict[str, Tensor]:
        """Per query: target, #answers, target known?, offset of the first answer, dense-mask slot (or -1)."""
        if queries.dim() != 2 or queries.shape[1] != 3:
            raise ValueError(f"queries must have shape (b, 3), got {tuple(queries.shape)}")
        column = _column(side)
        queries = queries.to(self.device).long()
        if side == "tail":
            keys, index = queries[:, 0] * self.num_relations + queries[:, 1], self._tail
        else:
            keys, index = queries[:, 1] * self.num_entities + queries[:, 2], self._head
        targets = queries[:, column]
        if index.keys.numel() == 0:
            zeros = torch.zeros_like(keys)
            return {"targets": targets, "counts": zeros, "present": zeros.bool(), "start": zeros, "slot": zeros - 1}
        pos = torch.searchsorted(index.keys, keys).clamp_(max=index.keys.numel() - 1)
        found = index.keys[pos] == keys
        start = index.offsets[pos]
        counts = (index.offsets[pos + 1] - start) * found
        triple_keys = keys * self.num_entities + targets
        hit = torch.searchsorted(index.combined, triple_keys).clamp_(max=index.combined.numel() - 1)
        present = index.combined[hit] == triple_keys
        slot = torch.where(found, index.dense_slot[pos], -1)
        return {"targets": targets, "counts": counts, "present": present, "start": start, "slot": slot}

    def _pairs(self, side: str, counts: Tensor, start: Tensor) -> tuple[Tensor, Tensor]:
        """(row, entity) pairs of the first ``counts[i]`` answers from ``start[i]`` on (the target included)."""
        values = (self._tail if side == "tail" else self._head).answers
        rows = torch.repeat_interleave(torch.arange(counts.numel(), device=self.device), counts)
        # pair j of query i sits at answers[start_i + j]; with the pairs laid out back to back that index is
        # arange(total) + (start_i - first_pair_i), so one gather per pair instead of three
        shift = start - (torch.cumsum(counts, dim=0) - counts)
        entities = values[torch.arange(rows.numel(), device=self.device) + shift[rows]] if rows.numel() else rows
        return rows, entities

    def _dense_masks(self, side: str) -> Tensor:
        return (self._tail if side == "tail" else self._head).dense_masks

    def answers(self, queries: Tensor, side: str, *, exclude_target: bool = True) -> tuple[Tensor, Tensor]:
        """Known answers of each query as ``(row, entity)`` pairs; the query's own target is left out by default."""
        info = self._lookup(queries, side)
        rows, entities = self._pairs(side, info["counts"], info["start"])
        if exclude_target and bool(info["present"].any()):
            keep = entities != info["targets"][rows]
            rows, entities = rows[keep], entities[keep]
        return rows, entities

    def filter_scores(self, scores: Tensor, queries: Tensor, side: str, *, value: float = float("-inf")) -> Tensor:
        """Set the scores of the other known answers to ``value`` in place (never the target's); returns ``scores``."""
        # with -inf a removed candidate can still tie with a target that itself scores -inf; evaluate_ranking does
        # not go through this and removes the other answers exactly
        if scores.shape != (queries.shape[0], self.num_entities):
            raise ValueError(
                f"scores must have shape ({queries.shape[0]}, {self.num_entities}), got {tuple(scores.shape)}"
            )
        rows, entities = self.answers(queries, side)
        scores[rows.to(scores.device), entities.to(scores.device)] = value
        return scores

    def __repr__(self) -> str:
        return (
            f"FilterIndex(triples={self.num_triples}, entities={self.num_entities}, relations={self.num_relations})"
        )


def _check_no_nan(scores: Tensor) -> None:
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; a NaN compares false with everything and cannot be ranked")


def _exact_difference_signs() -> bool:
    # sign(a - b) == sign of the exact difference for all finite floats only with gradual underflow; under
    # torch.set_flush_denormal(True) two distinct floats near the smallest normal can subtract to 0. The probe is
    # kept below the thread pool's grain size: it tests the calling thread, which is where that mode is switched
    # (pool threads inherit it when they start), and costs no pool round trip
    a, b = torch.full((64,), 1.5e-38), torch.full((64,), 1.2e-38)
    return bool(((a - b) != 0).all())


def _greater_less(
    chunk: Tensor, target: Tensor, buffer: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor] | None:
    """Per row #(chunk > target) and #(chunk < target) (among ``mask``), or None if a difference is NaN."""
    # comparisons into bool tensors run ~4x slower than float arithmetic in torch's CPU kernels. With
    # s = sign(chunk - target): sum(s) = #greater - #less and sum(|s|) = #greater + #less, and float sums of small
    # integers are exact (< 2**24 in float32). torch.sign maps NaN to 0 (a tie), so NaN differences (a NaN score,
    # or inf - inf) are caught by summing the raw differences first; the caller then falls back to comparisons
    d = buffer[: chunk.shape[0]]
    torch.sub(chunk, target, out=d)
    if bool(torch.isnan(d.sum()).item()):
        return None
    d.sign_()
    if mask is not None:
        d.mul_(mask)
    net = d.sum(dim=1)
    total = d.abs_().sum(dim=1)
    return ((total + net) * 0.5).long(), ((total - net) * 0.5).long()


def _sign_buffer(scores: Tensor, rows: int, exact_signs: bool) -> Tensor | None:
    """Scratch space for :func:`_greater_less`, or None where comparisons are used (GPU, huge rows, flush-to-zero)."""
    n = scores.shape[1]
    if scores.device.type != "cpu" or n >= 2**24 or not exact_signs:
        return None
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    return torch.empty(rows, n, dtype=dtype, device=scores.device)


def _chunk_rows(scores: Tensor) -> int:
    return scores.shape[0] if scores.device.type != "cpu" else max(1, _CHUNK_ELEMENTS // max(scores.shape[1], 1))


def _count_above(scores: Tensor, target_scores: Tensor, exact_signs: bool) -> tuple[Tensor, Tensor]:
    """Per row: #scores > target and #scores >= target (int64); raises ValueError on NaN scores."""
    b, n = scores.shape
    greater = torch.empty(b, dtype=torch.long, device=scores.device)
    greater_equal = torch.empty_like(greater)
    step = _chunk_rows(scores)
    buffer = _sign_buffer(scores, min(step, b), exact_signs)
    for i in range(0, b, step):
        chunk = scores[i : i + step]
        target = target_scores[i : i + step].unsqueeze(1)
        counts = None if buffer is None else _greater_less(chunk, target, buffer)
        if counts is not None:
            greater[i : i + step] = counts[0]
            greater_equal[i : i + step] = n - counts[1]
            continue
        _check_no_nan(chunk)
        greater[i : i + step] = (chunk > target).sum(dim=1)
        greater_equal[i : i + step] = (chunk >= target).sum(dim=1)
    return greater, greater_equal


def _ranks_from_counts(greater: Tensor, greater_equal: Tensor) -> dict[str, Tensor]:
    optimistic = (greater + 1).double()
    pessimistic = greater_equal.double()
    return {"optimistic": optimistic, "pessimistic": pessimistic, "realistic": 0.5 * (optimistic + pessimistic)}


def _check_scores(scores: Tensor, targets: Tensor) -> Tensor:
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape (b, num_entities), got {tuple(scores.shape)}")
    targets = torch.as_tensor(targets, device=scores.device).long()
    if targets.shape != (scores.shape[0],):
        raise ValueError(f"targets must have shape ({scores.shape[0]},), got {tuple(targets.shape)}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= scores.shape[1]):
        raise ValueError(f"targets must lie in [0, {scores.shape[1]})")
    return targets


def compute_ranks(scores: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Optimistic, pessimistic and realistic float64 ranks of ``targets`` (b,) among ``scores`` (b, n), as PyKEEN."""
    targets = _check_scores(scores, targets)
    with torch.inference_mode():
        target_scores = scores.gather(1, targets.unsqueeze(1)).squeeze(1)
        greater, greater_equal = _count_above(scores, target_scores, _exact_difference_signs())
        return {k: v.cpu() for k, v in _ranks_from_counts(greater, greater_equal).items()}


def _removed_sparse(
    scores: Tensor, target_scores: Tensor, rows: Tensor, entities: Tensor, counts: Tensor
) -> tuple[Tensor, Tensor]:
    """Per row: how many of its ``counts`` answer pairs (row-sorted) score > / >= the target, one gather each."""
    b, n = scores.shape
    greater = torch.zeros(b, dtype=torch.long, device=scores.device)
    greater_equal = torch.zeros_like(greater)
    if rows.numel():
        removed = scores.reshape(-1)[rows * n + entities] if scores.is_contiguous() else scores[rows, entities]
        reference = torch.repeat_interleave(target_scores, counts)
        greater.index_add_(0, rows, (removed > reference).long())
        greater_equal.index_add_(0, rows, (removed >= reference).long())
    return greater, greater_equal


def _removed_dense(
    scores: Tensor,
    target_scores: Tensor,
    rows: Tensor,
    masks: Tensor,
    slots: Tensor,
    counts: Tensor,
    exact_signs: bool,
) -> tuple[Tensor, Tensor]:
    """For ``rows`` whose ``counts`` answers have a dense mask: how many answers score > / >= the target."""
    greater = torch.empty(rows.numel(), dtype=torch.long, device=scores.device)
    greater_equal = torch.empty_like(greater)
    step = _chunk_rows(scores)
    buffer = _sign_buffer(scores, min(step, rows.numel()), exact_signs)
    for i in range(0, rows.numel(), step):
        chunk_rows = rows[i : i + step]
        chunk = scores.index_select(0, chunk_rows)
        mask = masks.index_select(0, slots[i : i + step])
        target = target_scores[chunk_rows].unsqueeze(1)
        found = None if buffer is None else _greater_less(chunk, target, buffer, mask)
        if found is not None:
            greater[i : i + step] = found[0]
            greater_equal[i : i + step] = counts[i : i + step] - found[1]
            continue
        greater[i : i + step] = ((chunk > target) & mask).sum(dim=1)
        greater_equal[i : i + step] = ((chunk >= target) & mask).sum(dim=1)
    return greater, greater_equal


def _rank_batch(
    scores: Tensor,
    queries: Tensor,
    targets: Tensor,
    side: str,
    filter_index: FilterIndex | None,
    exact_signs: bool,
) -> tuple[dict[str, Tensor], Tensor]:
    target_scores = scores.gather(1, targets.unsqueeze(1)).squeeze(1)
    greater, greater_equal = _count_above(scores, target_scores, exact_signs)
    num_candidates = torch.full_like(greater, scores.shape[1])
    if filter_index is not None:
        # count over the raw row, then take back the other known answers: exact (no -inf tie artefacts, like
        # PyKEEN's NaN filter) and leaves the caller's score tensor untouched. The target's own answer, when
        # known, is taken back too (0 from "greater", 1 from "greater or equal") and added back via `present`
        info = filter_index._lookup(queries, side)
        sparse_counts = info["counts"] * (info["slot"] < 0)
        pairs = filter_index._pairs(side, sparse_counts, info["start"])
        rows, entities = (x.to(scores.device) for x in pairs)
        info = {k: v.to(scores.device) for k, v in info.items()}
        counts, present, slot = info["counts"], info["present"].long(), info["slot"]
        dense = slot >= 0
        removed_greater, removed_greater_equal = _removed_sparse(
            scores, target_scores, rows, entities, sparse_counts.to(scores.device)
        )
        if bool(dense.any()):
            dense_rows = dense.nonzero().squeeze(1)
            masks = filter_index._dense_masks(side).to(scores.device)
            dense_greater, dense_greater_equal = _removed_dense(
                scores, target_scores, dense_rows, masks, slot[dense_rows], counts[dense_rows], exact_signs
            )
            removed_greater[dense_rows] += dense_greater
            removed_greater_equal[dense_rows] += dense_greater_equal
        greater -= removed_greater
        greater_equal -= removed_greater_equal - present
        num_candidates -= counts - present
    return _ranks_from_counts(greater, greater_equal), num_candidates


def _summary(ranks: Tensor, ks: Sequence[int]) -> dict[str, float]:
    ranks = ranks.double()
    out = {"mrr": ranks.reciprocal().mean().item(), "mr": ranks.mean().item()}
    for k in ks:
        out[f"hits@{k}"] = (ranks <= k).double().mean().item()
    return out


@dataclass
class LinkPredictionResult:
    """Per-query ranks of a link-prediction evaluation and the PyKEEN metrics derived from them."""

    #: side ("head"/"tail") -> rank type -> float64 ranks, one per evaluated triple in input order
    ranks: dict[str, dict[str, Tensor]]
    #: side -> number of candidates each query was ranked among (all entities minus the filtered answers)
    num_candidates: dict[str, Tensor] = field(default_factory=dict)
    filtered: bool = False

    @property
    def sides(self) -> tuple[str, ...]:
        """Evaluated sides, head first."""
        return tuple(side for side in SIDES if side in self.ranks)

    def all_ranks(self, rank_type: str = "realistic") -> Tensor:
        """Ranks of both sides together (head queries first), as PyKEEN's "both"."""
        if rank_type not in RANK_TYPES:
            raise ValueError(f"rank_type must be one of {RANK_TYPES}, got {rank_type!r}")
        return torch.cat([self.ranks[side][rank_type] for side in self.sides])

    def metrics(self, rank_type: str = "realistic", ks: Sequence[int] = DEFAULT_KS) -> dict:
        """MRR, MR and Hits@k for both sides together at the top level, plus one dict per side."""
        out: dict = _summary(self.all_ranks(rank_type), ks)
        for side in self.sides:
            out[side] = _summary(self.ranks[side][rank_type], ks)
        return out

    def to_dict(self) -> dict:
        """The realistic metrics as plain JSON-ready floats: mrr, mr, hits@1/3/10, and "head"/"tail" sub-dicts."""
        return self.metrics("realistic")

    def __repr__(self) -> str:
        m = self.metrics()
        n = sum(int(self.ranks[s]["realistic"].numel()) for s in self.sides)
        kind = "filtered" if self.filtered else "raw"
        return f"LinkPredictionResult({kind}, queries={n}, mrr={m['mrr']:.4f}, hits@10={m['hits@10']:.4f})"


def _iterate(
    get_scores: Callable[[int, int, Tensor, str], Tensor],
    triples: Tensor,
    num_entities: int,
    *,
    filter_index: FilterIndex | None,
    sides: Sequence[str],
    batch_size: int | None,
    memory_budget: int,
    progress: bool,
) -> LinkPredictionResult:
    sides = tuple(sides)
    if not sides or len(set(sides)) != len(sides):
        raise ValueError(f"sides must be a non-empty subset of {SIDES}, got {sides!r}")
    for side in sides:
        _column(side)
    triples = _check_triples(triples, num_entities)
    if triples.shape[0] == 0:
        raise ValueError("no triples to evaluate")
    if filter_index is not None and filter_index.num_entities != num_entities:
        raise ValueError(f"filter index has {filter_index.num_entities} entities, scores have {num_entities}")
    if batch_size is None:
        batch_size = batch_size_for_budget(num_entities, memory_budget)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")

    exact_signs = _exact_difference_signs()
    ranks: dict[str, dict[str, list[Tensor]]] = {side: {k: [] for k in RANK_TYPES} for side in sides}
    candidates: dict[str, list[Tensor]] = {side: [] for side in sides}
    bar = _progress(progress, total=triples.shape[0] * len(sides))
    try:
        with torch.inference_mode():
            for start in range(0, triples.shape[0], batch_size):
                batch = triples[start : start + batch_size]
                for side in sides:
                    scores = get_scores(start, start + batch.shape[0], batch, side)
                    if scores.shape != (batch.shape[0], num_entities):
                        expected = (batch.shape[0], num_entities)
                        raise ValueError(f"{side} scores must have shape {expected}, got {tuple(scores.shape)}")
                    targets = batch[:, _column(side)].to(scores.device)
                    batch_ranks, batch_candidates = _rank_batch(
                        scores, batch, targets, side, filter_index, exact_signs
                    )
                    del scores
                    for k, v in batch_ranks.items():
                        ranks[side][k].append(v.cpu())
                    candidates[side].append(batch_candidates.cpu())
                    if bar is not None:
                        bar.update(batch.shape[0])
    finally:
        if bar is not None:
            bar.close()
    return LinkPredictionResult(
        ranks={side: {k: torch.cat(v) for k, v in per.items()} for side, per in ranks.items()},
        num_candidates={side: torch.cat(v) for side, v in candidates.items()},
        filtered=filter_index is not None,
    )


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="ranking", unit="query", unit_scale=True)


def evaluate_ranking(
    score_fn: ScoreFn,
    triples: Tensor,
    num_entities: int,
    *,
    filter_index: FilterIndex | None = None,
    sides: Sequence[str] = SIDES,
    batch_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool = False,
) -> LinkPredictionResult:
    """Rank each triple's hidden side by ``score_fn(batch (b, 3), side) -> (b, num_entities)``, filtered if indexed."""
    # batch_size defaults to as many queries as fit memory_budget bytes of float32 score rows; score_fn's output
    # is only read, never modified, so it may return views of a precomputed matrix
    return _iterate(
        lambda start, stop, batch, side: score_fn(batch, side),
        triples,
        num_entities,
        filter_index=filter_index,
        sides=sides,
        batch_size=batch_size,
        memory_budget=memory_budget,
        progress=progress,
    )


def evaluate_scores(
    triples: Tensor,
    *,
    head_scores: Tensor | None = None,
    tail_scores: Tensor | None = None,
    filter_index: FilterIndex | None = None,
    batch_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool = False,
) -> LinkPredictionResult:
    """Evaluate precomputed (n, num_entities) score matrices, row i scoring the query of ``triples[i]``."""
    given: Mapping[str, Tensor] = {s: m for s, m in (("head", head_scores), ("tail", tail_scores)) if m is not None}
    if not given:
        raise ValueError("pass head_scores and/or tail_scores")
    shapes = {tuple(s.shape) for s in given.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[0] != len(triples):
        raise ValueError(f"score matrices must have shape ({len(triples)}, num_entities), got {sorted(shapes)}")
    num_entities = next(iter(shapes))[1]
    return _iterate(
        lambda start, stop, batch, side: given[side][start:stop],
        triples,
        num_entities,
        filter_index=filter_index,
        sides=tuple(given),
        batch_size=batch_size,
        memory_budget=memory_budget,
        progress=progress,
    )


def _auto_precision(model, triples: Tensor, batch_size: int | None):
    """What ``auto`` picks for scoring: one batch of ``triples`` timed with and without bf16 autocast."""
    import hashlib
    import json
    from dataclasses import asdict

    from .precision import best_seconds, choose_for_workload

    device = model.entity_bias.device.type
    batch = triples[: batch_size or 256]
    raw = json.dumps({"model": asdict(model.config), "batch": int(batch.shape[0])}, sort_keys=True, default=str)
    workload = (f"score {model.config.encoder} h{model.encoder.config.hidden_size} E{model.config.num_entities} "
                f"#{hashlib.sha256(raw.encode()).hexdigest()[:10]}")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def seconds(bf16: bool) -> float:
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            return best_seconds(lambda: model.score(batch, "tail"), budget_s=0.3, sync=sync)

    was_training = model.training
    model.eval()
    try:
        return choose_for_workload(workload, device, seconds)
    finally:
        model.train(was_training)


def evaluate_model(
    model,
    kg,
    split: str = "test",
    *,
    filtered: bool = True,
    batch_size: int | None = None,
    precision: str = "auto",
    progress: bool = False,
) -> dict:
    """Link-prediction metrics of a :class:`~deltakg.kge.model.MaskedEntityModel` on one split of ``kg``.

    Filtered by every split's true triples (PyKEEN's default), realistic ranks, both sides; ``precision="bf16"``
    runs the encoder under bfloat16 autocast (scores stay float32), ``"auto"`` does so where a one-time timing of
    a batch of this model's scoring on this device finds bf16 faster (:mod:`deltakg.kge.precision`). Returns the metrics
    dict plus ``dataset``, ``split``, ``filtered``, ``rank``, ``precision`` (the one used), ``precision_choice``
    (with ``auto``), ``queries`` and ``seconds``.
    """
    import time

    from kg_data.errors import KGDataError

    if precision not in ("fp32", "bf16", "auto"):
        raise KGDataError(f"must be fp32, bf16 or auto, got {precision!r}", field="precision")
    if split not in kg.splits:
        raise KGDataError(f"dataset {kg.name!r} has no split {split!r} (has {', '.join(kg.splits)})", field="split")
    model.check_vocabulary(kg)
    choice = _auto_precision(model, kg.splits[split], batch_size) if precision == "auto" else None
    if choice is not None:
        precision = "bf16" if choice.use_bf16 else "fp32"
    filter_index = FilterIndex(kg.all_triples(), kg.num_entities) if filtered else None
    started = time.perf_counter()
    autocast = torch.autocast(model.entity_bias.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        result = evaluate_ranking(model.score, kg.splits[split], kg.num_entities, filter_index=filter_index,
                                  batch_size=batch_size, progress=progress)
    payload = result.to_dict()
    payload.update(dataset=kg.name, split=split, filtered=filtered, rank="realistic", precision=precision,
                   queries=int(result.all_ranks().numel()), seconds=time.perf_counter() - started)
    if choice is not None:
        payload["precision_choice"] = choice.to_dict()
    return payload
