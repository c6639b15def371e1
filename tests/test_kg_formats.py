"""Readers and writers of the plain-text KG formats (kg_data.formats, Vocabulary.load).

Property tests: arbitrary bytes and malformed lines never raise anything but KGDataError (naming the file);
valid data round-trips exactly (write -> read), and a file written by our writer is reproduced byte for byte
by read -> write, with LF and with CRLF line endings. Example tests: every validation error names the file,
the right line and the field.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kg_data import (
    KGDataError,
    Triple,
    Vocabulary,
    read_labels,
    read_text_map,
    read_triples,
    write_labels,
    write_text_map,
    write_triples,
)
from kg_data.formats import TRIPLE_FIELDS, detect_newline, read_columns, read_rows, read_triple_columns

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# ------------------------------------------------------------------------------------------ strategies
# a valid label: any non-surrogate character but tab / CR / LF (the writers reject those), with a bias to
# ASCII so that collisions and realistic ids (/m/0abc, _hypernym) come up too; a leading U+FEFF is a
# byte-order mark that readers strip, so the writers refuse it on the first line (tested separately)
LABEL_CHAR = st.one_of(
    st.sampled_from("ab/_.0 "),
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\r\n"),
)
LABELS = st.text(LABEL_CHAR, min_size=1, max_size=6).filter(lambda s: not s.startswith("\ufeff"))
# texts (entity2text) may hold tabs but no line breaks
TEXTS = st.text(
    st.one_of(st.sampled_from("ab ,\t"), st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")),
    min_size=1,
    max_size=12,
)
TRIPLE_LISTS = st.lists(st.tuples(LABELS, LABELS, LABELS), max_size=12)
NEWLINES = st.sampled_from(["\n", "\r\n"])

# pieces of malformed files: separators, line breaks (lone CR included), invalid / partial UTF-8, a BOM, NUL
TOKENS = [
    b"a", b"b", b"/m/0x", b"_r", b" ", b"\t", b"\t", b"\n", b"\n", b"\r\n", b"\r", b"",
    b"\xff", b"\xc3", b"\xc3\xa9", b"\xe2\x82", b"\xef\xbb\xbf", b"\x00", b"\xed\xa0\x80",
]
MALFORMED = st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)


@st.composite
def mutated_triples_file(draw) -> bytes:
    """A valid triples file with a few random tokens spliced in (mostly near-valid input)."""
    triples = draw(st.lists(st.tuples(LABELS, LABELS, LABELS), min_size=1, max_size=6))
    newline = draw(NEWLINES)
    data = bytearray("".join("\t".join(t) + newline for t in triples).encode("utf-8"))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.sampled_from(TOKENS))
    return bytes(data)


ANY_BYTES = st.one_of(st.binary(max_size=300), MALFORMED, mutated_triples_file())


# ------------------------------------------------------------------------------------------ helpers
def _write(tmp: Path, data: bytes, name: str = "file.tsv") -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _only_kg_errors(reader, data: bytes):
    """Run ``reader`` on a file holding ``data``; only KGDataError (naming the file) may escape."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), data)
        try:
            return reader(path)
        except KGDataError as err:
            assert err.path == str(path)
            assert str(path) in str(err)
            return err


def _error(reader, data: bytes, tmp_path: Path, name: str = "file.tsv") -> KGDataError:
    path = _write(tmp_path, data, name)
    with pytest.raises(KGDataError) as info:
        reader(path)
    err = info.value
    assert err.path == str(path)
    return err


# ------------------------------------------------------------------------------------------ robustness
@PROPERTY
@given(ANY_BYTES)
def test_read_triples_raises_only_kg_errors(data):
    _only_kg_errors(read_triples, data)


@PROPERTY
@given(ANY_BYTES)
def test_read_triple_columns_raises_only_kg_errors(data):
    _only_kg_errors(read_triple_columns, data)


@PROPERTY
@given(ANY_BYTES)
def test_read_text_map_raises_only_kg_errors(data):
    _only_kg_errors(lambda p: read_text_map(p, kind="entity"), data)


@PROPERTY
@given(ANY_BYTES)
def test_read_labels_raises_only_kg_errors(data):
    _only_kg_errors(read_labels, data)


