"""Deterministic construction of deltaKG edit sets (METHODS.md §2) from a base KG.

Two kinds:

- **EDIT** (``"edit"``, E-): :func:`corrupt_triples` picks training triples (seeded order) and replaces one
  side (seeded choice) by a *plausible* wrong entity: one seen in the training split with the same relation
  on the same side, different from the true one, such that the corrupted triple is not a true triple in any
  split. The base model is trained on the corrupted KG (the corrupted triples replace the originals in
  ``train``; same vocabularies). Every corrupted fact whose query (the true triple with the corrupted side
  hidden) the model answers at raw rank 1 with the wrong entity is an edit case ``EditCase(true triple,
  side, wrong=wrong entity)``: the edit must bring back the true entity.
- **ADD** (``"add"``, A-): :func:`hold_out` removes training triples (a random set, or all training triples
  of random entities) and the base model is trained without them. Each held-out fact gives one query (a
  seeded side, or the side of the held-out entity); those the base model does not already answer at raw
  rank 1 are the edit cases (no ``wrong``; a fact whose query an earlier case already asks is skipped).

Stable facts (locality) are true training facts of the base model's KG that it answers at raw rank 1 (either
side can be asked; a query that is also an edit case's query is never used), sampled in seeded order.

How many triples are corrupted / held out: only part of them become edit cases (the model memorises some
corruptions, and already predicts some held-out facts), so :func:`build_editset` corrupts / holds out more
than ``size`` (``candidates``; default ``oversample * size``, oversample 3 for EDIT and 1.5 for ADD) and
keeps the first ``size`` edit cases in the seeded corruption / hold-out order; the kept cases are then
shuffled (seeded) into train/dev/test. Fewer cases than ``size`` are kept when fewer result (a warning, and
``editset.json`` says so): raise ``candidates`` or train longer.

Memorisation needs a query with few answers: a model can put only one answer of a query at raw rank 1, so a
corrupted fact whose query keeps k-1 true answers in ``train`` is answered with the wrong entity at best about
1/k of the time. Sparse KGs (WN18RR) have mostly one-answer queries; dense ones do not (UMLS: mean 1/k = 0.15,
only 240 of its 10,432 training queries have one answer). ``max_answers=1`` (CLI ``--max-answers 1``) corrupts
only facts whose query has a single true answer, which also makes the edit target THE correct answer.

The base model is what :func:`~deltakg.kge.training.train_model` saves (its best-valid-MRR checkpoint); the
default training config turns early stopping off, since the model must fit the (corrupted) training set.
``editset.json`` reports its valid metrics filtered by the original KG's true triples (realistic ranks).

"Rank 1" here is raw (1 + #entities scored strictly higher, as the edit metrics count it) and must hold by a
``margin`` (default 1e-4 in logits) so that it does not depend on how queries are batched: a stable fact's
entity beats every other entity by the margin, an EDIT case's wrong entity beats every other entity (the
target included) by the margin, an ADD case's target is beaten by some entity by the margin. After writing,
the build reloads ``out_dir/model`` and checks these invariants on the files it wrote.

Output folder ``out_dir``: ``model/`` (the base model, loadable by ``MaskedEntityModel.from_pretrained`` and
every ``deltakg`` command, with its checkpoints and logs), ``train.jsonl``, ``dev.jsonl``, ``test.jsonl``,
``stable_train.jsonl`` / ``stable_dev.jsonl`` / ``stable_test.jsonl`` (disjoint pools of stable facts: a
method's locality training signal, selection, and the only facts RK is reported on; deltaKG record formats,
read back with :meth:`kg_data.EditSet.load`, which also reads the original's single ``stable.jsonl``), ``corrupted.tsv``
(EDIT: every corrupted triple the base model was trained on) or ``heldout.tsv`` (ADD: every held-out triple),
and ``editset.json`` (kind, dataset, seed, all build parameters, counts and the base model's valid metrics).

The same KG, parameters and seed give the same files (training is seeded; CPU training repeats exactly).
``editset.json`` holds no timings for that reason (:attr:`EditSetBuild.seconds` has them). An edit set is
read back (as is an imported folder of the original's jsonl files) with :meth:`kg_data.EditSet.load`.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from deltakg.serialization import write_json
from kg_data import EditCase, EditSet, KGDataError, KnowledgeGraph, StableFact, Triple, write_triples
from kg_data.edits import Side

__all__ = [
    "KINDS",
    "HOLDOUT_MODES",
    "Corruption",
    "Holdout",
    "EditSetBuild",
    "corrupt_triples",
    "corrupted_graph",
    "hold_out",
    "heldout_graph",
    "build_editset",
]

logger = logging.getLogger(__name__)

KINDS = ("edit", "add")
HOLDOUT_MODES = ("triples", "entities")
SIDES: tuple[Side, Side] = ("head", "tail")
FORMAT = "deltakg-editset"
DEFAULT_OVERSAMPLE = {"edit": 3.0, "add": 1.5}
DEFAULT_SPLIT = (0.6, 0.2, 0.2)
# stable facts: train (a method's locality signal), dev (selection), test (the only pool RK is reported on)
DEFAULT_STABLE_SPLIT = (0.5, 0.25, 0.25)
_COLUMN = {"head": 0, "tail": 2}

# independent random streams of one seed, so that changing one stage's parameters leaves the others alone
_STREAM_CORRUPT, _STREAM_HOLDOUT, _STREAM_STABLE, _STREAM_SPLIT = 1, 2, 3, 4


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


def _other(side: Side) -> Side:
    return "tail" if side == "head" else "head"


def _true_keys(kg: KnowledgeGraph) -> set[tuple[int, int, int]]:
    return set(map(tuple, kg.all_triples().tolist()))


def _repeated_rows(train: np.ndarray) -> np.ndarray:
    """Boolean mask of training rows whose triple occurs more than once (a corrupted or held-out copy
    would leave the fact in training)."""
    if train.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    _, inverse, counts = np.unique(train, axis=0, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)] > 1


# ---------------------------------------------------------------------------------------------- EDIT
@dataclass(frozen=True)
class Corruption:
    """Training row ``row`` of the KG with its ``masked`` side replaced by entity id ``wrong``."""

    row: int
    masked: Side
    wrong: int

    def ids(self, kg: KnowledgeGraph) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(true triple, corrupted triple) as id tuples."""
        h, r, t = kg.train[self.row].tolist()
        return (h, r, t), ((self.wrong, r, t) if self.masked == "head" else (h, r, self.wrong))


