"""The dataset catalog on the real files: WN18RR and FB15k-237 (../shared/data/kg), and the PyKEEN-shipped
UMLS, Kinships and Nations compared with PyKEEN's own loaders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kg_data import DATA_ENV, KGDataError, Triple, dataset_names, load_dataset, read_labels, read_triples
from kg_data.catalog import resolve_data_dir
from kg_data.formats import detect_newline

# ------------------------------------------------------------------------------------------ WN18RR


def test_wn18rr_counts(wn18rr_kg):
    assert wn18rr_kg.name == "wn18rr"
    assert wn18rr_kg.stats() == {"entities": 40_943, "relations": 11, "train": 86_835, "valid": 3_034, "test": 3_134}
    assert wn18rr_kg.duplicates == {"train": 0, "valid": 0, "test": 0}


def test_wn18rr_loses_no_triple(wn18rr_kg, wn18rr_dir):
    """Every line of every split is in the store, in file order (ids follow entities.txt / relations.txt)."""
    assert wn18rr_kg.entities.labels == tuple(read_labels(wn18rr_dir / "entities.txt"))
    assert wn18rr_kg.relations.labels == tuple(read_labels(wn18rr_dir / "relations.txt"))
    for split, name in (("train", "train.tsv"), ("valid", "dev.tsv"), ("test", "test.tsv")):
        assert wn18rr_kg.triples(split) == read_triples(wn18rr_dir / name)
    assert len(wn18rr_kg.triples("test")) == 3_134


def test_pykeen_from_path_drops_wn18rr_test_triples_that_we_keep(wn18rr_kg, wn18rr_dir):
    """PyKEEN maps test with train's entity_to_id and silently drops 210 of 3,134 triples."""
    from pykeen.triples import TriplesFactory

    train = TriplesFactory.from_path(wn18rr_dir / "train.tsv")
    test = TriplesFactory.from_path(
        wn18rr_dir / "test.tsv", entity_to_id=train.entity_to_id, relation_to_id=train.relation_to_id
    )
    assert test.num_triples == 3_134 - 210
    assert wn18rr_kg.test.shape[0] == 3_134
    train_entities = set(wn18rr_kg.train[:, [0, 2]].flatten().tolist())
    unseen = [row for row in wn18rr_kg.test.tolist() if row[0] not in train_entities or row[2] not in train_entities]
    assert len(unseen) == 210


def test_wn18rr_texts_are_lemma_and_gloss(wn18rr_kg):
    assert len(wn18rr_kg.entity_texts) == 40_943
    assert wn18rr_kg.entity_text("14854262") == "stool, solid excretory product evacuated from the bowels"
    assert wn18rr_kg.entity_text("03455488") == "tombstone, a stone that is used to mark a grave"
    assert all(", " in text for text in wn18rr_kg.entity_texts.values())
    assert wn18rr_kg.relation_text("_hypernym") == "hypernym"
    assert wn18rr_kg.relation_text("_member_of_domain_usage") == "member of domain usage"
    assert len(wn18rr_kg.relation_texts) == 11


# ------------------------------------------------------------------------------------------ FB15k-237


def test_fb15k237_files_are_crlf(fb15k237_dir):
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        assert detect_newline(fb15k237_dir / name) == "\r\n"


def test_fb15k237_counts(fb15k237_kg):
    assert fb15k237_kg.name == "fb15k237"
    assert fb15k237_kg.stats() == {
        "entities": 14_541,
        "relations": 237,
        "train": 272_115,
        "valid": 17_535,
        "test": 20_466,
    }
    assert sum(fb15k237_kg.duplicates.values()) == 0


def test_fb15k237_loses_no_triple(fb15k237_kg, fb15k237_dir):
    assert fb15k237_kg.triples("test") == read_triples(fb15k237_dir / "test.tsv")
    assert fb15k237_kg.triples("valid") == read_triples(fb15k237_dir / "dev.tsv")
    assert fb15k237_kg.entities.labels == tuple(read_labels(fb15k237_dir / "entities.txt"))
    first = fb15k237_kg.triples("train")[0]
    assert first == Triple("/m/027rn", "/location/country/form_of_government", "/m/06cx9")


def test_fb15k237_texts_are_names(fb15k237_kg):
    # entity2text covers all of FB15k (14,951 rows): only the 14,541 entities of the KG are kept
    assert len(fb15k237_kg.entity_texts) == 14_541
    assert fb15k237_kg.entity_text("/m/0c94fn") == "Gary Rydstrom"
    assert fb15k237_kg.entity_text("/m/016ywr") == "Jeremy Irons"
    assert fb15k237_kg.entity_text("/m/06rf7") == "Schleswig-Holstein"
    assert len(fb15k237_kg.relation_texts) == 237
    assert fb15k237_kg.relation_text("/music/artist/origin") == "music artist origin"


# ------------------------------------------------------------------------------------------ PyKEEN's sets

