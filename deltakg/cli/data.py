"""``deltakg data``: inspect and validate KG data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import add_command, add_dataset_args, add_json_arg, emit

CHECK_KINDS = ("triples", "entity2text", "relation2text", "editset", "labels")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``data stats`` and ``data check``."""
    data = add_command(commands, "data", "inspect and validate KG data")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    stats = add_command(sub, "stats", "entity, relation and split counts of a built-in dataset")
    add_dataset_args(stats)
    add_json_arg(stats)
    stats.set_defaults(func=_stats)

    check = add_command(sub, "check", "validate a data file; exit 2 with file:line on the first error")
    check.add_argument("file", help="the file to check")
    check.add_argument("--kind", choices=CHECK_KINDS, default=None,
                       help="file format (default: guessed from the file name)")
    add_json_arg(check)
    check.set_defaults(func=_check)


def _stats(args: argparse.Namespace) -> int:
    from kg_data import load_dataset

    kg = load_dataset(args.dataset, args.data_dir)
    stats = kg.stats()
    payload = {**stats, "dataset": kg.name, "duplicates": kg.duplicates}
    if kg.entity_texts is not None:
        payload["entities_with_text"] = len(kg.entity_texts)
    lines = [f"{kg.name}"] + [f"  {key:<9} {value:>9,}" for key, value in stats.items()]
    dup = sum(kg.duplicates.values())
    lines.append(f"  duplicate triples: {dup}" + (f" {kg.duplicates}" if dup else ""))
    emit(args, payload, "\n".join(lines))
    return 0


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


def _check(args: argparse.Namespace) -> int:
    from kg_data.edits import read_edit_cases, read_records, read_stable_facts
    from kg_data.formats import read_labels, read_text_map, read_triple_columns

    path = Path(args.file)
    kind = args.kind or _guess_kind(path)
    summary: dict[str, Any] = {"file": str(path), "kind": kind, "valid": True}
    if kind == "triples":
        heads, rels, tails = read_triple_columns(path)
        rows = list(zip(heads, rels, tails))
        summary.update(triples=len(rows), entities=len(set(heads) | set(tails)), relations=len(set(rels)),
                       duplicates=len(rows) - len(set(rows)))
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
    emit(args, summary, text)
    return 0
