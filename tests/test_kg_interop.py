"""Interop with PyKEEN (ids kept both ways), Hugging Face ``datasets`` and networkx."""

from __future__ import annotations

import pytest
import torch

from kg_data import (
    KnowledgeGraph,
    from_pykeen,
    k_hop_neighbourhood,
    load_dataset,
    relation_categories,
    to_hf_dataset,
    to_networkx,
    to_pykeen,
)
from kg_data.graph import RELATION_CATEGORIES


@pytest.fixture(scope="module")
def umls() -> KnowledgeGraph:
    return load_dataset("umls")


@pytest.fixture
def open_world_kg() -> KnowledgeGraph:
    """Entities 'e' and relation 'hates' occur only outside train; ids are in an unsorted given order."""
    return KnowledgeGraph.from_labeled(
        {
            "train": [("a", "likes", "b"), ("b", "likes", "c"), ("a", "knows", "c")],
            "valid": [("c", "likes", "d")],
            "test": [("e", "hates", "a")],
        },
        entities=["e", "d", "c", "b", "a"],
        relations=["likes", "knows", "hates"],
        name="toy",
    )


# ------------------------------------------------------------------------------------------ PyKEEN
def _assert_same_ids(kg: KnowledgeGraph, back: KnowledgeGraph) -> None:
    assert back.entities == kg.entities and back.relations == kg.relations
    for split in kg.splits:
        assert torch.equal(back.splits[split], kg.splits[split])


@pytest.mark.parametrize("kg_name", ["umls", "open_world_kg"])
def test_to_pykeen_and_back_keeps_ids(request, kg_name):
    kg = request.getfixturevalue(kg_name)
    factories = {split: to_pykeen(kg, split) for split in kg.splits}
    for split, factory in factories.items():
        assert factory.entity_to_id == kg.entities.to_dict()
        assert factory.relation_to_id == kg.relations.to_dict()
        assert torch.equal(factory.mapped_triples.to(torch.long), kg.splits[split])
        assert factory.num_entities == kg.num_entities and factory.num_relations == kg.num_relations
    back = from_pykeen(factories, name=kg.name)
    _assert_same_ids(kg, back)
    assert back.name == kg.name
    # labelled triples agree too
    labelled = [tuple(row) for row in factories["train"].triples.tolist()]
    assert labelled == [tuple(t) for t in kg.triples("train")]


def test_to_pykeen_does_not_share_memory(umls):
    factory = to_pykeen(umls)
    factory.mapped_triples[0, 0] = 1 + int(factory.mapped_triples[0, 0]) % (umls.num_entities - 1)
    assert not torch.equal(factory.mapped_triples, umls.train)


def test_pykeen_dataset_to_store():
    import pykeen.datasets

    nations = pykeen.datasets.Nations()
    kg = from_pykeen(
        {"train": nations.training, "valid": nations.validation, "test": nations.testing}, name="nations"
    )
    assert kg.stats() == {
        "entities": nations.num_entities,
        "relations": nations.num_relations,
        "train": nations.training.num_triples,
        "valid": nations.validation.num_triples,
        "test": nations.testing.num_triples,
    }
    assert kg.entities.to_dict() == nations.training.entity_to_id
    assert kg.relations.to_dict() == nations.training.relation_to_id
    assert torch.equal(kg.train, nations.training.mapped_triples.to(torch.long))
    assert torch.equal(kg.test, nations.testing.mapped_triples.to(torch.long))
    # and it is the same KG as the catalog's (same ids; PyKEEN stores triples sorted)
    ours = load_dataset("nations")
    assert ours.entities == kg.entities and ours.relations == kg.relations
    for split in ("train", "valid", "test"):
        assert sorted(ours.splits[split].tolist()) == sorted(kg.splits[split].tolist())


def test_from_pykeen_rejects_mixed_mappings(umls, open_world_kg):
    with pytest.raises(ValueError, match="another id mapping"):
        from_pykeen({"train": to_pykeen(umls), "test": to_pykeen(open_world_kg, "test")})


# ------------------------------------------------------------------------------------------ Hugging Face
def test_to_hf_dataset_one_split(open_world_kg):
    ds = to_hf_dataset(open_world_kg, "train")
    assert ds.column_names == ["head", "relation", "tail", "head_id", "relation_id", "tail_id"]
    assert ds.num_rows == 3
    assert ds[0] == {"head": "a", "relation": "likes", "tail": "b", "head_id": 4, "relation_id": 0, "tail_id": 3}
    assert ds["head"] == ["a", "b", "a"] and ds["relation"] == ["likes", "likes", "knows"]
    assert ds["tail_id"] == [3, 2, 2]


