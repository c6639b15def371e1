"""Graph views of a KG (networkx) and the structural helpers the edit sets draw locality from."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Iterable

import torch

from .store import KnowledgeGraph

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["to_networkx", "k_hop_neighbourhood", "relation_categories", "RELATION_CATEGORIES"]

RELATION_CATEGORIES = ("1-1", "1-N", "N-1", "N-N")


def to_networkx(kg: KnowledgeGraph, splits: Iterable[str] = ("train",)) -> "nx.MultiDiGraph":
    """A ``MultiDiGraph`` over entity labels; each triple is an edge keyed by its relation label."""
    import networkx as nx

    graph = nx.MultiDiGraph(name=kg.name)
    graph.add_nodes_from(kg.entities.labels)
    ent, rel = kg.entities.labels, kg.relations.labels
    for split in splits:
        graph.add_edges_from(
            (ent[h], ent[t], rel[r], {"relation": rel[r], "split": split})
            for h, r, t in kg.splits[split].tolist()
        )
    return graph


def k_hop_neighbourhood(graph: "nx.MultiDiGraph", entity: str, k: int, *, directed: bool = False) -> set[str]:
    """Entities within ``k`` hops of ``entity`` (edges followed both ways unless ``directed``), itself excluded."""
    import networkx as nx

    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if entity not in graph:
        raise KeyError(f"entity {entity!r} is not in the graph")
    view = graph if directed else graph.to_undirected(as_view=True)
    reached = nx.single_source_shortest_path_length(view, entity, cutoff=k)
    reached.pop(entity, None)
    return set(reached)


def relation_categories(kg: KnowledgeGraph, split: str = "train", threshold: float = 1.5) -> dict[str, str]:
    """Each relation's category 1-1 / 1-N / N-1 / N-N (Bordes et al. 2013: mean tails per head and
    heads per tail against ``threshold``)."""
    ids = torch.unique(kg.splits[split], dim=0)
    out: dict[str, str] = {}
    for r in range(kg.num_relations):
        rows = ids[ids[:, 1] == r]
        if rows.numel() == 0:
            continue
        heads = Counter(rows[:, 0].tolist())
        tails = Counter(rows[:, 2].tolist())
        tails_per_head = len(rows) / len(heads)
        heads_per_tail = len(rows) / len(tails)
        many_tails, many_heads = tails_per_head >= threshold, heads_per_tail >= threshold
        out[kg.relations.label(r)] = (
            ("N" if many_heads else "1") + "-" + ("N" if many_tails else "1")
        )
    return out