@PROPERTY
@given(ANY_BYTES)
def test_vocabulary_load_raises_only_kg_errors(data):
    result = _only_kg_errors(lambda p: Vocabulary.load(p, kind="entity"), data)
    if isinstance(result, Vocabulary):
        assert [result.id(label) for label in result.labels] == list(range(len(result)))


@PROPERTY
@given(ANY_BYTES, st.sampled_from([TRIPLE_FIELDS, ("label",), ("label", "text"), ("a", "b", "c", "d")]))
def test_fast_column_reader_agrees_with_row_reader(data, fields):
    """read_columns (the fast path) accepts exactly what read_rows accepts, with the same data or error."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), data)
        try:
            rows = read_rows(path, fields)
        except KGDataError as err:
            with pytest.raises(KGDataError) as info:
                read_columns(path, fields)
            assert str(info.value) == str(err)
            assert (info.value.line, info.value.field) == (err.line, err.field)
        else:
            columns = read_columns(path, fields)
            assert len(columns) == len(fields)
            assert [list(c) for c in zip(*rows)] == list(columns) or (not rows and columns == tuple([] for _ in fields))
            assert all(value for column in columns for value in column)


@pytest.mark.parametrize("data", [b"\na\nb\n", b"\r\na\r\n", b"a\n\nb\n"])
def test_fast_column_reader_rejects_blank_lines_in_one_column_files(tmp_path, data):
    err = _error(lambda p: read_columns(p, ("label",)), data, tmp_path)
    assert "blank line" in str(err)


@PROPERTY
@given(st.lists(st.tuples(LABELS, LABELS, LABELS), min_size=1, max_size=8), st.data())
def test_a_bad_line_is_reported_at_its_number(triples, data):
    """Replace one line of a valid file by a malformed one: the error names exactly that line."""
    bad = data.draw(
        st.sampled_from(["", "only\ttwo", "a\tb\tc\td", "\tr\tt", "h\t\tt", "h\tr\t", "no tabs", "h\tr\tt\t"])
    )
    newline = data.draw(NEWLINES)
    index = data.draw(st.integers(0, len(triples) - 1))
    lines = ["\t".join(t) for t in triples]
    lines[index] = bad
    # a blank last line is a (legal) trailing blank line, not a bad one
    assume(not (bad == "" and index == len(lines) - 1))
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), "".join(line + newline for line in lines).encode("utf-8"))
        for reader in (read_triples, read_triple_columns):
            with pytest.raises(KGDataError) as info:
                reader(path)
            assert info.value.line == index + 1
            assert f"{path}:{index + 1}:" in str(info.value)


# ------------------------------------------------------------------------------------------ round trips
@PROPERTY
@given(TRIPLE_LISTS, NEWLINES)
def test_triples_round_trip(triples, newline):
    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp) / "a.tsv", Path(tmp) / "b.tsv"
        write_triples(first, triples, newline=newline)
        read = read_triples(first)
        assert read == [Triple(*t) for t in triples]
        heads, rels, tails = read_triple_columns(first)
        assert list(zip(heads, rels, tails)) == triples
        if triples:
            assert detect_newline(first) == newline
        write_triples(second, read, newline=detect_newline(first))
        assert second.read_bytes() == first.read_bytes()


@PROPERTY
@given(st.dictionaries(LABELS, TEXTS, max_size=10), NEWLINES)
def test_text_map_round_trip(texts, newline):
    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp) / "a.txt", Path(tmp) / "b.txt"
        write_text_map(first, texts, newline=newline)
        read = read_text_map(first, kind="entity")
        assert list(read.items()) == list(texts.items())
        write_text_map(second, read, newline=detect_newline(first))
        assert second.read_bytes() == first.read_bytes()


@PROPERTY
@given(st.lists(LABELS, unique=True, max_size=12), NEWLINES)
def test_labels_and_vocabulary_round_trip(labels, newline):
    with tempfile.TemporaryDirectory() as tmp:
        first, second, third = Path(tmp) / "a.txt", Path(tmp) / "b.txt", Path(tmp) / "c.txt"
        write_labels(first, labels, newline=newline)
        assert read_labels(first) == labels
        write_labels(second, read_labels(first), newline=detect_newline(first))
        assert second.read_bytes() == first.read_bytes()
        vocab = Vocabulary.load(first, kind="entity")
        assert vocab.labels == tuple(labels)
        assert [vocab.id(label) for label in labels] == list(range(len(labels)))
        if newline == "\n":
            vocab.save(third)
            assert third.read_bytes() == first.read_bytes()


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_exact_bytes_of_written_files(tmp_path, newline):
    path = tmp_path / "t.tsv"
    write_triples(path, [("a", "r", "b"), Triple("é", "r 2", "c")], newline=newline)
    assert path.read_bytes() == f"a\tr\tb{newline}é\tr 2\tc{newline}".encode("utf-8")
    write_text_map(path, {"a": "text\twith tab"}, newline=newline)
    assert path.read_bytes() == f"a\ttext\twith tab{newline}".encode("utf-8")
    write_labels(path, ["x", "y"], newline=newline)
    assert path.read_bytes() == f"x{newline}y{newline}".encode("utf-8")


# ------------------------------------------------------------------------------------------ accepted input
@pytest.mark.parametrize(
    "data",
    [
        b"a\tr\tb\nc\tr\td",  # no final newline
        b"a\tr\tb\nc\tr\td\n",
        b"a\tr\tb\nc\tr\td\n\n",  # trailing blank line
        b"a\tr\tb\r\nc\tr\td\r\n",  # CRLF
        b"a\tr\tb\r\nc\tr\td\r\n\r\n",  # CRLF + trailing blank line
        b"\xef\xbb\xbfa\tr\tb\nc\tr\td\n",  # UTF-8 byte-order mark
    ],
)
def test_accepted_line_endings(tmp_path, data):
    path = _write(tmp_path, data)
    assert read_triples(path) == [Triple("a", "r", "b"), Triple("c", "r", "d")]


def test_empty_files_are_empty(tmp_path):
    path = _write(tmp_path, b"")
    assert read_triples(path) == []
    assert read_triple_columns(path) == ([], [], [])
    assert read_text_map(path) == {}
    assert read_labels(path) == []


def test_text_keeps_inner_tabs_and_spaces(tmp_path):
    path = _write(tmp_path, "e1\ttombstone, a stone\tused to mark a grave \ne2\t\tleading tab\n".encode())
    assert read_text_map(path) == {"e1": "tombstone, a stone\tused to mark a grave ", "e2": "\tleading tab"}


# ------------------------------------------------------------------------------------------ validation errors
@pytest.mark.parametrize(
    ("data", "line", "needle"),
    [
        (b"a\tr\tb\nc\tr\n", 2, "2 tab-separated column(s), expected 3"),
        (b"a\tr\tb\nc\tr\td\ne\tr\tf\tg\n", 3, "4 tab-separated column(s), expected 3"),
        (b"a\tr\tb\r\nc\tr\td\r\nno-tabs\r\n", 3, "1 tab-separated column(s)"),
        (b"a\tr\tb\n\nc\tr\td\n", 2, "blank line"),
        (b"a\tr\tb\r\n\r\nc\tr\td\r\n", 2, "blank line"),
        (b"a\tr\tb\nc\rx\tr\td\n", 2, "carriage return"),
        (b"a\tr\tb\r\nc\tr\td\r\ne\tr\rf\r\n", 3, "carriage return"),
        (b"a\tr\tb\nc\tr\td\n\xff\tr\tb\n", 3, "UTF-8"),
        (b"a\tr\tb\r\nc\tr\td\r\ne\tr\tf\xc3\r\n", 3, "UTF-8"),
    ],
)
def test_triples_errors_name_file_and_line(tmp_path, data, line, needle):
    for reader in (read_triples, read_triple_columns):
        err = _error(reader, data, tmp_path)
        assert err.line == line
        assert str(err).startswith(f"{err.path}:{line}: ")
        assert needle in str(err)


@pytest.mark.parametrize(
    ("data", "field"),
    [(b"a\tr\tb\n\tr\tb\n", "head"), (b"a\tr\tb\na\t\tb\n", "relation"), (b"a\tr\tb\na\tr\t\n", "tail")],
)
def test_empty_field_is_named(tmp_path, data, field):
    err = _error(read_triples, data, tmp_path)
    assert (err.line, err.field) == (2, field)
    assert f"{err.path}:2: field '{field}': empty value" in str(err)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(KGDataError, match="file not found") as info:
        read_triples(tmp_path / "nope.tsv")
    assert info.value.path == str(tmp_path / "nope.tsv")
    with pytest.raises(KGDataError, match="is a directory"):
        read_labels(tmp_path)


@pytest.mark.parametrize(
    ("data", "line", "field", "needle"),
    [
        (b"e1\tone\ne2\ttwo\ne1\tagain\n", 3, "entity", "first on line 1"),
        (b"e1\tone\ne2\n", 2, None, "1 tab-separated column(s), expected 2 or more"),
        (b"e1\tone\ne2\t\n", 2, "text", "empty value"),
        (b"e1\tone\n\te2\n", 2, "entity", "empty value"),
        (b"e1\tone\n\ne2\ttwo\n", 2, None, "blank line"),
    ],
)
def test_text_map_errors(tmp_path, data, line, field, needle):
    err = _error(lambda p: read_text_map(p, kind="entity"), data, tmp_path, "entity2text.txt")
    assert (err.line, err.field) == (line, field)
    assert needle in str(err)
    assert f"entity2text.txt:{line}:" in str(err)


@pytest.mark.parametrize(
    ("data", "line", "needle"),
    [
        (b"a\nb\na\n", 3, "listed again (first on line 1)"),
        (b"a\nb\tc\n", 2, "tab inside"),
        (b"a\n\nb\n", 2, "blank line"),
        (b"a\r\nb\r\n\xfe\r\n", 3, "UTF-8"),
    ],
)
def test_label_list_errors(tmp_path, data, line, needle):
    for reader in (read_labels, Vocabulary.load):
        err = _error(reader, data, tmp_path, "entities.txt")
        assert err.line == line
        assert needle in str(err)
        assert f"entities.txt:{line}:" in str(err)


# ------------------------------------------------------------------------------------------ writer checks
@pytest.mark.parametrize("bad", ["a\tb", "a\nb", "a\rb", ""])
def test_writers_reject_unwritable_labels(tmp_path, bad):
    with pytest.raises(KGDataError) as info:
        write_triples(tmp_path / "t.tsv", [("a", "r", "b"), ("a", bad, "b")])
    assert (info.value.line, info.value.field) == (2, "relation")
    with pytest.raises(KGDataError) as info:
        write_labels(tmp_path / "l.txt", ["x", "y", bad])
    assert info.value.line == 3
    with pytest.raises(KGDataError):
        write_text_map(tmp_path / "m.txt", {bad: "text"})


@pytest.mark.parametrize("bad", ["line\nbreak", "carriage\rreturn", ""])
def test_text_map_writer_rejects_bad_text(tmp_path, bad):
    with pytest.raises(KGDataError) as info:
        write_text_map(tmp_path / "m.txt", {"a": "ok", "b": bad})
    assert (info.value.line, info.value.field) == (2, "text")


def test_writers_reject_a_leading_byte_order_mark(tmp_path):
    """Readers strip a UTF-8 BOM, so a first value starting with U+FEFF could not be read back."""
    with pytest.raises(KGDataError, match="byte-order mark"):
        write_labels(tmp_path / "l.txt", ["\ufeffa", "b"])
    with pytest.raises(KGDataError, match="byte-order mark"):
        write_triples(tmp_path / "t.tsv", [("\ufeffa", "r", "b")])
    # anywhere else it is an ordinary character
    write_labels(tmp_path / "l.txt", ["a", "\ufeffb"])
    assert read_labels(tmp_path / "l.txt") == ["a", "\ufeffb"]


def test_writer_rejects_bad_newline_and_arity(tmp_path):
    with pytest.raises(ValueError):
        write_labels(tmp_path / "l.txt", ["a"], newline="\r")
    with pytest.raises(KGDataError) as info:
        write_triples(tmp_path / "t.tsv", [("a", "r", "b"), ("a", "r")])
    assert info.value.line == 2