def corrupt_triples(
    kg: KnowledgeGraph, count: int, *, seed: int = 0, max_answers: int | None = None
) -> list[Corruption]:
    """Up to ``count`` corruptions of distinct training triples, in a seeded order.

    Rows are visited in a seeded random order; for each a side is drawn (the other side is tried when the
    first has no candidate) and the wrong entity is drawn uniformly among the entities seen in ``train`` on
    that side of the relation, other than the true one and the kept one (no new self-loops), whose corrupted
    triple is in no split. No two corruptions share a query (kept entity, relation, hidden side) or a
    corrupted triple; a triple repeated in ``train`` is never corrupted.
    ``max_answers``: only corrupt a fact whose query has at most this many true answers in the KG (queries
    with few answers are memorised more easily), default: no limit. Returns fewer when the KG runs out.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    train = kg.train.numpy()
    true = _true_keys(kg)
    pools: dict[tuple[Side, int], np.ndarray] = {}
    for side in SIDES:
        col = _COLUMN[side]
        for r in np.unique(train[:, 1]).tolist():
            pools[side, r] = np.unique(train[train[:, 1] == r, col])
    answers: dict[tuple[Side, int, int], int] = {}
    if max_answers is not None:
        for h, r, t in true:
            answers["tail", r, h] = answers.get(("tail", r, h), 0) + 1
            answers["head", r, t] = answers.get(("head", r, t), 0) + 1

    rng = _rng(seed, _STREAM_CORRUPT)
    order = rng.permutation(train.shape[0])
    repeated = _repeated_rows(train)
    used_queries: set[tuple[Side, int, int]] = set()
    used_triples: set[tuple[int, int, int]] = set()
    out: list[Corruption] = []
    for row in order.tolist():
        if len(out) >= count:
            break
        if repeated[row]:
            continue
        h, r, t = (int(v) for v in train[row])
        first: Side = "head" if rng.random() < 0.5 else "tail"
        for side in (first, _other(first)):
            kept = t if side == "head" else h
            query = (side, r, kept)
            if query in used_queries:
                continue
            if max_answers is not None and answers.get(query, 0) > max_answers:
                continue
            pool = pools[side, r]
            make = (lambda e: (e, r, t)) if side == "head" else (lambda e: (h, r, e))

            def fits(e: int) -> bool:
                return e != kept and make(e) not in true and make(e) not in used_triples

            # rejection sampling (uniform over the fitting entities); scan the pool only when it keeps missing
            wrong = None
            for _ in range(16):
                e = int(pool[int(rng.integers(pool.size))])
                if fits(e):
                    wrong = e
                    break
            if wrong is None:
                candidates = [e for e in pool.tolist() if fits(e)]
                if not candidates:
                    continue
                wrong = candidates[int(rng.integers(len(candidates)))]
            used_queries.add(query)
            used_triples.add(make(wrong))
            out.append(Corruption(row=int(row), masked=side, wrong=int(wrong)))
            break
    return out


def _same_vocabulary(kg: KnowledgeGraph, train: torch.Tensor) -> KnowledgeGraph:
    splits = dict(kg.splits)
    splits["train"] = train
    return KnowledgeGraph(
        entities=kg.entities,
        relations=kg.relations,
        splits=splits,
        entity_texts=kg.entity_texts,
        relation_texts=kg.relation_texts,
        name=kg.name,
    )


def corrupted_graph(kg: KnowledgeGraph, corruptions: Sequence[Corruption]) -> KnowledgeGraph:
    """``kg`` with each corrupted training row replaced by its corrupted triple (same vocabularies, rows in place)."""
    train = kg.train.clone()
    for c in corruptions:
        train[c.row, _COLUMN[c.masked]] = c.wrong
    return _same_vocabulary(kg, train)


# ---------------------------------------------------------------------------------------------- ADD
@dataclass(frozen=True)
class Holdout:
    """Held-out training rows (seeded order), the side each one's query hides, and the held-out entities."""

    rows: tuple[int, ...]
    masked: tuple[Side, ...]
    entities: tuple[int, ...] = ()
    mode: str = "triples"

    def __len__(self) -> int:
        return len(self.rows)