PYKEEN_SETS = [("umls", "UMLS"), ("kinships", "Kinships"), ("nations", "Nations")]


def _rows(ids: torch.Tensor) -> list[tuple[int, int, int]]:
    return sorted(map(tuple, ids.tolist()))


@pytest.mark.parametrize(("name", "cls"), PYKEEN_SETS)
def test_pykeen_sets_match_pykeen(name, cls):
    import pykeen.datasets

    reference = getattr(pykeen.datasets, cls)()
    kg = load_dataset(name)
    assert kg.name == name
    assert kg.stats() == {
        "entities": reference.num_entities,
        "relations": reference.num_relations,
        "train": reference.training.num_triples,
        "valid": reference.validation.num_triples,
        "test": reference.testing.num_triples,
    }
    # same sorted vocabularies, hence the same ids and the same triples (PyKEEN stores them sorted)
    assert kg.entities.to_dict() == reference.training.entity_to_id
    assert kg.relations.to_dict() == reference.training.relation_to_id
    for split, factory in (("train", reference.training), ("valid", reference.validation), ("test", reference.testing)):
        assert _rows(kg.splits[split]) == _rows(factory.mapped_triples)


@pytest.mark.parametrize(("name", "cls"), PYKEEN_SETS)
def test_pykeen_sets_have_readable_labels(name, cls):
    kg = load_dataset(name)
    assert set(kg.entity_texts) == set(kg.entities.labels)
    assert set(kg.relation_texts) == set(kg.relations.labels)
    for label, text in list(kg.entity_texts.items()) + list(kg.relation_texts.items()):
        assert text == label.replace("_", " ").strip()
        assert "_" not in text


def test_umls_readable_label_example():
    kg = load_dataset("umls")
    assert kg.entity_text("acquired_abnormality") == "acquired abnormality"
    assert kg.relation_text("location_of") == "location of"


# ------------------------------------------------------------------------------------------ lookup


def test_dataset_names_and_aliases():
    assert dataset_names() == ["nations", "kinships", "umls", "wn18rr", "fb15k237"]
    assert load_dataset("Nations").stats() == load_dataset("NATIONS").stats()


def test_name_aliases_for_file_datasets(kg_data_dir, wn18rr_dir):
    assert load_dataset("WN18RR", kg_data_dir).stats()["test"] == 3_134
    assert load_dataset("wn-18-rr", wn18rr_dir).stats()["test"] == 3_134  # the dataset folder itself


def test_data_dir_from_environment(monkeypatch, kg_data_dir):
    monkeypatch.setenv(DATA_ENV, str(kg_data_dir))
    assert load_dataset("wn18rr").stats()["valid"] == 3_034


def test_unknown_dataset():
    with pytest.raises(KGDataError, match="unknown dataset 'freebase'; choose one of nations") as info:
        load_dataset("freebase")
    assert info.value.field == "dataset"


def test_no_data_dir(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(KGDataError, match=r"no data directory: pass data_dir \(CLI: --data-dir\) or set \$DELTAKG_DATA"):
        load_dataset("fb15k237")


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(KGDataError, match="no WN18RR dataset here") as info:
        load_dataset("wn18rr", missing)
    assert info.value.path == str(missing)


def test_incomplete_dataset_folder(tmp_path):
    folder = tmp_path / "FB15k237"
    folder.mkdir()
    (folder / "train.tsv").write_text("a\tr\tb\n")
    (folder / "entities.txt").write_text("a\nb\n")
    with pytest.raises(KGDataError, match="FB15k237 is missing dev.tsv, test.tsv, relations.txt") as info:
        resolve_data_dir(tmp_path, "FB15k237")
    assert info.value.path == str(folder)


def test_small_dataset_folder_layout(tmp_path):
    """A hand-made folder in the kg-bert layout loads closed-world with texts."""
    folder = tmp_path / "WN18RR"
    folder.mkdir()
    files = {
        "train.tsv": "a\t_r\tb\nb\t_r\tc\n",
        "dev.tsv": "a\t_r\tc\n",
        "test.tsv": "c\t_r\ta\n",
        "entities.txt": "c\nb\na\n",
        "relations.txt": "_r\n",
        "entity2text.txt": "a\tay, the first\nb\tbee, the second\nc\tsea, the third\nz\tunused\n",
        "relation2text.txt": "_r\tr\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    kg = load_dataset("wn18rr", Path(tmp_path))
    assert kg.entities.labels == ("c", "b", "a")
    assert kg.stats() == {"entities": 3, "relations": 1, "train": 2, "valid": 1, "test": 1}
    assert kg.entity_texts == {"c": "sea, the third", "b": "bee, the second", "a": "ay, the first"}
    (folder / "test.tsv").write_text("c\t_r\ta\nc\t_r\td\n")
    with pytest.raises(KGDataError) as info:
        load_dataset("wn18rr", tmp_path)
    assert (info.value.path, info.value.line, info.value.field) == (str(folder / "test.tsv"), 2, "tail")
