"""Edit cases and stable facts, and the deltaKG jsonl record formats.

Record formats of the original deltaKG release (read and written here, extra keys ignored on read):

- EDIT: ``{"ori": [h, r, t], "cor": [h', r, t'], "process": ..., "label": e}``: ``ori`` is the true fact,
  ``cor`` the corrupted one the model believes, ``label`` the correct entity; the masked side is where
  ``cor`` differs from ``ori`` (the head when ``ori[0] == label`` in the original's rule).
- ADD: ``{"triples": [h, r, t], "label": e, "head": 0|1}``; ``head == 1`` masks the head.
- stable: ``{"process": ..., "triple": [h, r, t], "label": e}``; we also write ``"masked"`` so that a
  self-loop round-trips exactly.

``process`` is opaque: whatever an imported file holds is kept and written back unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from .errors import KGDataError
from .files import write_bytes_atomic
from .formats import _read_text, _split_lines
from .triple import Triple

__all__ = [
    "Side",
    "EditCase",
    "StableFact",
    "EditSet",
    "STABLE_POOLS",
    "read_edit_cases",
    "write_edit_cases",
    "read_stable_facts",
    "write_stable_facts",
    "read_records",
    "MASK",
]

Side = Literal["head", "tail"]
MASK = "[MASK]"
EDIT_SPLITS = ("train", "dev", "test")


def _masked_query(triple: Triple, masked: Side) -> list[str]:
    return [MASK if masked == "head" else triple.head, triple.relation, MASK if masked == "tail" else triple.tail]


def _check_side(masked: str) -> None:
    if masked not in ("head", "tail"):
        raise ValueError(f"masked must be 'head' or 'tail', got {masked!r}")


@dataclass(frozen=True)
class EditCase:
    """One edit: make the model answer ``target`` for the query that hides one side of ``triple``.

    ``wrong`` is, for an EDIT case, the entity the model predicts now (it appears in the corrupted
    fact); an ADD case has none.
    """

    triple: Triple
    masked: Side
    wrong: str | None = None
    process: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_side(self.masked)
        if self.wrong is not None and self.wrong == self.target:
            raise ValueError(f"wrong entity equals the target {self.target!r}")

    @property
    def kind(self) -> str:
        """'edit' (correct a wrong fact) or 'add' (insert a new one)."""
        return "add" if self.wrong is None else "edit"

    @property
    def target(self) -> str:
        """The entity the edited model must predict."""
        return self.triple.entity(self.masked)

    @property
    def corrupted(self) -> Triple | None:
        """The wrong fact the model holds now (EDIT only)."""
        if self.wrong is None:
            return None
        h, r, t = self.triple
        return Triple(self.wrong, r, t) if self.masked == "head" else Triple(h, r, self.wrong)

    def to_record(self) -> dict[str, Any]:
        """The deltaKG jsonl record (E- or A- format)."""
        process = self.process if self.process is not None else _masked_query(self.triple, self.masked)
        if self.wrong is None:
            record = {"triples": list(self.triple), "label": self.target, "head": int(self.masked == "head")}
            if self.process is not None:
                record["process"] = self.process
            return record
        return {"ori": list(self.triple), "cor": list(self.corrupted), "process": process, "label": self.target}


@dataclass(frozen=True)
class StableFact:
    """A fact the unedited model predicts correctly; an edit must leave it so (locality)."""

    triple: Triple
    masked: Side
    process: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_side(self.masked)

    @property
    def label(self) -> str:
        """The entity the model must keep predicting."""
        return self.triple.entity(self.masked)

    def to_record(self) -> dict[str, Any]:
        """The deltaKG stable.jsonl record."""
        process = self.process if self.process is not None else _masked_query(self.triple, self.masked)
        return {"process": process, "triple": list(self.triple), "label": self.label, "masked": self.masked}


# ---------------------------------------------------------------------------------------------- parsing
class _Record:
    """A decoded jsonl object with its location, for precise errors."""

    def __init__(self, data: dict, path, line: int) -> None:
        self.data, self.path, self.line = data, path, line

    def error(self, message: str, key: str | None = None) -> KGDataError:
        return KGDataError(message, path=self.path, line=self.line, field=key)

    def get(self, key: str) -> Any:
        if key not in self.data:
            raise self.error(f"missing key {key!r}", key)
        return self.data[key]

    def triple(self, key: str) -> Triple:
        value = self.get(key)
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) and v for v in value)):
            raise self.error(f"expected a list of 3 non-empty strings [head, relation, tail], got {value!r}", key)
        return Triple(*value)

    def label(self) -> str:
        value = self.get("label")
        if not isinstance(value, str) or not value:
            raise self.error(f"expected a non-empty entity string, got {value!r}", "label")
        return value


def read_records(path: str | os.PathLike) -> list[_Record]:
    """Decode a jsonl file into objects, one per non-blank line, with precise errors."""
    records = []
    for number, line in enumerate(_split_lines(_read_text(path), path), start=1):
        if not line.strip():
            raise KGDataError("blank line (expected one JSON object per line)", path=path, line=number)
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise KGDataError(f"invalid JSON: {err.msg} at column {err.colno}", path=path, line=number) from None
        except RecursionError:
            raise KGDataError("JSON nested too deeply", path=path, line=number) from None
        except ValueError as err:  # e.g. an integer longer than Python's int parsing limit (4300 digits)
            raise KGDataError(f"invalid JSON: {err}", path=path, line=number) from None
        if not isinstance(data, dict):
            raise KGDataError(f"expected a JSON object, got {type(data).__name__}", path=path, line=number)
        records.append(_Record(data, path, number))
    return records


def _edit_case(rec: _Record) -> EditCase:
    if "ori" in rec.data:
        ori, cor, label = rec.triple("ori"), rec.triple("cor"), rec.label()
        if cor.relation != ori.relation:
            raise rec.error(f"relation {cor.relation!r} differs from ori's {ori.relation!r}", "cor")
        differs = [side for side in ("head", "tail") if ori.entity(side) != cor.entity(side)]
        if len(differs) != 1:
            raise rec.error("expected cor to differ from ori in exactly one of head or tail", "cor")
        masked = differs[0]
        if ori.entity(masked) != label:
            raise rec.error(f"label {label!r} is not ori's {masked} {ori.entity(masked)!r}", "label")
        return EditCase(ori, masked, wrong=cor.entity(masked), process=rec.data.get("process"))
    if "triples" in rec.data:
        triple, label, head = rec.triple("triples"), rec.label(), rec.get("head")
        if head not in (0, 1) or isinstance(head, bool):
            raise rec.error(f"expected 0 or 1, got {head!r}", "head")
        masked: Side = "head" if head == 1 else "tail"
        if triple.entity(masked) != label:
            raise rec.error(f"label {label!r} is not the triple's {masked} {triple.entity(masked)!r}", "label")
        return EditCase(triple, masked, process=rec.data.get("process"))
    raise rec.error("expected an EDIT record (keys ori, cor, label) or an ADD record (keys triples, label, head)")


def _stable_fact(rec: _Record) -> StableFact:
    triple, label = rec.triple("triple"), rec.label()
    masked = rec.data.get("masked")
    if masked is None:
        masked = "head" if triple.head == label else "tail"
    elif masked not in ("head", "tail"):
        raise rec.error(f"expected 'head' or 'tail', got {masked!r}", "masked")
    if triple.entity(masked) != label:
        raise rec.error(f"label {label!r} is neither the triple's head nor its tail", "label")
    return StableFact(triple, masked, process=rec.data.get("process"))


def read_edit_cases(path: str | os.PathLike) -> list[EditCase]:
    """Read EDIT and/or ADD records (deltaKG jsonl)."""
    return [_edit_case(rec) for rec in read_records(path)]


def read_stable_facts(path: str | os.PathLike) -> list[StableFact]:
    """Read stable-fact records (deltaKG ``stable.jsonl``)."""
    return [_stable_fact(rec) for rec in read_records(path)]


def _write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    write_bytes_atomic(path, text.encode("utf-8"))


def write_edit_cases(path: str | os.PathLike, cases: Iterable[EditCase]) -> None:
    """Write edit cases in the deltaKG E-/A- jsonl formats."""
    _write_jsonl(path, (case.to_record() for case in cases))


def write_stable_facts(path: str | os.PathLike, facts: Iterable[StableFact]) -> None:
    """Write stable facts in the deltaKG ``stable.jsonl`` format."""
    _write_jsonl(path, (fact.to_record() for fact in facts))


STABLE_POOLS = ("train", "dev", "test")


@dataclass
class EditSet:
    """Edit cases per split (``train``/``dev``/``test``) and the stable facts, as a folder of jsonl files.

    Stable facts come in disjoint pools (``stable_pools``): ``train`` (a method's locality training signal),
    ``dev`` (checkpoint and hyperparameter selection) and ``test`` (the only facts RK is reported on), in
    ``stable_train.jsonl`` / ``stable_dev.jsonl`` / ``stable_test.jsonl``. A set with one ``stable.jsonl``
    (the original deltaKG layout, and sets built before the pools) loads with ``stable_pools`` empty: then every
    pool is that one list, and :attr:`held_out_locality` is false so reports can say so. ``stable`` is always
    every stable fact (the pools' concatenation).
    """

    cases: dict[str, list[EditCase]]
    stable: list[StableFact]
    stable_pools: dict[str, list[StableFact]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stable_pools:
            unknown = sorted(set(self.stable_pools) - set(STABLE_POOLS))
            if unknown:
                raise KGDataError(f"unknown stable pool(s) {unknown}; pools are {', '.join(STABLE_POOLS)}",
                                  field="stable_pools")
            joined = [f for name in STABLE_POOLS for f in self.stable_pools.get(name, [])]
            if self.stable and self.stable != joined:
                raise KGDataError("stable must be the stable pools' facts in train, dev, test order (or empty)",
                                  field="stable")
            self.stable = joined

    @classmethod
    def with_pools(cls, cases: dict[str, list[EditCase]], pools: dict[str, list[StableFact]]) -> "EditSet":
        """An edit set whose stable facts are split into the ``train``/``dev``/``test`` pools."""
        return cls(cases=cases, stable=[], stable_pools={name: list(pools.get(name, [])) for name in STABLE_POOLS})

    @property
    def held_out_locality(self) -> bool:
        """Whether RK can be measured on stable facts no method trained or selected on (the pooled layout)."""
        return bool(self.stable_pools)

    def pool(self, name: str) -> list[StableFact]:
        """The stable facts of one pool (a single-pool set: all of them, for every pool)."""
        if name not in STABLE_POOLS:
            raise KGDataError(f"unknown stable pool {name!r}; choose one of {', '.join(STABLE_POOLS)}", field="pool")
        if not self.stable_pools:
            return self.stable
        if name not in self.stable_pools:
            raise KGDataError(f"this view of the edit set has no stable_{name} pool (it is kept from training)",
                              field="pool")
        return self.stable_pools[name]

    def pool_name(self, name: str) -> str:
        """How a report names the facts :meth:`pool` returns: ``stable_test`` etc., or the single pool's caveat."""
        return f"stable_{name}" if self.stable_pools else "stable (single pool: also what methods train on)"

    def training_view(self) -> "EditSet":
        """The set without its test cases and its ``stable_test`` pool: what editors may train and select on."""
        cases = {k: v for k, v in self.cases.items() if k != "test"}
        if not self.stable_pools:
            return EditSet(cases=cases, stable=self.stable)
        return EditSet(cases=cases, stable=[],
                       stable_pools={k: v for k, v in self.stable_pools.items() if k != "test"})

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``{split}.jsonl`` for each split and ``stable_{pool}.jsonl`` (single pool: ``stable.jsonl``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for split, cases in self.cases.items():
            write_edit_cases(directory / f"{split}.jsonl", cases)
        if self.stable_pools:
            for name, facts in self.stable_pools.items():
                write_stable_facts(directory / f"stable_{name}.jsonl", facts)
        else:
            write_stable_facts(directory / "stable.jsonl", self.stable)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "EditSet":
        """Read a folder of ``train/dev/test.jsonl`` (those present) and ``stable_{train,dev,test}.jsonl`` or
        ``stable.jsonl``."""
        directory = Path(directory)
        if not directory.is_dir():
            raise KGDataError("not a directory (expected an edit-set folder)", path=directory)
        cases = {s: read_edit_cases(directory / f"{s}.jsonl") for s in EDIT_SPLITS if (directory / f"{s}.jsonl").exists()}
        if not cases:
            raise KGDataError(f"no edit cases: expected {', '.join(s + '.jsonl' for s in EDIT_SPLITS)}", path=directory)
        pooled = {name: directory / f"stable_{name}.jsonl" for name in STABLE_POOLS}
        present = [name for name, path in pooled.items() if path.exists()]
        if not present:
            return cls(cases=cases, stable=read_stable_facts(directory / "stable.jsonl"))
        if (directory / "stable.jsonl").exists():
            raise KGDataError("holds both stable.jsonl and stable_{train,dev,test}.jsonl: keep one layout",
                              path=directory / "stable.jsonl")
        return cls(cases=cases, stable=[],
                   stable_pools={name: read_stable_facts(path) for name, path in pooled.items() if name in present})
