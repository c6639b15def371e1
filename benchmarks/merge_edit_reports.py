"""Merge ``deltakg benchmark-edits --json`` outputs of one edit set (one run per method) into one report.

Long sequential runs go one method at a time so that a stopped run keeps the methods it finished; this puts their
rows, curves and plots back together through the library's own table and plot code and prints one JSON line:

    python benchmarks/merge_edit_reports.py runs/life-a-umls-*.json --out docs/figures --name a-umls-life

A method run later joins an earlier merged report: pass that report first, then the new runs (a method already
in it keeps its first row; do not pass it twice, or its curve is listed twice).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from deltakg.editing.benchmark import markdown_table, write_plots

MERGED_LISTS = ("sequential", "by_batch_size")


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report: rows (the unedited model once), curves and tuning of every input, in input order; an input may
    itself be a merged report (to add methods run later)."""
    if not reports:
        raise ValueError("no reports to merge")
    sets = {r["editset"] for r in reports}
    if len(sets) != 1:
        raise ValueError(f"reports of several edit sets: {sorted(sets)}")
    merged = {k: v for k, v in reports[0].items() if k not in ("rows", "tuning", "seconds", "plots", *MERGED_LISTS)}
    merged["rows"], merged["tuning"], merged["seconds"] = [], {}, {}
    for key in MERGED_LISTS:
        merged[key] = []
    seen = set()
    for report in reports:
        for row in report["rows"]:
            if row["method"] not in seen:
                seen.add(row["method"])
                merged["rows"].append(row)
        for key in MERGED_LISTS:
            merged[key].extend(report.get(key, []))
        merged["tuning"].update(report.get("tuning", {}))
        if isinstance(report.get("seconds"), dict):  # an earlier merged report: its methods' seconds as they are
            merged["seconds"].update(report["seconds"])
        else:
            methods = [row["method"] for row in report["rows"] if row["method"] != "zsl"]
            merged["seconds"][",".join(methods)] = report.get("seconds")
    return merged


def main(argv: list[str] | None = None) -> int:
    """Merge the given report files; print the table and the last sequential point per method, one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="benchmark-edits --json outputs of one edit set")
    parser.add_argument("--out", type=Path, help="folder for the merged plots (edits_batch/sequential_NAME.png)")
    parser.add_argument("--name", default="merged", help="suffix of the plot files (default: merged)")
    args = parser.parse_args(argv)
    reports = []
    for path in args.reports:
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            print(f"merge_edit_reports: {path}: not a benchmark-edits JSON report ({err})", file=sys.stderr)
            return 2
    try:
        merged = merge_reports(reports)
    except (KeyError, ValueError) as err:
        print(f"merge_edit_reports: {err}", file=sys.stderr)
        return 2
    print(markdown_table(merged), file=sys.stderr)
    last = {}
    for point in merged["sequential"]:
        last[point["method"]] = point
    for method, point in last.items():
        print(f"sequential {method}: {point['edits']} edits, Succ@1 {point['succ@1']:.3f} RK@3 {point['rk@3']:.3f}",
              file=sys.stderr)
    if args.out:
        plots = []
        for path in write_plots(merged, args.out):
            named = path.with_name(f"{path.stem}_{args.name}{path.suffix}")
            path.replace(named)
            plots.append(named.as_posix())
        merged["plots"] = plots
    print(json.dumps({"benchmark": "merge_edit_reports", **merged}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
