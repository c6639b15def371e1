"""Vocabulary and the id-mapped KnowledgeGraph store: ids, closed-world checks, duplicates, persistence."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kg_data import KGDataError, KnowledgeGraph, Triple, Vocabulary, write_labels, write_text_map, write_triples

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

LABEL_CHAR = st.one_of(
    st.sampled_from("ab/_.0 "),
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\r\n"),
)
LABELS = st.text(LABEL_CHAR, min_size=1, max_size=5).filter(lambda s: not s.startswith("\ufeff"))
SMALL_LABELS = st.sampled_from(["a", "b", "c", "/m/0x", "_hypernym", "é", "d e"])
TEXTS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), min_size=1, max_size=8)
TOKENS = [b"a", b"b", b"c", b"r", b"\t", b"\t", b"\n", b"\n", b"\r\n", b"\r", b"\xff", b"\xc3", b"\xef\xbb\xbf", b" "]
ANY_BYTES = st.one_of(st.binary(max_size=120), st.lists(st.sampled_from(TOKENS), max_size=30).map(b"".join))


# ------------------------------------------------------------------------------------------ Vocabulary
def test_vocabulary_ids_are_sorted_and_deterministic():
    labels = ["b", "_c", "a", "B", "b", "/m/01"]
    shuffled = labels[:]
    random.Random(0).shuffle(shuffled)
    vocab = Vocabulary.from_labels(labels, kind="entity")
    assert vocab == Vocabulary.from_labels(shuffled, kind="entity")
    assert vocab.labels == ("/m/01", "B", "_c", "a", "b")
    assert vocab.to_dict() == {"/m/01": 0, "B": 1, "_c": 2, "a": 3, "b": 4}
    assert [vocab.id(x) for x in vocab] == list(range(5))
    assert vocab.ids(["a", "b"]) == [3, 4]
    assert vocab.label(2) == "_c" and vocab["_c"] == 2 and "a" in vocab and "z" not in vocab
    assert len(vocab) == 5 and hash(vocab) == hash(Vocabulary.from_labels(shuffled))


@PROPERTY
@given(st.lists(LABELS, max_size=15), st.randoms(use_true_random=False))
def test_vocabulary_from_labels_ignores_order_and_repeats(labels, rnd):
    shuffled = labels + labels[: len(labels) // 2]
    rnd.shuffle(shuffled)
    a, b = Vocabulary.from_labels(labels), Vocabulary.from_labels(shuffled)
    assert a == b
    assert list(a.labels) == sorted(set(labels))
    assert a.to_dict() == {label: i for i, label in enumerate(sorted(set(labels)))}


@PROPERTY
@given(st.lists(LABELS, unique=True, max_size=15))
def test_vocabulary_save_load_round_trip(labels):
    vocab = Vocabulary(labels, kind="relation")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "relations.txt"
        vocab.save(path)
        loaded = Vocabulary.load(path, kind="relation")
    assert loaded == vocab and loaded.to_dict() == vocab.to_dict() and loaded.kind == "relation"
    assert Vocabulary.from_mapping(vocab.to_dict()) == vocab


def test_vocabulary_errors():
    with pytest.raises(KGDataError, match="appears twice") as info:
        Vocabulary(["a", "b", "a"], kind="entity")
    assert info.value.field == "entity"
    vocab = Vocabulary(["a", "b"], kind="entity")
    with pytest.raises(KGDataError, match="unknown entity 'z'") as info:
        vocab.id("z")
    assert info.value.field == "entity"
    with pytest.raises(KGDataError, match="unknown entity 'z'"):
        vocab.ids(["a", "z"])
    with pytest.raises(KGDataError, match="ids must be exactly"):
        Vocabulary.from_mapping({"a": 0, "b": 2})
    with pytest.raises(KGDataError, match="ids must be exactly"):
        Vocabulary.from_mapping({"a": 0, "b": 0})


# ------------------------------------------------------------------------------------------ building
def _files(tmp: Path, splits: dict[str, list[tuple[str, str, str]]], newline: str = "\n") -> dict[str, Path]:
    paths = {}
    for split, triples in splits.items():
        paths[split] = tmp / f"{split}.tsv"
        write_triples(paths[split], triples, newline=newline)
    return paths


TOY = {
    "train": [("a", "likes", "b"), ("b", "likes", "c"), ("a", "knows", "c")],
    "valid": [("c", "likes", "d")],  # d is seen only outside train
    "test": [("e", "hates", "a")],  # so are e and hates
}


def test_from_files_open_world_keeps_every_split(tmp_path):
    kg = KnowledgeGraph.from_files(_files(tmp_path, TOY), name="toy")
    assert kg.entities.labels == ("a", "b", "c", "d", "e")
    assert kg.relations.labels == ("hates", "knows", "likes")
    assert kg.stats() == {"entities": 5, "relations": 3, "train": 3, "valid": 1, "test": 1}
    for split, triples in TOY.items():
        assert kg.triples(split) == [Triple(*t) for t in triples]
        assert kg.splits[split].dtype == torch.long and kg.splits[split].shape == (len(triples), 3)
    assert kg.train.tolist() == [[0, 2, 1], [1, 2, 2], [0, 1, 2]]
    assert kg.test.tolist() == [[4, 0, 0]]
    assert kg.all_triples().shape == (5, 3)
    assert kg.duplicates == {"train": 0, "valid": 0, "test": 0}
    assert kg.entity_texts is None and kg.entity_text("a") == "a" and kg.relation_text("likes") == "likes"
    assert "toy" in repr(kg)


def test_from_labeled_equals_from_files(tmp_path):
    a = KnowledgeGraph.from_files(_files(tmp_path, TOY))
    b = KnowledgeGraph.from_labeled({s: [Triple(*t) for t in ts] for s, ts in TOY.items()})
    assert a.entities == b.entities and a.relations == b.relations
    assert all(torch.equal(a.splits[s], b.splits[s]) for s in TOY)


def test_crlf_and_lf_files_give_the_same_kg(tmp_path):
    (tmp_path / "lf").mkdir()
    (tmp_path / "crlf").mkdir()
    a = KnowledgeGraph.from_files(_files(tmp_path / "lf", TOY))
    b = KnowledgeGraph.from_files(_files(tmp_path / "crlf", TOY, newline="\r\n"))
    assert a.entities == b.entities and all(torch.equal(a.splits[s], b.splits[s]) for s in TOY)


def test_closed_world_unknown_entity_names_file_line_field(tmp_path):
    paths = _files(tmp_path, TOY)
    write_labels(tmp_path / "entities.txt", ["a", "b", "c", "e"])  # no d
    write_labels(tmp_path / "relations.txt", ["hates", "knows", "likes"])
    write_triples(paths["valid"], [("a", "likes", "c"), ("c", "likes", "d")])
    with pytest.raises(KGDataError) as info:
        KnowledgeGraph.from_files(paths, entities=tmp_path / "entities.txt", relations=tmp_path / "relations.txt")
    err = info.value
    assert (err.path, err.line, err.field) == (str(paths["valid"]), 2, "tail")
    assert f"{paths['valid']}:2: field 'tail': entity 'd' is not in the entity vocabulary" in str(err)


def test_closed_world_unknown_relation_and_head(tmp_path):
    paths = _files(tmp_path, TOY)
    write_labels(tmp_path / "entities.txt", ["a", "b", "c", "d", "e"])
    write_labels(tmp_path / "relations.txt", ["knows", "likes"])  # no hates
    with pytest.raises(KGDataError) as info:
        KnowledgeGraph.from_files(paths, entities=tmp_path / "entities.txt", relations=tmp_path / "relations.txt")
    assert (info.value.path, info.value.line, info.value.field) == (str(paths["test"]), 1, "relation")
    write_labels(tmp_path / "entities.txt", ["b", "c", "d", "e"])  # no a
    write_triples(paths["train"], [("b", "likes", "c"), ("c", "likes", "b"), ("a", "likes", "b")])
    with pytest.raises(KGDataError) as info:
        KnowledgeGraph.from_files({"train": paths["train"]}, entities=tmp_path / "entities.txt")
    assert (info.value.path, info.value.line, info.value.field) == (str(paths["train"]), 3, "head")


def test_closed_world_with_texts(tmp_path):
    paths = _files(tmp_path, TOY)
    write_labels(tmp_path / "entities.txt", ["a", "b", "c", "d", "e", "unused"])
    write_labels(tmp_path / "relations.txt", ["likes", "knows", "hates"])  # file order gives the ids
    write_text_map(tmp_path / "e2t.txt", {"a": "Alice", "zz": "not in the KG", "unused": "lonely"})
    write_text_map(tmp_path / "r2t.txt", {"likes": "is fond of"})
    kg = KnowledgeGraph.from_files(
        paths,
        entities=tmp_path / "entities.txt",
        relations=tmp_path / "relations.txt",
        entity_texts=tmp_path / "e2t.txt",
        relation_texts=tmp_path / "r2t.txt",
    )
    assert kg.num_entities == 6 and kg.relations.labels == ("likes", "knows", "hates")
    assert kg.entity_texts == {"a": "Alice", "unused": "lonely"}  # restricted to the vocabulary
    assert kg.entity_text("a") == "Alice" and kg.entity_text("b") == "b"
    assert kg.relation_text("likes") == "is fond of" and kg.relation_text("knows") == "knows"


def test_duplicates_are_kept_counted_and_removable(tmp_path):
    train = [("a", "r", "b"), ("b", "r", "c"), ("a", "r", "b"), ("c", "r", "a"), ("a", "r", "b"), ("b", "r", "c")]
    paths = _files(tmp_path, {"train": train, "test": [("a", "r", "c")]})
    kg = KnowledgeGraph.from_files(paths)
    assert kg.stats()["train"] == 6
    assert kg.duplicates == {"train": 3, "test": 0}
    dedup = kg.deduplicated()
    assert dedup.triples("train") == [Triple("a", "r", "b"), Triple("b", "r", "c"), Triple("c", "r", "a")]
    assert dedup.duplicates == {"train": 0, "test": 0}
    assert dedup.entities == kg.entities and torch.equal(dedup.test, kg.test)


def test_invalid_tensors_are_rejected():
    ents, rels = Vocabulary(["a", "b"]), Vocabulary(["r"])
    with pytest.raises(KGDataError, match="must be an"):
        KnowledgeGraph(ents, rels, {"train": torch.zeros(2, 2, dtype=torch.long)})
    with pytest.raises(KGDataError, match="must be an"):
        KnowledgeGraph(ents, rels, {"train": torch.zeros(2, 3, dtype=torch.int32)})
    with pytest.raises(KGDataError, match="relation id out of range") as info:
        KnowledgeGraph(ents, rels, {"train": torch.tensor([[0, 1, 1]])})
    assert info.value.field == "relation"
    with pytest.raises(KGDataError, match="tail id out of range"):
        KnowledgeGraph(ents, rels, {"train": torch.tensor([[0, 0, 2]])})
    empty = KnowledgeGraph(ents, rels, {"train": torch.zeros(0, 3, dtype=torch.long)})
    assert empty.stats() == {"entities": 2, "relations": 1, "train": 0}


# ------------------------------------------------------------------------------------------ robustness
@PROPERTY
@given(ANY_BYTES, ANY_BYTES, st.one_of(st.none(), ANY_BYTES), st.one_of(st.none(), ANY_BYTES))
def test_from_files_raises_only_kg_errors(train, valid, entities, entity_texts):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {"train.tsv": train, "valid.tsv": valid, "entities.txt": entities, "e2t.txt": entity_texts}
        for name, data in files.items():
            if data is not None:
                (tmp / name).write_bytes(data)
        try:
            kg = KnowledgeGraph.from_files(
                {"train": tmp / "train.tsv", "valid": tmp / "valid.tsv"},
                entities=None if entities is None else tmp / "entities.txt",
                entity_texts=None if entity_texts is None else tmp / "e2t.txt",
            )
        except KGDataError as err:
            assert err.path is not None and err.path.startswith(str(tmp))
        else:
            assert set(kg.splits) == {"train", "valid"}


@st.composite
def knowledge_graphs(draw) -> KnowledgeGraph:
    entities = draw(st.lists(LABELS, unique=True, min_size=1, max_size=8))
    relations = draw(st.lists(LABELS, unique=True, min_size=1, max_size=4))
    triple = st.tuples(st.sampled_from(entities), st.sampled_from(relations), st.sampled_from(entities))
    splits = {s: draw(st.lists(triple, max_size=10)) for s in draw(st.sampled_from([("train",), ("train", "valid", "test")]))}
    ent_texts = draw(st.one_of(st.none(), st.dictionaries(st.sampled_from(entities), TEXTS, min_size=1)))
    rel_texts = draw(st.one_of(st.none(), st.dictionaries(st.sampled_from(relations), TEXTS, min_size=1)))
    # entity and relation lists in a random (unsorted) order: the store must keep exactly these ids
    return KnowledgeGraph.from_labeled(
        splits,
        entities=draw(st.permutations(entities)),
        relations=draw(st.permutations(relations)),
        entity_texts=ent_texts,
        relation_texts=rel_texts,
        name=draw(st.sampled_from(["kg", "tiny kg", "é"])),
    )


def _assert_same_kg(a: KnowledgeGraph, b: KnowledgeGraph) -> None:
    assert a.name == b.name
    assert a.entities == b.entities and a.relations == b.relations
    assert a.entities.to_dict() == b.entities.to_dict() and a.relations.to_dict() == b.relations.to_dict()
    assert list(a.splits) == list(b.splits)
    for split in a.splits:
        assert torch.equal(a.splits[split], b.splits[split])
        assert b.splits[split].dtype == torch.long
    assert a.entity_texts == b.entity_texts and a.relation_texts == b.relation_texts
    assert a.duplicates == b.duplicates


@PROPERTY
@given(knowledge_graphs())
def test_save_load_round_trip(kg):
    with tempfile.TemporaryDirectory() as tmp:
        loaded = KnowledgeGraph.load(kg.save(Path(tmp) / "kg"))
    _assert_same_kg(kg, loaded)


def test_save_load_round_trip_on_umls(tmp_path):
    from kg_data import load_dataset

    kg = load_dataset("umls")
    loaded = KnowledgeGraph.load(kg.save(tmp_path / "umls"))
    _assert_same_kg(kg, loaded)
    assert sorted(p.name for p in (tmp_path / "umls").iterdir()) == [
        "entities.txt", "entity2text.txt", "kg.json", "relation2text.txt", "relations.txt",
        "test.tsv", "train.tsv", "valid.tsv",
    ]


@pytest.mark.parametrize(
    "meta", [None, b"", b"not json", b"\xff\xfe", b"[]", b"{}", b'{"splits": 3}', b'{"splits": [1]}']
)
def test_load_reports_bad_folders_as_kg_errors(tmp_path, meta):
    KnowledgeGraph.from_labeled({"train": [("a", "r", "b")]}).save(tmp_path)
    if meta is None:
        (tmp_path / "kg.json").unlink()
    else:
        (tmp_path / "kg.json").write_bytes(meta)
    with pytest.raises(KGDataError) as info:
        KnowledgeGraph.load(tmp_path)
    assert info.value.path == str(tmp_path / "kg.json")


def test_load_reports_a_missing_split_file(tmp_path):
    KnowledgeGraph.from_labeled({"train": [("a", "r", "b")], "test": [("b", "r", "a")]}).save(tmp_path)
    (tmp_path / "test.tsv").unlink()
    with pytest.raises(KGDataError, match="file not found") as info:
        KnowledgeGraph.load(tmp_path)
    assert info.value.path == str(tmp_path / "test.tsv")
    assert json.loads((tmp_path / "kg.json").read_text())["splits"] == ["train", "test"]