def test_to_hf_dataset_all_splits(umls):
    dd = to_hf_dataset(umls)
    assert list(dd) == ["train", "valid", "test"]
    for split in dd:
        ds = dd[split]
        assert ds.num_rows == umls.splits[split].shape[0]
        ids = torch.tensor([ds["head_id"], ds["relation_id"], ds["tail_id"]]).t()
        assert torch.equal(ids, umls.splits[split])
        assert list(zip(ds["head"], ds["relation"], ds["tail"])) == [tuple(t) for t in umls.triples(split)]


# ------------------------------------------------------------------------------------------ networkx
def test_to_networkx_has_one_edge_per_triple(umls):
    graph = to_networkx(umls)
    assert graph.number_of_nodes() == umls.num_entities
    assert graph.number_of_edges() == umls.train.shape[0] == 5_216
    everything = to_networkx(umls, splits=("train", "valid", "test"))
    assert everything.number_of_edges() == sum(int(ids.shape[0]) for ids in umls.splits.values())


def test_to_networkx_edges_carry_relation_and_split(open_world_kg):
    graph = to_networkx(open_world_kg, splits=("train", "test"))
    assert graph.name == "toy"
    assert set(graph.nodes) == {"a", "b", "c", "d", "e"}  # d appears only in valid: still a node
    assert graph.number_of_edges() == 4
    assert graph.has_edge("a", "b", key="likes") and not graph.has_edge("b", "a")
    assert graph.edges["e", "a", "hates"] == {"relation": "hates", "split": "test"}
    assert graph.edges["a", "c", "knows"]["split"] == "train"


@pytest.fixture
def chain() -> KnowledgeGraph:
    # e -> a -> b -> c -> d, plus an isolated x (only in test)
    return KnowledgeGraph.from_labeled(
        {
            "train": [("e", "r", "a"), ("a", "r", "b"), ("b", "s", "c"), ("c", "r", "d")],
            "test": [("x", "r", "x")],
        }
    )


def test_k_hop_neighbourhood(chain):
    graph = to_networkx(chain)
    assert k_hop_neighbourhood(graph, "b", 0) == set()
    assert k_hop_neighbourhood(graph, "b", 1) == {"a", "c"}
    assert k_hop_neighbourhood(graph, "b", 2) == {"a", "c", "d", "e"}
    assert k_hop_neighbourhood(graph, "b", 2, directed=True) == {"c", "d"}
    assert k_hop_neighbourhood(graph, "d", 1, directed=True) == set()
    assert k_hop_neighbourhood(graph, "x", 3) == set()
    with pytest.raises(ValueError):
        k_hop_neighbourhood(graph, "b", -1)
    with pytest.raises(KeyError):
        k_hop_neighbourhood(graph, "nobody", 1)


def test_relation_categories():
    train = [
        # 1-1: each head one tail, each tail one head (a repeated triple changes nothing)
        ("a", "capital_of", "x"), ("b", "capital_of", "y"), ("c", "capital_of", "z"), ("a", "capital_of", "x"),
        # 1-N: one head, many tails
        ("p", "has_part", "q1"), ("p", "has_part", "q2"), ("p", "has_part", "q3"),
        ("p2", "has_part", "q4"), ("p2", "has_part", "q5"), ("p2", "has_part", "q6"),
        # N-1: many heads, one tail
        ("h1", "born_in", "t"), ("h2", "born_in", "t"), ("h3", "born_in", "t"),
        # N-N: complete bipartite 2 x 2
        ("u1", "knows", "v1"), ("u1", "knows", "v2"), ("u2", "knows", "v1"), ("u2", "knows", "v2"),
    ]
    kg = KnowledgeGraph.from_labeled({"train": train, "test": [("a", "only_in_test", "b")]})
    categories = relation_categories(kg)
    assert categories == {"capital_of": "1-1", "has_part": "1-N", "born_in": "N-1", "knows": "N-N"}
    assert set(categories.values()) == set(RELATION_CATEGORIES)
    assert relation_categories(kg, "test") == {"only_in_test": "1-1"}
    # with a higher threshold the 2 x 2 relation counts as 1-1, the 3-fan-outs stay as they are
    assert relation_categories(kg, threshold=2.5)["knows"] == "1-1"
    assert relation_categories(kg, threshold=2.5)["has_part"] == "1-N"
