"""The id-mapped store for one knowledge graph: vocabularies, integer splits, optional texts."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from .errors import KGDataError
from .formats import TRIPLE_FIELDS, read_json_object, read_text_map, read_triple_columns, write_text_map, write_triples
from .triple import Triple
from .vocab import Vocabulary

__all__ = ["KnowledgeGraph", "SPLITS", "count_duplicates"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


def triple_keys(ids: torch.Tensor, num_entities: int, num_relations: int) -> torch.Tensor:
    """One int64 per (h, r, t) row, equal exactly when the rows are equal."""
    return (ids[:, 0] * num_relations + ids[:, 1]) * num_entities + ids[:, 2]


def count_duplicates(ids: torch.Tensor, num_entities: int, num_relations: int) -> int:
    """Number of rows of an ``(n, 3)`` id tensor that repeat an earlier row."""
    if ids.numel() == 0:
        return 0
    # numpy's sort-based unique is about 3x faster than torch's here
    return int(ids.shape[0] - np.unique(triple_keys(ids, num_entities, num_relations).numpy()).size)


@dataclass
class KnowledgeGraph:
    """One KG: entity/relation vocabularies, splits as ``(n, 3)`` long tensors of (head, relation, tail) ids.

    Duplicate triples are kept as they are in the files (so counts match the source) and reported in
    ``duplicates``; :meth:`deduplicated` gives a copy without them.
    """

    entities: Vocabulary
    relations: Vocabulary
    splits: dict[str, torch.Tensor]
    entity_texts: dict[str, str] | None = None
    relation_texts: dict[str, str] | None = None
    name: str = "kg"
    duplicates: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split, ids in self.splits.items():
            if ids.dtype != torch.long or ids.dim() != 2 or ids.shape[1] != 3:
                raise KGDataError(f"split {split!r} must be an (n, 3) long tensor, got {tuple(ids.shape)} {ids.dtype}")
            if ids.numel():
                bounds = (len(self.entities), len(self.relations), len(self.entities))
                for column, (fname, bound) in enumerate(zip(TRIPLE_FIELDS, bounds)):
                    col = ids[:, column]
                    if int(col.min()) < 0 or int(col.max()) >= bound:
                        raise KGDataError(f"split {split!r}: {fname} id out of range [0, {bound})", field=fname)
        if not self.duplicates:
            self.duplicates = {split: count_duplicates(ids, len(self.entities), len(self.relations)) for split, ids in self.splits.items()}
        for split, count in self.duplicates.items():
            if count:
                logger.warning("%s: split %r holds %d duplicate triple(s) (kept)", self.name, split, count)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_labeled(
        cls,
        splits: Mapping[str, Iterable[Sequence[str]]],
        *,
        entities: Vocabulary | Sequence[str] | None = None,
        relations: Vocabulary | Sequence[str] | None = None,
        entity_texts: Mapping[str, str] | None = None,
        relation_texts: Mapping[str, str] | None = None,
        name: str = "kg",
        sources: Mapping[str, str | os.PathLike] | None = None,
    ) -> "KnowledgeGraph":
        """Build from labelled triples per split.

        Without ``entities``/``relations`` the vocabularies are the sorted labels of *all* splits, so no
        valid/test triple is lost for an entity unseen in training. With them the KG is closed-world: a
        label outside them is an error naming the source file and line.
        """
        columns = {split: _columns(triples) for split, triples in splits.items()}
        return cls._from_columns(
            columns,
            entities=entities,
            relations=relations,
            entity_texts=entity_texts,
            relation_texts=relation_texts,
            name=name,
            sources=sources,
        )

    @classmethod
    def _from_columns(
        cls,
        columns: Mapping[str, tuple[list[str], list[str], list[str]]],
        *,
        entities: Vocabulary | Sequence[str] | None,
        relations: Vocabulary | Sequence[str] | None,
        entity_texts: Mapping[str, str] | None,
        relation_texts: Mapping[str, str] | None,
        name: str,
        sources: Mapping[str, str | os.PathLike] | None,
    ) -> "KnowledgeGraph":
        if entities is None:
            labels: set[str] = set()
            for heads, _, tails in columns.values():
                labels.update(heads)
                labels.update(tails)
            entities = Vocabulary(sorted(labels), kind="entity")
        elif not isinstance(entities, Vocabulary):
            entities = Vocabulary(entities, kind="entity")
        if relations is None:
            labels = set()
            for _, rels, _ in columns.values():
                labels.update(rels)
            relations = Vocabulary(sorted(labels), kind="relation")
        elif not isinstance(relations, Vocabulary):
            relations = Vocabulary(relations, kind="relation")
        tensors = {
            split: _map_columns(cols, entities, relations, (sources or {}).get(split, f"<{split}>"))
            for split, cols in columns.items()
        }
        return cls(
            entities=entities,
            relations=relations,
            splits=tensors,
            entity_texts=_restrict(entity_texts, entities),
            relation_texts=_restrict(relation_texts, relations),
            name=name,
        )

    @classmethod
    def from_files(
        cls,
        paths: Mapping[str, str | os.PathLike],
        *,
        entities: str | os.PathLike | None = None,
        relations: str | os.PathLike | None = None,
        entity_texts: str | os.PathLike | None = None,
        relation_texts: str | os.PathLike | None = None,
        name: str = "kg",
    ) -> "KnowledgeGraph":
        """Read split TSV files (``{"train": path, ...}``) and the optional list/text files."""
        columns = {split: read_triple_columns(path) for split, path in paths.items()}
        return cls._from_columns(
            columns,
            entities=None if entities is None else Vocabulary.load(entities, kind="entity"),
            relations=None if relations is None else Vocabulary.load(relations, kind="relation"),
            entity_texts=None if entity_texts is None else read_text_map(entity_texts, kind="entity"),
            relation_texts=None if relation_texts is None else read_text_map(relation_texts, kind="relation"),
            name=name,
            sources=paths,
        )

    # ------------------------------------------------------------------ access
    @property
    def num_entities(self) -> int:
        """Number of entities."""
        return len(self.entities)

    @property
    def num_relations(self) -> int:
        """Number of relations."""
        return len(self.relations)

    @property
    def train(self) -> torch.Tensor:
        """Training triples as ids."""
        return self.splits["train"]

    @property
    def valid(self) -> torch.Tensor:
        """Validation triples as ids."""
        return self.splits["valid"]

    @property
    def test(self) -> torch.Tensor:
        """Test triples as ids."""
        return self.splits["test"]

    def all_triples(self) -> torch.Tensor:
        """All splits concatenated (the filter set of filtered ranking)."""
        return torch.cat([ids for ids in self.splits.values()], dim=0)

    def triples(self, split: str) -> list[Triple]:
        """The labelled triples of one split."""
        ent, rel = self.entities.labels, self.relations.labels
        return [Triple(ent[h], rel[r], ent[t]) for h, r, t in self.splits[split].tolist()]

    def entity_text(self, label: str) -> str:
        """The entity's text, or its label when it has none."""
        return (self.entity_texts or {}).get(label, label)

    def relation_text(self, label: str) -> str:
        """The relation's text, or its label when it has none."""
        return (self.relation_texts or {}).get(label, label)

    def stats(self) -> dict[str, int]:
        """Counts: entities, relations and triples per split."""
        out = {"entities": self.num_entities, "relations": self.num_relations}
        out.update({split: int(ids.shape[0]) for split, ids in self.splits.items()})
        return out

    def deduplicated(self) -> "KnowledgeGraph":
        """A copy with repeated triples removed from each split (first occurrence kept, order kept)."""
        splits = {}
        for split, ids in self.splits.items():
            seen: set[tuple[int, int, int]] = set()
            keep = [i for i, row in enumerate(map(tuple, ids.tolist())) if not (row in seen or seen.add(row))]
            splits[split] = ids[torch.tensor(keep, dtype=torch.long)] if ids.numel() else ids
        return KnowledgeGraph(self.entities, self.relations, splits, self.entity_texts, self.relation_texts, self.name)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the KG as a folder of plain files that :meth:`load` reads back exactly."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.entities.save(directory / "entities.txt")
        self.relations.save(directory / "relations.txt")
        for split in self.splits:
            write_triples(directory / f"{split}.tsv", self.triples(split))
        if self.entity_texts:
            write_text_map(directory / "entity2text.txt", self.entity_texts)
        if self.relation_texts:
            write_text_map(directory / "relation2text.txt", self.relation_texts)
        (directory / "kg.json").write_text(json.dumps({"name": self.name, "splits": list(self.splits)}) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "KnowledgeGraph":
        """Read a folder written by :meth:`save`."""
        directory = Path(directory)
        meta_path = directory / "kg.json"
        meta = read_json_object(meta_path, written_by="KnowledgeGraph.save")
        splits = meta.get("splits")
        if not (isinstance(splits, list) and all(isinstance(split, str) for split in splits)):
            raise KGDataError('expected a JSON object {"name": ..., "splits": [split names]}', path=meta_path)
        optional = {name: directory / name for name in ("entity2text.txt", "relation2text.txt")}
        return cls.from_files(
            {split: directory / f"{split}.tsv" for split in meta["splits"]},
            entities=directory / "entities.txt",
            relations=directory / "relations.txt",
            entity_texts=optional["entity2text.txt"] if optional["entity2text.txt"].exists() else None,
            relation_texts=optional["relation2text.txt"] if optional["relation2text.txt"].exists() else None,
            name=meta.get("name", directory.name),
        )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={int(t.shape[0])}" for s, t in self.splits.items())
        return f"KnowledgeGraph({self.name!r}, entities={self.num_entities}, relations={self.num_relations}, {sizes})"


def _restrict(texts: Mapping[str, str] | None, vocab: Vocabulary) -> dict[str, str] | None:
    # text files may cover a superset (FB15k-237's covers all of FB15k): keep the vocabulary's labels
    if texts is None:
        return None
    return {label: texts[label] for label in vocab.labels if label in texts}


def _columns(triples: Iterable[Sequence[str]]) -> tuple[list[str], list[str], list[str]]:
    heads, rels, tails = [], [], []
    for number, triple in enumerate(triples, start=1):
        if len(triple) != 3:
            raise KGDataError(f"expected a (head, relation, tail) triple, got {triple!r}", line=number)
        heads.append(triple[0])
        rels.append(triple[1])
        tails.append(triple[2])
    return heads, rels, tails


def _map_columns(columns, entities: Vocabulary, relations: Vocabulary, source) -> torch.Tensor:
    heads, rels, tails = columns
    ent, rel = entities._index.__getitem__, relations._index.__getitem__
    try:
        ids = [list(map(ent, heads)), list(map(rel, rels)), list(map(ent, tails))]
    except KeyError:
        _raise_unknown(columns, entities, relations, source)
    return torch.tensor(ids, dtype=torch.long).t().contiguous().view(-1, 3)


def _raise_unknown(columns, entities: Vocabulary, relations: Vocabulary, source) -> None:
    for number, row in enumerate(zip(*columns), start=1):
        for value, fname in zip(row, TRIPLE_FIELDS):
            vocab = relations if fname == "relation" else entities
            if value not in vocab:
                raise KGDataError(
                    f"{vocab.kind} {value!r} is not in the {vocab.kind} vocabulary (this split must be closed-world)",
                    path=source,
                    line=number,
                    field=fname,
                )
    raise AssertionError("unreachable: a lookup failed but every label is known")
