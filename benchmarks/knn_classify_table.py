"""Markdown table of ``deltakg knn-classify --out FILE`` results: one line per (task, setting), mean ± sd over seeds.

Usage: ``python benchmarks/knn_classify_table.py runs/knn_text/*.json``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = ("plain", "knn_infer", "knn_train_infer")


def table(paths: list[str]) -> str:
    """The table of the given result files, in the given order."""
    lines = ["| task | setting | metric | test n | seeds | plain | +kNN infer | +kNN train+infer | "
             "train+infer model alone | mixture (k, T, λ) chosen |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        r = json.loads(Path(path).read_text())
        cells = [f"{100 * r['rows'][row]:.1f} ± {100 * r['sd'][row]:.1f}" for row in ROWS]
        seeds = list(r["per_seed"].values())
        alone = [s["knn_train_infer_model_alone"] for s in seeds]
        mean = sum(alone) / len(alone)
        sd = (sum((a - mean) ** 2 for a in alone) / max(1, len(alone) - 1)) ** 0.5
        mixes = "; ".join(f"{m['k']}, {m['temperature']}, {m['lambda']}"
                          for m in (s["knn_train_infer_mixture"] for s in seeds))
        lines.append(f"| {r['task']} | {r['setting']} | {r['metric']} | {r['test_size']} of {r['test_size_total']} | "
                     f"{','.join(map(str, r['seeds']))} | {' | '.join(cells)} | {100 * mean:.1f} ± {100 * sd:.1f} | "
                     f"{mixes} ({seeds[0]['knn_train_infer_mixture']['chosen_on'].split(' (')[0]}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1:]))