def hold_out(kg: KnowledgeGraph, count: int, *, mode: str = "triples", seed: int = 0) -> Holdout:
    """Hold out about ``count`` training triples, in a seeded order.

    ``mode="triples"``: ``count`` random training triples (never one repeated in ``train``), each queried on
    a random side.
    ``mode="entities"``: random entities of the training split, taken in a seeded order until at least
    ``count`` triples are held out, with ALL their training triples (so the last entity may overshoot);
    each triple is queried on the side of its held-out entity (a random side when both are held out).
    """
    if mode not in HOLDOUT_MODES:
        raise KGDataError(f"unknown hold-out mode {mode!r}; choose one of {', '.join(HOLDOUT_MODES)}", field="holdout")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    train = kg.train.numpy()
    rng = _rng(seed, _STREAM_HOLDOUT)
    if mode == "triples":
        eligible = np.flatnonzero(~_repeated_rows(train))
        rows = eligible[rng.permutation(eligible.size)][:count].tolist()
        sides = ["head" if rng.random() < 0.5 else "tail" for _ in rows]
        return Holdout(tuple(int(r) for r in rows), tuple(sides), (), mode)

    present = np.unique(np.concatenate([train[:, 0], train[:, 2]]))
    chosen: list[int] = []
    held = np.zeros(train.shape[0], dtype=bool)
    for entity in rng.permutation(present).tolist():
        if held.sum() >= count:
            break
        chosen.append(int(entity))
        held |= (train[:, 0] == entity) | (train[:, 2] == entity)
    chosen_set = set(chosen)
    index = np.flatnonzero(held)
    rows = index[rng.permutation(index.size)].tolist()
    sides: list[Side] = []
    for row in rows:
        h_out, t_out = int(train[row, 0]) in chosen_set, int(train[row, 2]) in chosen_set
        if h_out and t_out:
            sides.append("head" if rng.random() < 0.5 else "tail")
        else:
            sides.append("head" if h_out else "tail")
    return Holdout(tuple(int(r) for r in rows), tuple(sides), tuple(chosen), mode)


