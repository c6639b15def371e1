"""Readers and writers for the plain-text KG formats.

Formats (UTF-8, LF or CRLF line endings, a trailing blank line allowed):

- triples TSV: ``head<TAB>relation<TAB>tail`` per line;
- ``entity2text`` / ``relation2text``: ``label<TAB>text`` per line (the text may hold further tabs);
- entity / relation lists: one label per line.

Every reader validates as it goes and raises :class:`~kg_data.errors.KGDataError` naming the file, the
line and the field; nothing is dropped silently. Writers produce files the readers read back exactly, and
a file written by a writer is reproduced byte for byte by read-then-write with the same line ending.
"""

from __future__ import annotations

import json
import os
from itertools import repeat
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .errors import KGDataError
from .files import write_bytes_atomic
from .triple import Triple

__all__ = [
    "TRIPLE_FIELDS",
    "read_rows",
    "read_columns",
    "read_triple_columns",
    "read_triples",
    "write_triples",
    "read_text_map",
    "write_text_map",
    "read_labels",
    "write_labels",
    "detect_newline",
    "read_json_object",
]

TRIPLE_FIELDS = ("head", "relation", "tail")
PathLike = str | os.PathLike


def _decode(data: bytes, path: PathLike) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise KGDataError(
            f"bytes {data[err.start:err.end]!r} are not valid UTF-8 (expected UTF-8 text)",
            path=path,
            line=line,
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


def _read_text(path: PathLike) -> str:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise KGDataError("file not found", path=path) from None
    except IsADirectoryError:
        raise KGDataError("is a directory, expected a file", path=path) from None
    except OSError as err:
        raise KGDataError(f"cannot read: {err.strerror}", path=path) from None
    return _decode(data, path)


def detect_newline(path: PathLike) -> str:
    """The line ending of a file: '\\r\\n' when its first line ends so, else '\\n'."""
    with open(path, "rb") as handle:
        first = handle.readline()
    return "\r\n" if first.endswith(b"\r\n") else "\n"


def _split_lines(text: str, path: PathLike) -> list[str]:
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            line = text.count("\n", 0, text.index("\r")) + 1
            raise KGDataError(
                "stray carriage return inside a line (expected LF or CRLF line endings)", path=path, line=line
            )
    lines = text.split("\n")
    # trailing blank lines are fine; blank lines inside the file are not
    while lines and not lines[-1]:
        lines.pop()
    return lines


def read_rows(path: PathLike, fields: Sequence[str], *, rest: bool = False) -> list[list[str]]:
    """Read a TSV file into rows of ``len(fields)`` non-empty strings.

    With ``rest=True`` the last field takes the remainder of the line, tabs included.
    """
    lines = _split_lines(_read_text(path), path)
    n = len(fields)
    rows = [line.split("\t", n - 1) for line in lines] if rest else [line.split("\t") for line in lines]
    for index, row in enumerate(rows):
        if len(row) != n or "" in row:
            _raise_bad_row(row, fields, path, index + 1, rest)
    return rows


def read_columns(path: PathLike, fields: Sequence[str]) -> tuple[list[str], ...]:
    """Read a TSV file of exactly ``len(fields)`` non-empty columns into one list per column.

    The fast path of large files: every check is a scan in C over the whole text; only when one fails
    are the lines walked to name the first bad one.
    """
    lines = _split_lines(_read_text(path), path)
    n = len(fields)
    joined = "\n".join(lines)
    well_formed = (
        "\t\t" not in joined
        and "\n\t" not in joined
        and "\t\n" not in joined
        and "\n\n" not in joined
        and not joined.startswith("\t")
        and not joined.startswith("\n")  # a blank first line (only a one-column file passes the tab count)
        and not joined.endswith("\t")
        and set(map(str.count, lines, repeat("\t"))) <= {n - 1}
    )
    if not well_formed:
        read_rows(path, fields)  # raises, naming the first bad line
        raise AssertionError("unreachable: the fast checks failed but every line is valid")
    if not lines:
        return tuple([] for _ in fields)
    flat = joined.replace("\n", "\t").split("\t")
    return tuple(flat[i::n] for i in range(n))


def _raise_bad_row(row: list[str], fields: Sequence[str], path: PathLike, line: int, rest: bool) -> None:
    n = len(fields)
    layout = "<TAB>".join(fields)
    if row == [""]:
        raise KGDataError(f"blank line (expected {layout})", path=path, line=line)
    if len(row) != n:
        more = " or more" if rest else ""
        raise KGDataError(
            f"{len(row)} tab-separated column(s), expected {n}{more} ({layout})", path=path, line=line
        )
    empty = fields[row.index("")]
    raise KGDataError(f"empty value (expected a non-empty {empty})", path=path, line=line, field=empty)


def read_triple_columns(path: PathLike) -> tuple[list[str], list[str], list[str]]:
    """Read a triples TSV file into three lists: heads, relations, tails."""
    return read_columns(path, TRIPLE_FIELDS)  # type: ignore[return-value]


def read_triples(path: PathLike) -> list[Triple]:
    """Read a triples TSV file (3 tab-separated columns per line)."""
    return [Triple(h, r, t) for h, r, t in zip(*read_triple_columns(path))]


def _check_writable(value: str, path: PathLike, line: int, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise KGDataError(f"expected a non-empty string, got {value!r}", path=path, line=line, field=field)
    if "\t" in value or "\n" in value or "\r" in value:
        raise KGDataError(
            f"{value!r} contains a tab or line break, which the format cannot hold", path=path, line=line, field=field
        )
    return value


def _write_lines(path: PathLike, lines: list[str], newline: str) -> None:
    if newline not in ("\n", "\r\n"):
        raise ValueError(f"newline must be '\\n' or '\\r\\n', got {newline!r}")
    text = "".join(line + newline for line in lines)
    if text.startswith("\ufeff"):
        # the readers strip a leading UTF-8 byte-order mark, so such a file would not read back the same
        raise KGDataError("starts with U+FEFF, a byte-order mark that readers strip; cannot be written", path=path, line=1)
    write_bytes_atomic(path, text.encode("utf-8"))


def write_triples(path: PathLike, triples: Iterable[Sequence[str]], *, newline: str = "\n") -> None:
    """Write triples as TSV, one per line, every line terminated by ``newline``."""
    lines = []
    for number, triple in enumerate(triples, start=1):
        if len(triple) != 3:
            raise KGDataError(f"expected a (head, relation, tail) triple, got {triple!r}", path=path, line=number)
        for value, field in zip(triple, TRIPLE_FIELDS):
            _check_writable(value, path, number, field)
        lines.append("\t".join(triple))
    _write_lines(path, lines, newline)


def read_text_map(path: PathLike, *, kind: str = "label") -> dict[str, str]:
    """Read ``label<TAB>text`` lines (entity2text, relation2text) into a dict; a repeated label is an error."""
    rows = read_rows(path, (kind, "text"), rest=True)
    result: dict[str, str] = {}
    for number, (label, text) in enumerate(rows, start=1):
        if label in result:
            first = next(i for i, row in enumerate(rows, start=1) if row[0] == label)
            raise KGDataError(
                f"{kind} {label!r} appears again (first on line {first}); expected one text per {kind}",
                path=path,
                line=number,
                field=kind,
            )
        result[label] = text
    return result


def write_text_map(path: PathLike, texts: Mapping[str, str], *, newline: str = "\n") -> None:
    """Write a ``label<TAB>text`` file in the mapping's order."""
    lines = []
    for number, (label, text) in enumerate(texts.items(), start=1):
        _check_writable(label, path, number, "label")
        if not isinstance(text, str) or not text or "\n" in text or "\r" in text:
            raise KGDataError(f"expected a non-empty one-line text, got {text!r}", path=path, line=number, field="text")
        lines.append(f"{label}\t{text}")
    _write_lines(path, lines, newline)


def read_labels(path: PathLike, *, kind: str = "label") -> list[str]:
    """Read a list of labels, one per line; a repeated label is an error."""
    lines = _split_lines(_read_text(path), path)
    seen: dict[str, int] = {}
    for number, label in enumerate(lines, start=1):
        if not label:
            raise KGDataError(f"blank line (expected one {kind} per line)", path=path, line=number)
        if "\t" in label:
            raise KGDataError(f"tab inside a {kind} (expected one {kind} per line)", path=path, line=number)
        if label in seen:
            raise KGDataError(
                f"{kind} {label!r} listed again (first on line {seen[label]})", path=path, line=number, field=kind
            )
        seen[label] = number
    return lines


def write_labels(path: PathLike, labels: Iterable[str], *, newline: str = "\n") -> None:
    """Write labels one per line."""
    lines = [_check_writable(label, path, number, "label") for number, label in enumerate(labels, start=1)]
    _write_lines(path, lines, newline)


def read_json_object(path: PathLike, *, written_by: str) -> dict:
    """Read a JSON object (a saved folder's metadata); clear errors for a missing or malformed file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KGDataError(f"missing: expected a folder written by {written_by}", path=path) from None
    except (ValueError, UnicodeDecodeError) as err:
        raise KGDataError(f"not valid JSON ({err})", path=path) from None
    if not isinstance(data, dict):
        raise KGDataError(f"expected a JSON object (written by {written_by})", path=path)
    return data
