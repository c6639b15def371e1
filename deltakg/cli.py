"""The ``deltakg`` command line: thin wrappers that parse arguments, call the Python API and print.

Every command takes ``--json`` for machine-readable output. Bad input exits with code 2 and one line
naming the file, line and field (or the argument) and what was expected.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(payload) if getattr(args, "json", False) else text)


# ------------------------------------------------------------------------------------------- data
def _cmd_data_stats(args: argparse.Namespace) -> int:
    from kg_data import load_dataset

    kg = load_dataset(args.dataset, args.data_dir)
    stats = kg.stats()
    payload = {**stats, "dataset": kg.name, "duplicates": kg.duplicates}
    if kg.entity_texts is not None:
        payload["entities_with_text"] = len(kg.entity_texts)
    lines = [f"{kg.name}"] + [f"  {key:<9} {value:>9,}" for key, value in stats.items()]
    dup = sum(kg.duplicates.values())
    lines.append(f"  duplicate triples: {dup}" + (f" {kg.duplicates}" if dup else ""))
    _emit(args, payload, "\n".join(lines))
    return 0


_CHECK_KINDS = ("triples", "entity2text", "relation2text", "editset", "labels")


def _guess_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".jsonl"):
        return "editset"
    if name.startswith("entity2text"):
        return "entity2text"
    if name.startswith("relation2text"):
        return "relation2text"
    if name in ("entities.txt", "relations.txt"):
        return "labels"
    return "triples"


def _cmd_data_check(args: argparse.Namespace) -> int:
    from kg_data.edits import read_records, read_stable_facts, read_edit_cases
    from kg_data.formats import read_labels, read_text_map, read_triple_columns

    path = Path(args.file)
    kind = args.kind or _guess_kind(path)
    summary: dict[str, Any] = {"file": str(path), "kind": kind, "valid": True}
    if kind == "triples":
        heads, rels, tails = read_triple_columns(path)
        rows = list(zip(heads, rels, tails))
        summary.update(
            triples=len(rows),
            entities=len(set(heads) | set(tails)),
            relations=len(set(rels)),
            duplicates=len(rows) - len(set(rows)),
        )
        text = f"{path}: ok, {len(rows)} triples, {summary['entities']} entities, {summary['relations']} relations"
        if summary["duplicates"]:
            text += f", {summary['duplicates']} duplicate triple(s)"
    elif kind in ("entity2text", "relation2text"):
        texts = read_text_map(path, kind=kind.replace("2text", ""))
        summary.update(rows=len(texts))
        text = f"{path}: ok, {len(texts)} {kind.replace('2text', '')} texts"
    elif kind == "labels":
        labels = read_labels(path)
        summary.update(rows=len(labels))
        text = f"{path}: ok, {len(labels)} labels"
    else:
        records = read_records(path)
        is_stable = bool(records) and "triple" in records[0].data
        items = read_stable_facts(path) if is_stable else read_edit_cases(path)
        counts: dict[str, int] = {}
        for item in items:
            key = "stable" if is_stable else item.kind
            counts[key] = counts.get(key, 0) + 1
        summary.update(records=len(items), counts=counts)
        text = f"{path}: ok, {len(items)} records " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    _emit(args, summary, text)
    return 0


# ------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``deltakg`` command."""
    parser = argparse.ArgumentParser(
        prog="deltakg", description="Knowledge editing over triples: data, KG embeddings and their editors."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = commands.add_parser("data", help="inspect and validate KG data")
    data_cmds = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    from kg_data.catalog import DATA_ENV, dataset_names

    stats = data_cmds.add_parser("stats", help="entity, relation and split counts of a built-in dataset")
    stats.add_argument("--dataset", required=True, help=f"one of: {', '.join(dataset_names())}")
    stats.add_argument("--data-dir", default=None, help=f"folder with WN18RR/ or FB15k237/ (default: ${DATA_ENV})")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=_cmd_data_stats)

    check = data_cmds.add_parser("check", help="validate a data file; exit 2 with file:line on the first error")
    check.add_argument("file", help="the file to check")
    check.add_argument("--kind", choices=_CHECK_KINDS, default=None, help="file format (default: from the name)")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(func=_cmd_data_check)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from kg_data.errors import KGDataError

    return (KGDataError, CommandError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deltakg`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except _user_errors() as err:
        print(f"deltakg: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("deltakg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