def heldout_graph(kg: KnowledgeGraph, holdout: Holdout) -> KnowledgeGraph:
    """``kg`` without the held-out training rows (same vocabularies, other rows in order)."""
    keep = torch.ones(kg.train.shape[0], dtype=torch.bool)
    keep[list(holdout.rows)] = False
    return _same_vocabulary(kg, kg.train[keep])


# ---------------------------------------------------------------------------------------------- scoring
@torch.no_grad()
def _margins(model, triples: torch.Tensor, sides: torch.Tensor, entities: torch.Tensor,
             batch_size: int = 512) -> torch.Tensor:
    """Per query: score of ``entities[i]`` minus the best score of every other entity (float64)."""
    out = []
    for i in range(0, triples.shape[0], batch_size):
        scores = model(**model.inputs(triples[i:i + batch_size], sides[i:i + batch_size])).double()
        ent = entities[i:i + batch_size].to(scores.device).view(-1, 1)
        own = scores.gather(1, ent).squeeze(1)
        best_other = scores.scatter(1, ent, float("-inf")).max(dim=1).values
        out.append((own - best_other).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def _query_key(triple: tuple[int, int, int], side: Side) -> tuple[Side, int, int]:
    h, r, t = triple
    return (side, r, t if side == "head" else h)


def _side_codes(sides: Sequence[Side]) -> torch.Tensor:
    from deltakg.kge.inputs import side_code

    return torch.tensor([side_code(s) for s in sides], dtype=torch.long)


def _select_stable(
    model,
    kg: KnowledgeGraph,
    exclude_rows: set[int],
    exclude_queries: set[tuple[Side, int, int]],
    size: int,
    *,
    seed: int,
    margin: float,
    chunk: int = 4096,
) -> tuple[list[tuple[int, Side]], int]:
    """Training (row, side) pairs answered at raw rank 1 by ``margin``, in seeded order; and how many were scored."""
    train = kg.train
    rows_np = train.numpy()
    n = train.shape[0]
    order = _rng(seed, _STREAM_STABLE).permutation(2 * n).tolist()  # pair p: row p // 2, side p % 2
    picked: list[tuple[int, Side]] = []
    scored = 0
    seen_queries: set[tuple[Side, int, int]] = set()
    for start in range(0, len(order), chunk):
        if len(picked) >= size:
            break
        pairs = []
        for p in order[start:start + chunk]:
            row, side = p // 2, SIDES[p % 2]
            if row in exclude_rows:
                continue
            key = _query_key(tuple(rows_np[row].tolist()), side)
            if key in exclude_queries:
                continue
            pairs.append((row, side))
        if not pairs:
            continue
        rows = torch.tensor([row for row, _ in pairs], dtype=torch.long)
        triples = train[rows]
        sides = [side for _, side in pairs]
        targets = torch.tensor([int(triples[i, _COLUMN[s]]) for i, s in enumerate(sides)], dtype=torch.long)
        ok = _margins(model, triples, _side_codes(sides), targets) > margin
        scored += len(pairs)
        for i, (row, side) in enumerate(pairs):
            if len(picked) >= size:
                break
            key = _query_key(tuple(triples[i].tolist()), side)
            # a query holds one rank-1 answer; a duplicated training triple must not give it twice
            if ok[i] and key not in seen_queries:
                seen_queries.add(key)
                picked.append((row, side))
    return picked, scored


def _split_cases(cases: list[EditCase], fractions: Sequence[float], seed: int) -> dict[str, list[EditCase]]:
    order = _rng(seed, _STREAM_SPLIT).permutation(len(cases)).tolist()
    shuffled = [cases[i] for i in order]
    n = len(shuffled)
    n_train = int(round(fractions[0] * n))
    n_dev = min(int(round(fractions[1] * n)), n - n_train)
    return {"train": shuffled[:n_train], "dev": shuffled[n_train:n_train + n_dev], "test": shuffled[n_train + n_dev:]}


def _check_fractions(split: Sequence[float], name: str = "split") -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in split)
    except (TypeError, ValueError):
        values = ()
    valid = len(values) == 3 and all(v >= 0 and math.isfinite(v) for v in values)
    if not valid or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise KGDataError(
            f"{name} fractions must be 3 non-negative numbers (train, dev, test) summing to 1, got {split!r}",
            field=name,
        )
    return values  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- build
