"""Edit cases, stable facts and the deltaKG jsonl record formats (METHODS.md section 2)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kg_data import (
    EditCase,
    EditSet,
    KGDataError,
    StableFact,
    Triple,
    read_edit_cases,
    read_stable_facts,
    write_edit_cases,
    write_stable_facts,
)
from kg_data.edits import MASK

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# ------------------------------------------------------------------------------------------ strategies
ENTITY = st.one_of(
    st.sampled_from(["a", "b", "c", "/m/027rn", "03455488", "é"]),
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=5),
)
RELATION = st.sampled_from(["r", "_hypernym", "/location/country/form_of_government"])
TRIPLES = st.builds(Triple, ENTITY, RELATION, ENTITY)
SIDES = st.sampled_from(["head", "tail"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)


@st.composite
def edit_cases(draw) -> EditCase:
    triple, masked = draw(TRIPLES), draw(SIDES)
    if draw(st.booleans()):  # ADD
        return EditCase(triple, masked)
    wrong = draw(ENTITY.filter(lambda e: e != triple.entity(masked)))
    process = draw(st.one_of(st.none(), JSON_VALUES.filter(lambda v: v is not None)))
    return EditCase(triple, masked, wrong=wrong, process=process)


@st.composite
def stable_facts(draw) -> StableFact:
    process = draw(st.one_of(st.none(), JSON_VALUES.filter(lambda v: v is not None)))
    return StableFact(draw(TRIPLES), draw(SIDES), process=process)


# records that look like ours: right keys, values sometimes right and sometimes not
KEYS = ["ori", "cor", "label", "triples", "head", "process", "triple", "masked"]
FIELD_VALUES = st.one_of(
    JSON_VALUES,
    st.lists(st.sampled_from(["a", "b", "r", ""]), min_size=2, max_size=4),
    st.lists(st.sampled_from(["a", "b", "r"]), min_size=3, max_size=3),
    st.sampled_from(["a", "b", "head", "tail", 0, 1, 2, True, 1.0]),
)
RECORD_LIKE = st.dictionaries(st.sampled_from(KEYS), FIELD_VALUES, max_size=5)
LINE = st.one_of(
    RECORD_LIKE.map(json.dumps),
    JSON_VALUES.map(json.dumps),
    st.sampled_from(["", " ", "{", '{"ori": [1, 2', "[MASK]", "{}", "null", "\"x\"", "9" * 5000, "[" * 3000]),
)
JSONL_BYTES = st.one_of(
    st.lists(LINE, max_size=6).map(lambda lines: "\n".join(lines).encode("utf-8")),
    st.lists(LINE, max_size=4).map(lambda lines: "\r\n".join(lines).encode("utf-8")),
    st.binary(max_size=120),
    st.lists(st.sampled_from([b"{", b"}", b'"ori"', b":", b",", b"[", b"]", b'"a"', b"\n", b"\r", b"\xff", b"1"]),
             max_size=30).map(b"".join),
)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _only_kg_errors(reader, data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.jsonl"
        path.write_bytes(data)
        try:
            return reader(path)
        except KGDataError as err:
            assert err.path == str(path) and str(path) in str(err)
            return err


# ------------------------------------------------------------------------------------------ robustness
@PROPERTY
@given(JSONL_BYTES)
def test_read_edit_cases_raises_only_kg_errors(data):
    _only_kg_errors(read_edit_cases, data)


@PROPERTY
@given(JSONL_BYTES)
def test_read_stable_facts_raises_only_kg_errors(data):
    _only_kg_errors(read_stable_facts, data)


# ------------------------------------------------------------------------------------------ round trips
@PROPERTY
@given(st.lists(edit_cases(), max_size=8))
def test_edit_cases_round_trip(cases):
    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp) / "a.jsonl", Path(tmp) / "b.jsonl"
        write_edit_cases(first, cases)
        read = read_edit_cases(first)
        assert read == cases
        assert [c.to_record() for c in read] == [c.to_record() for c in cases]
        assert [(c.kind, c.target, c.corrupted) for c in read] == [(c.kind, c.target, c.corrupted) for c in cases]
        write_edit_cases(second, read)
        assert second.read_bytes() == first.read_bytes()


@PROPERTY
@given(st.lists(stable_facts(), max_size=8))
def test_stable_facts_round_trip(facts):
    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp) / "a.jsonl", Path(tmp) / "b.jsonl"
        write_stable_facts(first, facts)
        read = read_stable_facts(first)
        assert read == facts  # a self-loop keeps its masked side thanks to the "masked" key
        assert [f.to_record() for f in read] == [f.to_record() for f in facts]
        write_stable_facts(second, read)
        assert second.read_bytes() == first.read_bytes()


def test_record_shapes():
    edit = EditCase(Triple("a", "r", "b"), "tail", wrong="c")
    assert edit.kind == "edit" and edit.target == "b" and edit.corrupted == Triple("a", "r", "c")
    assert edit.to_record() == {"ori": ["a", "r", "b"], "cor": ["a", "r", "c"], "process": ["a", "r", MASK], "label": "b"}
    head_edit = EditCase(Triple("a", "r", "b"), "head", wrong="c")
    assert head_edit.to_record() == {
        "ori": ["a", "r", "b"], "cor": ["c", "r", "b"], "process": [MASK, "r", "b"], "label": "a"
    }
    add = EditCase(Triple("a", "r", "b"), "head")
    assert add.kind == "add" and add.corrupted is None
    assert add.to_record() == {"triples": ["a", "r", "b"], "label": "a", "head": 1}
    assert EditCase(Triple("a", "r", "b"), "tail").to_record()["head"] == 0
    stable = StableFact(Triple("a", "r", "b"), "tail")
    assert stable.label == "b"
    assert stable.to_record() == {"process": ["a", "r", MASK], "triple": ["a", "r", "b"], "label": "b", "masked": "tail"}


def test_invalid_objects():
    with pytest.raises(ValueError, match="wrong entity equals the target"):
        EditCase(Triple("a", "r", "b"), "tail", wrong="b")
    with pytest.raises(ValueError, match="masked must be"):
        EditCase(Triple("a", "r", "b"), "relation")
    with pytest.raises(ValueError, match="masked must be"):
        StableFact(Triple("a", "r", "b"), "middle")


# ------------------------------------------------------------------------------------------ original files
ORIGINAL_EDIT = [
    # tail edit: the model believes (Paris, capital_of, Germany)
    {"ori": ["/m/05qtj", "/capital_of", "/m/0f8l9c"], "cor": ["/m/05qtj", "/capital_of", "/m/0345h"],
     "process": ["Paris [SEP] capital of [SEP] [MASK]", {"mask": 2}], "label": "/m/0f8l9c"},
    # head edit (ori[0] == label in the original's rule)
    {"ori": ["03455488", "_hypernym", "04341686"], "cor": ["00001740", "_hypernym", "04341686"],
     "process": "[MASK] hypernym structure", "label": "03455488"},
]
ORIGINAL_ADD = [
    {"triples": ["/m/027rn", "/location/country/form_of_government", "/m/06cx9"], "label": "/m/06cx9", "head": 0},
    {"triples": ["/m/017dcd", "/tv/tv_program/regular_cast", "/m/06v8s0"], "label": "/m/017dcd", "head": 1},
]
ORIGINAL_STABLE = [
    {"process": ["[MASK]", "has part", "x y"], "triple": ["a", "_has_part", "b"], "label": "a"},
    {"process": [[1, 2], [3]], "triple": ["a", "_has_part", "b"], "label": "b"},
]


def _write_jsonl(path: Path, records: list[dict], newline: str = "\n") -> bytes:
    data = "".join(json.dumps(r) + newline for r in records).encode("utf-8")
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_import_original_edit_records(tmp_path, newline):
    source = tmp_path / "train.jsonl"
    original = _write_jsonl(source, ORIGINAL_EDIT, newline)
    cases = read_edit_cases(source)
    assert [c.kind for c in cases] == ["edit", "edit"]
    assert (cases[0].masked, cases[0].target, cases[0].wrong) == ("tail", "/m/0f8l9c", "/m/0345h")
    assert (cases[1].masked, cases[1].target, cases[1].wrong) == ("head", "03455488", "00001740")
    assert cases[1].corrupted == Triple("00001740", "_hypernym", "04341686")
    assert cases[0].process == ORIGINAL_EDIT[0]["process"] and cases[1].process == ORIGINAL_EDIT[1]["process"]
    # written back: the same records (process untouched), and with LF the very same bytes
    out = tmp_path / "out.jsonl"
    write_edit_cases(out, cases)
    assert _records(out) == ORIGINAL_EDIT
    # the writer always ends lines with LF: an LF file comes back byte for byte, a CRLF one with LF endings
    assert out.read_bytes() == original.replace(b"\r\n", b"\n")


def test_import_original_add_records(tmp_path):
    source = tmp_path / "test.jsonl"
    original = _write_jsonl(source, ORIGINAL_ADD)
    cases = read_edit_cases(source)
    assert [(c.kind, c.masked, c.target) for c in cases] == [("add", "tail", "/m/06cx9"), ("add", "head", "/m/017dcd")]
    out = tmp_path / "out.jsonl"
    write_edit_cases(out, cases)
    assert out.read_bytes() == original


def test_import_mixed_edit_and_add_records(tmp_path):
    source = tmp_path / "dev.jsonl"
    _write_jsonl(source, [ORIGINAL_EDIT[0], ORIGINAL_ADD[1], ORIGINAL_EDIT[1]])
    assert [c.kind for c in read_edit_cases(source)] == ["edit", "add", "edit"]


def test_import_original_stable_records(tmp_path):
    source = tmp_path / "stable.jsonl"
    _write_jsonl(source, ORIGINAL_STABLE)
    facts = read_stable_facts(source)
    assert [(f.masked, f.label) for f in facts] == [("head", "a"), ("tail", "b")]
    assert [f.process for f in facts] == [r["process"] for r in ORIGINAL_STABLE]
    out = tmp_path / "out.jsonl"
    write_stable_facts(out, facts)
    # the original's keys and values are kept as they were; "masked" is added
    assert _records(out) == [{**r, "masked": m} for r, m in zip(ORIGINAL_STABLE, ("head", "tail"))]
    assert read_stable_facts(out) == facts


def test_extra_keys_are_ignored_and_blank_trailing_line_is_fine(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({**ORIGINAL_ADD[0], "id": 7, "note": "x"}) + "\n\n")
    assert len(read_edit_cases(path)) == 1


# ------------------------------------------------------------------------------------------ errors
GOOD_EDIT = json.dumps(ORIGINAL_EDIT[0])
GOOD_STABLE = json.dumps(ORIGINAL_STABLE[0])


@pytest.mark.parametrize(
    ("bad", "field", "needle"),
    [
        ({"ori": ["a", "r", "b"], "label": "b"}, "cor", "missing key 'cor'"),
        ({"ori": ["a", "r", "b"], "cor": ["a", "r", "c"]}, "label", "missing key 'label'"),
        ({"triples": ["a", "r", "b"], "label": "b"}, "head", "missing key 'head'"),
        ({"ori": "a r b", "cor": ["a", "r", "c"], "label": "b"}, "ori", "expected a list of 3 non-empty strings"),
        ({"ori": ["a", "r"], "cor": ["a", "r", "c"], "label": "b"}, "ori", "expected a list of 3"),
        ({"ori": ["a", "r", "b"], "cor": ["a", "r", ""], "label": "b"}, "cor", "non-empty strings"),
        ({"ori": ["a", "r", "b"], "cor": ["a", "r", 3], "label": "b"}, "cor", "non-empty strings"),
        ({"ori": ["a", "r", "b"], "cor": ["a", "r", "c"], "label": 3}, "label", "non-empty entity string"),
        ({"triples": ["a", "r", "b"], "label": "b", "head": 2}, "head", "expected 0 or 1"),
        ({"triples": ["a", "r", "b"], "label": "b", "head": True}, "head", "expected 0 or 1"),
        ({"triples": ["a", "r", "b"], "label": "b", "head": "0"}, "head", "expected 0 or 1"),
        # the label is not the masked entity of the triple
        ({"ori": ["a", "r", "b"], "cor": ["a", "r", "c"], "label": "a"}, "label", "label 'a' is not ori's tail 'b'"),
        ({"ori": ["a", "r", "b"], "cor": ["a", "r", "c"], "label": "z"}, "label", "label 'z' is not ori's tail"),
        ({"triples": ["a", "r", "b"], "label": "b", "head": 1}, "label", "label 'b' is not the triple's head 'a'"),
        ({"triples": ["a", "r", "b"], "label": "z", "head": 0}, "label", "is not the triple's tail"),
        # cor must differ from ori in exactly one entity, with the same relation
        ({"ori": ["a", "r", "b"], "cor": ["c", "r", "d"], "label": "b"}, "cor", "exactly one of head or tail"),
        ({"ori": ["a", "r", "b"], "cor": ["a", "r", "b"], "label": "b"}, "cor", "exactly one of head or tail"),
        ({"ori": ["a", "r", "b"], "cor": ["a", "s", "c"], "label": "b"}, "cor", "differs from ori's 'r'"),
        ({"label": "b", "head": 0}, None, "expected an EDIT record"),
    ],
)
def test_bad_edit_records(tmp_path, bad, field, needle):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join([GOOD_EDIT, json.dumps(ORIGINAL_ADD[0]), json.dumps(bad), GOOD_EDIT]) + "\n")
    with pytest.raises(KGDataError) as info:
        read_edit_cases(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 3, field)
    assert str(err).startswith(f"{path}:3: ")
    assert needle in str(err)


@pytest.mark.parametrize(
    ("bad", "field", "needle"),
    [
        ({"process": [], "label": "a"}, "triple", "missing key 'triple'"),
        ({"triple": ["a", "r", "b"]}, "label", "missing key 'label'"),
        ({"triple": ["a", "r", "b"], "label": "z"}, "label", "neither the triple's head nor its tail"),
        ({"triple": ["a", "r", "b"], "label": "a", "masked": "tail"}, "label", "neither"),
        ({"triple": ["a", "r", "b"], "label": "a", "masked": "middle"}, "masked", "expected 'head' or 'tail'"),
        ({"triple": [1, 2, 3], "label": "a"}, "triple", "list of 3 non-empty strings"),
        ({"triple": ["a", "r", "b"], "label": ["a"]}, "label", "non-empty entity string"),
    ],
)
def test_bad_stable_records(tmp_path, bad, field, needle):
    path = tmp_path / "stable.jsonl"
    path.write_text("\r\n".join([GOOD_STABLE, json.dumps(bad)]) + "\r\n")
    with pytest.raises(KGDataError) as info:
        read_stable_facts(path)
    err = info.value
    assert (err.line, err.field) == (2, field)
    assert str(err).startswith(f"{path}:2: ")
    assert needle in str(err)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"ori": ["a", "r", "b"], "cor"', "invalid JSON"),
        ("{'ori': 1}", "invalid JSON"),
        ('["a", "r", "b"]', "expected a JSON object, got list"),
        ("42", "expected a JSON object, got int"),
        ("   ", "blank line"),
        ("", "blank line"),
        ('{"x": ' + "1" * 5000 + "}", "invalid JSON"),  # an integer too long for Python's int parser
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_bad_json_lines(tmp_path, line, needle):
    path = tmp_path / "edits.jsonl"
    path.write_text(GOOD_EDIT + "\n" + GOOD_EDIT + "\n" + line + "\n" + GOOD_EDIT + "\n")
    for reader in (read_edit_cases, read_stable_facts):
        with pytest.raises(KGDataError) as info:
            reader(path)
        assert info.value.line == 3
        assert f"{path}:3: " in str(info.value)
        assert needle in str(info.value)


def test_undecodable_and_stray_cr(tmp_path):
    path = tmp_path / "edits.jsonl"
    path.write_bytes(GOOD_EDIT.encode() + b"\n\xff\xfe\n")
    with pytest.raises(KGDataError, match="not valid UTF-8") as info:
        read_edit_cases(path)
    assert info.value.line == 2
    path.write_bytes(GOOD_EDIT.encode() + b"\n" + GOOD_EDIT.encode() + b"\r" + GOOD_EDIT.encode() + b"\n")
    with pytest.raises(KGDataError, match="carriage return") as info:
        read_edit_cases(path)
    assert info.value.line == 2


# ------------------------------------------------------------------------------------------ EditSet
def test_edit_set_save_load(tmp_path):
    cases = {
        "train": [EditCase(Triple("a", "r", "b"), "tail", wrong="c"), EditCase(Triple("a", "r", "b"), "head")],
        "dev": [EditCase(Triple("x", "s", "y"), "head", wrong="z", process={"keep": [1, 2]})],
        "test": [],
    }
    stable = [StableFact(Triple("a", "r", "a"), "tail"), StableFact(Triple("b", "s", "c"), "head", process="p")]
    edit_set = EditSet(cases=cases, stable=stable)
    folder = edit_set.save(tmp_path / "E-toy")
    assert sorted(p.name for p in folder.iterdir()) == ["dev.jsonl", "stable.jsonl", "test.jsonl", "train.jsonl"]
    loaded = EditSet.load(folder)
    assert loaded == edit_set
    assert loaded.cases["dev"][0].process == {"keep": [1, 2]}
    assert loaded.stable[0].masked == "tail" and loaded.stable[1].process == "p"
    # saving the loaded set writes the same bytes
    again = loaded.save(tmp_path / "again")
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "stable.jsonl"):
        assert (again / name).read_bytes() == (folder / name).read_bytes()


def test_edit_set_pools_save_load_and_training_view(tmp_path):
    cases = {"train": [EditCase(Triple("a", "r", "b"), "tail", wrong="c")],
             "dev": [EditCase(Triple("x", "s", "y"), "head", wrong="z")],
             "test": [EditCase(Triple("b", "r", "c"), "tail", wrong="a")]}
    pools = {"train": [StableFact(Triple("a", "r", "a"), "tail")], "dev": [StableFact(Triple("b", "s", "c"), "head")],
             "test": [StableFact(Triple("c", "s", "a"), "tail"), StableFact(Triple("c", "r", "b"), "head")]}
    edit_set = EditSet.with_pools(cases, pools)
    assert edit_set.stable == [*pools["train"], *pools["dev"], *pools["test"]] and edit_set.held_out_locality
    folder = edit_set.save(tmp_path / "E")
    assert sorted(p.name for p in folder.iterdir()) == ["dev.jsonl", "stable_dev.jsonl", "stable_test.jsonl",
                                                        "stable_train.jsonl", "test.jsonl", "train.jsonl"]
    loaded = EditSet.load(folder)
    assert loaded == edit_set and loaded.pool("test") == pools["test"] and loaded.pool_name("test") == "stable_test"
    view = loaded.training_view()
    assert set(view.cases) == {"train", "dev"} and view.pool("train") == pools["train"]
    with pytest.raises(KGDataError, match="no stable_test pool"):
        view.pool("test")
    with pytest.raises(KGDataError, match="unknown stable pool"):
        loaded.pool("valid")
    # the single-pool layout still loads, serves every pool from its one file and says so
    legacy = EditSet(cases=cases, stable=pools["test"])
    legacy_dir = legacy.save(tmp_path / "legacy")
    again = EditSet.load(legacy_dir)
    assert not again.held_out_locality and again.pool("train") == again.pool("test") == pools["test"]
    assert "single pool" in again.pool_name("test")
    (folder / "stable.jsonl").write_text("")
    with pytest.raises(KGDataError, match="keep one layout"):
        EditSet.load(folder)


def test_edit_set_load_errors(tmp_path):
    with pytest.raises(KGDataError, match="not a directory"):
        EditSet.load(tmp_path / "missing")
    with pytest.raises(KGDataError, match="no edit cases"):
        EditSet.load(tmp_path)
    EditSet(cases={"test": [EditCase(Triple("a", "r", "b"), "tail")]}, stable=[]).save(tmp_path)
    assert EditSet.load(tmp_path).cases.keys() == {"test"}
    (tmp_path / "stable.jsonl").unlink()
    with pytest.raises(KGDataError, match="file not found") as info:
        EditSet.load(tmp_path)
    assert info.value.path == str(tmp_path / "stable.jsonl")
    (tmp_path / "stable.jsonl").write_text(GOOD_STABLE + "\n{}\n")
    with pytest.raises(KGDataError, match="missing key 'triple'") as info:
        EditSet.load(tmp_path)
    assert info.value.line == 2
