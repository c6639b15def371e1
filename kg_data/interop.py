"""Conversions to and from PyKEEN and Hugging Face ``datasets`` with the ids kept identical."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import torch

from .store import KnowledgeGraph
from .vocab import Vocabulary

if TYPE_CHECKING:  # heavy imports only where used
    import datasets
    from pykeen.triples import CoreTriplesFactory, TriplesFactory

__all__ = ["to_pykeen", "from_pykeen", "to_hf_dataset"]


def to_pykeen(kg: KnowledgeGraph, split: str = "train") -> "TriplesFactory":
    """A PyKEEN ``TriplesFactory`` of one split sharing this KG's entity and relation ids."""
    from pykeen.triples import TriplesFactory

    return TriplesFactory(
        mapped_triples=kg.splits[split].clone(),
        entity_to_id=kg.entities.to_dict(),
        relation_to_id=kg.relations.to_dict(),
    )


def from_pykeen(
    factories: Mapping[str, "CoreTriplesFactory"], *, name: str = "kg"
) -> KnowledgeGraph:
    """A KG from PyKEEN factories per split (``{"train": tf, ...}``); they must share one id mapping."""
    first = next(iter(factories.values()))
    entities = Vocabulary.from_mapping(first.entity_to_id, kind="entity")
    relations = Vocabulary.from_mapping(first.relation_to_id, kind="relation")
    for split, factory in factories.items():
        if factory.entity_to_id != first.entity_to_id or factory.relation_to_id != first.relation_to_id:
            raise ValueError(f"split {split!r} uses another id mapping than the first factory")
    splits = {split: factory.mapped_triples.to(torch.long).clone() for split, factory in factories.items()}
    return KnowledgeGraph(entities=entities, relations=relations, splits=splits, name=name)


def to_hf_dataset(kg: KnowledgeGraph, split: str | None = None) -> "datasets.Dataset | datasets.DatasetDict":
    """A Hugging Face ``Dataset`` (one split) or ``DatasetDict`` (all) with labels and ids per triple."""
    import datasets

    def one(name: str) -> datasets.Dataset:
        ids = kg.splits[name]
        h, r, t = ids.unbind(dim=1)
        ent, rel = kg.entities.labels, kg.relations.labels
        return datasets.Dataset.from_dict(
            {
                "head": [ent[i] for i in h.tolist()],
                "relation": [rel[i] for i in r.tolist()],
                "tail": [ent[i] for i in t.tolist()],
                "head_id": h.tolist(),
                "relation_id": r.tolist(),
                "tail_id": t.tolist(),
            }
        )

    if split is not None:
        return one(split)
    return datasets.DatasetDict({name: one(name) for name in kg.splits})