@dataclass
class EditSetBuild:
    """What :func:`build_editset` produced: the folder, the edit set, the base model and ``editset.json``."""

    out_dir: Path
    kind: str
    edit_set: EditSet
    model: Any
    info: dict[str, Any] = field(default_factory=dict)
    #: wall-clock seconds per stage (not written to ``editset.json``, which depends only on inputs and seed)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        """The base model's folder (``out_dir/model``)."""
        return self.out_dir / "model"

    @property
    def counts(self) -> dict[str, Any]:
        """The counts of ``editset.json``."""
        return self.info["counts"]


_OUTPUTS = ("model", "train.jsonl", "dev.jsonl", "test.jsonl", "stable.jsonl", "stable_train.jsonl",
            "stable_dev.jsonl", "stable_test.jsonl", "corrupted.tsv", "heldout.tsv", "editset.json")


def _prepare_out(out_dir: Path, overwrite: bool) -> None:
    present = [name for name in _OUTPUTS if (out_dir / name).exists()]
    if present and not overwrite:
        raise KGDataError(f"already holds an edit set ({', '.join(present)}); choose another folder or overwrite",
                          path=out_dir)
    for name in present:
        path = out_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _resolve_count(candidates: int | float | None, size: int, oversample: float, n_train: int, what: str) -> int:
    if candidates is None:
        return min(n_train, int(math.ceil(oversample * size)))
    if isinstance(candidates, bool) or not isinstance(candidates, (int, float)) or candidates <= 0:
        raise KGDataError(f"{what} must be a positive count or a fraction in (0, 1), got {candidates!r}",
                          field="candidates")
    if isinstance(candidates, float) and candidates < 1:
        return max(1, int(round(candidates * n_train)))
    if isinstance(candidates, float) and not candidates.is_integer():
        raise KGDataError(f"{what} must be a whole count or a fraction in (0, 1), got {candidates!r}",
                          field="candidates")
    return min(n_train, int(candidates))


def _verify(out_dir: Path, kind: str, margin: float) -> None:
    """Reload the model and the files just written and check the edit-set invariants (raw ranks)."""
    from deltakg.editing.target import EncodedFacts, KGETarget
    from deltakg.kge.model import MaskedEntityModel

    model = MaskedEntityModel.from_pretrained(out_dir / "model")
    target = KGETarget(model)
    loaded = EditSet.load(out_dir)
    cases = [c for split in loaded.cases.values() for c in split]
    if cases:
        facts = target.encode(cases)
        ranks = target.ranks(facts)
        if not bool((ranks > 1).all()):
            raise RuntimeError(f"edit-set invariant broken: {int((ranks <= 1).sum())} edit case target(s) at rank 1")
        if kind == "edit":
            if facts.wrong is None:
                raise RuntimeError("edit-set invariant broken: an EDIT case has no wrong entity")
            wrong = target.ranks(EncodedFacts(facts.triples, facts.sides, facts.wrong))
            if not bool((wrong == 1).all()):
                raise RuntimeError(f"edit-set invariant broken: {int((wrong > 1).sum())} wrong entities not at rank 1")
    if loaded.stable:
        ranks = target.ranks(target.encode(loaded.stable))
        if not bool((ranks == 1).all()):
            raise RuntimeError(f"edit-set invariant broken: {int((ranks > 1).sum())} stable fact(s) not at rank 1")


