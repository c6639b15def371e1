"""Mean and standard deviation over seeds of ``benchmarks/llm_edit.py --partial`` result lines.

Usage: ``python benchmarks/llm_edit_summary.py FILE.jsonl [FILE.jsonl ...] [--markdown]``. Lines are grouped by
(mode, n_edits, result row, side); each metric's mean and sample standard deviation over the seeds present is
printed as one JSON line (or a Markdown table with ``--markdown``). Lines with an ``error`` are counted apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

METRICS = ("reliability", "generalization", "locality", "portability", "exact_match", "success", "fluency",
           "time_per_edit_s")


def summarise(lines: list[dict]) -> list[dict]:
    """One row per (mode, n_edits, result, side): seeds, mean and sd of each metric, errors."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for line in lines:
        groups[(line["mode"], line["n_edits"], line["result"], line["side"])].append(line)
    rows = []
    for (mode, n_edits, result, side), members in groups.items():
        ok = [m for m in members if "error" not in m]
        row = {"mode": mode, "n_edits": n_edits, "result": result, "side": side,
               "seeds": sorted(m["seed"] for m in ok), "errors": len(members) - len(ok)}
        for key in METRICS:
            values = [m[key] for m in ok if m.get(key) is not None]
            if values:
                row[key] = {"mean": round(statistics.fmean(values), 4),
                            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None}
        if ok and "pre" in ok[0]:
            row["pre_reliability"] = round(statistics.fmean(m["pre"]["reliability"] for m in ok), 4)
        rows.append(row)
    return rows


def _cell(value: dict | None) -> str:
    if not value:
        return ""
    return f"{value['mean']:.3f}" + (f" ± {value['sd']:.3f}" if value["sd"] is not None else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    lines = []
    for name in args.files:
        for number, text in enumerate(Path(name).read_text(encoding="utf-8").splitlines(), 1):
            if text.strip():
                try:
                    lines.append(json.loads(text))
                except json.JSONDecodeError as err:
                    raise SystemExit(f"{name}:{number}: not a JSON line ({err.msg})") from None
    rows = summarise(lines)
    if not args.markdown:
        for row in rows:
            print(json.dumps(row))
        return
    shown = ("reliability", "generalization", "locality", "exact_match", "success", "fluency", "time_per_edit_s")
    print("| mode | row | side | seeds | " + " | ".join(shown) + " |")
    print("|---|---|---|---|" + "---|" * len(shown))
    for row in rows:
        cells = [_cell(row.get(k)) for k in shown]
        print(f"| {row['mode']} | {row['result']} | {row['side']} | {len(row['seeds'])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