def _valid_metrics(model, kg: KnowledgeGraph) -> dict[str, float] | None:
    from deltakg.kge.evaluation import FilterIndex, evaluate_ranking

    if "valid" not in kg.splits or kg.valid.numel() == 0:
        return None
    with torch.inference_mode():
        result = evaluate_ranking(model.score, kg.valid, kg.num_entities,
                                  filter_index=FilterIndex(kg.all_triples(), kg.num_entities))
    m = result.to_dict()
    return {key: m[key] for key in ("mrr", "mr", "hits@1", "hits@3", "hits@10") if key in m}


def build_editset(
    kg: KnowledgeGraph,
    kind: str,
    out_dir: str | Path,
    *,
    encoder: str = "tiny",
    use_text: bool = True,
    layers: int | None = None,
    max_length: int = 64,
    dropout: float | None = None,
    inverse_relations: bool = False,
    readout: str = "mask",
    compact: bool = False,
    init_from_text: bool | None = None,
    size: int = 500,
    candidates: int | float | None = None,
    oversample: float | None = None,
    holdout: str = "triples",
    max_answers: int | None = None,
    stable_size: int = 1000,
    split: Sequence[float] = DEFAULT_SPLIT,
    stable_split: Sequence[float] = DEFAULT_STABLE_SPLIT,
    seed: int = 0,
    margin: float = 1e-4,
    train_config=None,
    overwrite: bool = False,
) -> EditSetBuild:
    """Build an EDIT (``kind="edit"``) or ADD (``kind="add"``) edit set and its base model in ``out_dir``.

    ``size``: edit cases wanted (all splits together). ``candidates``: how many training triples to corrupt
    / hold out, a count or a fraction of ``train`` (default ``ceil(oversample * size)``; ``oversample``
    defaults to 3 for EDIT and 1.5 for ADD). ``holdout``: ``"triples"`` or ``"entities"`` (ADD only).
    ``dropout`` … ``init_from_text``: the base model's layout, as in :func:`~deltakg.kge.training.train_model`.
    ``max_answers``: EDIT only, see :func:`corrupt_triples`. ``stable_size``: stable facts wanted (all when
    fewer qualify). ``split``: train/dev/test fractions of the edit cases; ``stable_split``: of the stable
    facts, into the disjoint ``stable_train`` / ``stable_dev`` / ``stable_test`` pools (in their seeded order).
    ``train_config``: a :class:`~deltakg.kge.training.TrainConfig` (default: its defaults with ``seed=seed``, no
    early stopping, no progress bar, fp32: the same files on every machine, whatever ``auto`` precision picks). ``overwrite``: replace an edit set already in ``out_dir`` (otherwise an error).
    See the module docstring for the procedure and the files.
    """
    from deltakg.kge.model import MaskedEntityModel
    from deltakg.kge.training import TrainConfig, train_model

    if kind not in KINDS:
        raise KGDataError(f"unknown edit-set kind {kind!r}; choose one of {', '.join(KINDS)}", field="kind")
    if holdout not in HOLDOUT_MODES:
        raise KGDataError(f"unknown hold-out mode {holdout!r}; choose one of {', '.join(HOLDOUT_MODES)}",
                          field="holdout")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise KGDataError(f"size must be a positive number of edit cases, got {size!r}", field="size")
    if isinstance(stable_size, bool) or not isinstance(stable_size, int) or stable_size < 0:
        raise KGDataError(f"stable_size must be >= 0, got {stable_size!r}", field="stable_size")
    fractions = _check_fractions(split)
    stable_fractions = _check_fractions(stable_split, "stable_split")
    oversample = DEFAULT_OVERSAMPLE[kind] if oversample is None else float(oversample)
    if not oversample > 0:
        raise KGDataError(f"oversample must be > 0, got {oversample!r}", field="oversample")
    if "train" not in kg.splits or kg.train.numel() == 0:
        raise KGDataError(f"dataset {kg.name!r} has no training triples", field="dataset")
    config = train_config if train_config is not None else TrainConfig(
        seed=seed, patience=None, progress=False, precision="32-true", decoder_dtype="float32")
    n_train = int(kg.train.shape[0])
    count = _resolve_count(candidates, size, oversample, n_train, "candidates")
    out_dir = Path(out_dir)
    _prepare_out(out_dir, overwrite)
    started = time.perf_counter()

    # 1. the base model's KG and the candidate edit facts (true triple, masked side, wrong entity or -1)
    counts: dict[str, Any] = {"train_triples": n_train}
    if kind == "edit":
        corruptions = corrupt_triples(kg, count, seed=seed, max_answers=max_answers)
        base_kg = corrupted_graph(kg, corruptions)
        pairs = [c.ids(kg) for c in corruptions]
        facts = [(true, c.masked, c.wrong) for c, (true, _) in zip(corruptions, pairs)]
        removed_rows = {c.row for c in corruptions}
        counts["corrupted"] = len(corruptions)
        ent, rel = kg.entities.labels, kg.relations.labels
        write_triples(out_dir / "corrupted.tsv", [Triple(ent[h], rel[r], ent[t]) for _, (h, r, t) in pairs])
    else:
        held = hold_out(kg, count, mode=holdout, seed=seed)
        base_kg = heldout_graph(kg, held)
        train = kg.train
        facts = [(tuple(train[row].tolist()), side, -1) for row, side in zip(held.rows, held.masked)]
        removed_rows = set(held.rows)
        counts["held_out"] = len(held)
        if holdout == "entities":
            counts["held_out_entities"] = len(held.entities)
        write_triples(out_dir / "heldout.tsv", [_labels(kg, f[0]) for f in facts])
    counts["base_train_triples"] = int(base_kg.train.shape[0])
    prepared = time.perf_counter()

    # 2. the base model
    result = train_model(base_kg, out_dir / "model", encoder=encoder, layers=layers, max_length=max_length,
                         use_text=use_text, dropout=dropout, inverse_relations=inverse_relations, readout=readout,
                         compact=compact, init_from_text=init_from_text, config=config)
    trained = time.perf_counter()
    model = MaskedEntityModel.from_pretrained(out_dir / "model")  # exactly what the files hold

    # 3. edit cases: one query per candidate fact, kept when the base model has it wrong (by the margin)
    cases: list[EditCase] = []
    edit_queries: set[tuple[Side, int, int]] = set()
    if facts:
        triples = torch.tensor([f[0] for f in facts], dtype=torch.long)
        sides = _side_codes([f[1] for f in facts])
        if kind == "edit":
            keep = _margins(model, triples, sides, torch.tensor([f[2] for f in facts])) > margin
        else:
            targets = torch.tensor([f[0][_COLUMN[f[1]]] for f in facts], dtype=torch.long)
            keep = _margins(model, triples, sides, targets) < -margin
        for (true, side, wrong), ok in zip(facts, keep.tolist()):
            # no two cases share a query (two held-out facts can): one query has one rank-1 answer
            if ok and len(cases) < size and _query_key(true, side) not in edit_queries:
                edit_queries.add(_query_key(true, side))
                cases.append(EditCase(_labels(kg, true), side, wrong=None if wrong < 0 else kg.entities.labels[wrong]))
    counts["memorised" if kind == "edit" else "not_predicted"] = int(keep.sum()) if facts else 0
    if not cases:
        why = "memorised none of the corrupted triples" if kind == "edit" else "already predicts every held-out fact"
        raise KGDataError(f"no edit cases: the base model {why} ({len(facts)} candidates); train longer or raise "
                          f"the number of candidates", field="size")
    if len(cases) < size:
        logger.warning("%s: only %d edit cases of the %d wanted (raise candidates or train longer)",
                       kg.name, len(cases), size)
    splits = _split_cases(cases, fractions, seed)

    # 4. stable facts: true training facts of the base KG answered at rank 1, no query shared with an edit case
    picked, scored = _select_stable(model, kg, removed_rows, edit_queries, stable_size, seed=seed, margin=margin)
    stable = [StableFact(_labels(kg, tuple(kg.train[row].tolist())), side) for row, side in picked]
    if len(stable) < stable_size:
        logger.warning("%s: only %d stable facts of the %d wanted", kg.name, len(stable), stable_size)

    n_stable_train = int(round(stable_fractions[0] * len(stable)))
    n_stable_dev = min(int(round(stable_fractions[1] * len(stable))), len(stable) - n_stable_train)
    pools = {"train": stable[:n_stable_train], "dev": stable[n_stable_train:n_stable_train + n_stable_dev],
             "test": stable[n_stable_train + n_stable_dev:]}
    edit_set = EditSet.with_pools(splits, pools)
    edit_set.save(out_dir)
    counts.update(
        edit_cases={name: len(part) for name, part in splits.items()},
        edit_cases_total=len(cases),
        stable=len(stable),
        stable_pools={name: len(part) for name, part in pools.items()},
        stable_scored=scored,
    )
    valid = _valid_metrics(model, kg)
    _verify(out_dir, kind, margin)
    finished = time.perf_counter()

    info = {
        "format": FORMAT,
        "version": 2,  # 2: stable facts in train/dev/test pools (1: one stable.jsonl)
        "kind": kind,
        "dataset": kg.name,
        "seed": seed,
        "parameters": {
            "size": size,
            "candidates": candidates,
            "candidates_resolved": count,
            "oversample": oversample,
            "holdout": holdout if kind == "add" else None,
            "max_answers": max_answers if kind == "edit" else None,
            "stable_size": stable_size,
            "split": dict(zip(("train", "dev", "test"), fractions)),
            "stable_split": dict(zip(("train", "dev", "test"), stable_fractions)),
            "margin": margin,
            "encoder": encoder,
            "use_text": use_text,
            "layers": layers,
            "max_length": max_length,
            "dropout": dropout,
            "inverse_relations": inverse_relations,
            "readout": readout,
            "compact": compact,
            "init_from_text": init_from_text,
            # as trained: an "auto" precision appears as what it resolved to on this machine
            "train_config": result.metrics.get("config", asdict(config)),
        },
        "counts": counts,
        "base_model": {
            "path": "model",
            # filtered (all true triples of the original KG), realistic ranks, both sides
            "valid": valid,
            "valid_mrr": None if valid is None else valid["mrr"],
            "epochs_run": result.metrics.get("epochs_run"),
            "global_step": result.metrics.get("global_step"),
            "best_checkpoint_valid_mrr": result.metrics.get("best_valid_mrr"),
        },
        "files": {
            "model": "model",
            **{name: f"{name}.jsonl" for name in splits},
            "stable": {name: f"stable_{name}.jsonl" for name in pools},
            ("corrupted" if kind == "edit" else "heldout"): "corrupted.tsv" if kind == "edit" else "heldout.tsv",
        },
    }
    write_json(out_dir / "editset.json", info)
    seconds = {
        "prepare": round(prepared - started, 3),
        "train": round(trained - prepared, 3),
        "select_and_check": round(finished - trained, 3),
        "total": round(finished - started, 3),
    }
    return EditSetBuild(out_dir=out_dir, kind=kind, edit_set=edit_set, model=model, info=info, seconds=seconds)


def _labels(kg: KnowledgeGraph, ids: Sequence[int]) -> Triple:
    h, r, t = ids
    return Triple(kg.entities.labels[h], kg.relations.labels[r], kg.entities.labels[t])
