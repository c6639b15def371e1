"""Benchmark: the full KG edit table over several built edit sets (issue 15), mean ± sd over sets.

For each kind (E-, A-) and each build seed, an edit set is built (``deltakg editset build`` settings below, or
reused from ``--out`` when its ``editset.json`` matches) and ``deltakg benchmark-edits`` runs on it (settings
tuned on dev, RK on stable_test, trainable methods over ``--seeds``). The JSON line aggregates each method's
per-set means over the sets: mean and standard deviation across sets, plus the per-set values.

    python benchmarks/edit_suite.py --dataset umls --out runs/edit-suite
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from deltakg.editing.benchmark import REPORTED, BenchmarkConfig, benchmark_edits, write_plots  # noqa: E402

# edit-set builds per dataset and kind: the CI/docs E-UMLS recipe (dense UMLS needs max_answers 1), A- by hold-out
BUILDS: dict[str, dict[str, dict[str, Any]]] = {
    "umls": {
        "edit": dict(size=200, candidates=600, max_answers=1, stable_size=300, epochs=10, lr=3e-3),
        "add": dict(size=200, stable_size=300, epochs=6, lr=3e-3),
    },
    "nations": {
        "edit": dict(size=60, candidates=400, max_answers=1, stable_size=150, epochs=10, lr=3e-3),
        "add": dict(size=60, stable_size=150, epochs=6, lr=3e-3),
    },
}


def _build(dataset: str, kind: str, seed: int, out: Path, smoke: bool) -> Path:
    from deltakg.editsets import build_editset
    from deltakg.kge.training import TrainConfig
    from kg_data import load_dataset

    spec = dict(BUILDS[dataset][kind])
    epochs, lr = spec.pop("epochs"), spec.pop("lr")
    if smoke:
        spec.update(size=min(spec["size"], 40), stable_size=min(spec["stable_size"], 60))
        epochs = min(epochs, 3)
    folder = out / f"{'E' if kind == 'edit' else 'A'}-{dataset}-seed{seed}"
    if (folder / "editset.json").is_file():
        info = json.loads((folder / "editset.json").read_text())
        if info.get("seed") == seed and info["parameters"]["size"] == spec["size"]:
            return folder
    config = TrainConfig(epochs=epochs, batch_size=64, lr=lr, label_smoothing=0.0, patience=None, progress=False,
                         seed=seed, precision="32-true", decoder_dtype="float32")
    build_editset(load_dataset(dataset), kind, folder, encoder="tiny", use_text=False, layers=2, seed=seed,
                  train_config=config, overwrite=True, **spec)
    return folder


def _aggregate(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    methods = [row["method"] for row in reports[0]["rows"]]
    out = []
    for method in methods:
        per_set = [next(r for r in rep["rows"] if r["method"] == method) for rep in reports]
        row: dict[str, Any] = {"method": method, "sets": len(per_set), "std": {}, "per_set": {}}
        for key in REPORTED:
            values = [r[key] for r in per_set]
            row[key] = statistics.fmean(values)
            row["std"][key] = statistics.stdev(values) if len(values) > 1 else 0.0
            row["per_set"][key] = [round(v, 4) for v in values]
        row["params"] = per_set[0].get("params", {})
        row["settings"] = [r.get("settings") for r in per_set]
        out.append(row)
    return out


def _sequential(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The final point of each method's sequential curve, averaged over sets."""
    finals: dict[str, list[dict[str, Any]]] = {}
    for rep in reports:
        last: dict[str, dict[str, Any]] = {}
        for point in rep["sequential"]:
            last[point["method"]] = point
        for method, point in last.items():
            finals.setdefault(method, []).append(point)
    return [{"method": m, "edits": min(p["edits"] for p in pts),
             "succ@1": statistics.fmean(p["succ@1"] for p in pts), "rk@3": statistics.fmean(p["rk@3"] for p in pts),
             "sets": len(pts)} for m, pts in finals.items()]


def main(argv: Sequence[str] | None = None) -> int:
    """Build, benchmark and aggregate; print one JSON line."""
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="umls", choices=sorted(BUILDS))
    p.add_argument("--kinds", default="edit,add")
    p.add_argument("--set-seeds", default="0,1,2", help="build seeds: one edit set each")
    p.add_argument("--seeds", default="0,1,2", help="training seeds of trainable methods")
    p.add_argument("--methods", default="all")
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    p.add_argument("--sequential", type=int, default=100)
    p.add_argument("--tune-budget", type=int, default=6)
    p.add_argument("--editor-epochs", type=int, default=None)
    p.add_argument("--out", required=True, help="folder for the edit sets, reports and plots")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny sets and budgets (CI)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    methods = [] if args.methods == "all" else args.methods.split(",")
    ints = lambda text: [int(v) for v in text.split(",") if v.strip()]  # noqa: E731
    started = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "edit_suite", "dataset": args.dataset, "kinds": {}}
    for kind in args.kinds.split(","):
        reports = []
        for set_seed in ints(args.set_seeds):
            folder = _build(args.dataset, kind, set_seed, out, args.smoke)
            config = BenchmarkConfig(methods=methods, batch_sizes=ints(args.batch_sizes), sequential=args.sequential,
                                     seeds=ints(args.seeds), tune_budget=args.tune_budget,
                                     editor_epochs=args.editor_epochs, progress=False)
            report = benchmark_edits(folder / "model", folder, config, work_dir=folder / "editors",
                                     log=lambda m: print(m, file=sys.stderr, flush=True))
            write_plots(report, folder / "plots")
            (folder / "report.json").write_text(json.dumps(report, indent=1))
            reports.append(report)
        result["kinds"][kind] = {
            "sets": [str(Path(r["editset"]).name) for r in reports],
            "test_cases": [r["test_cases"] for r in reports],
            "rk_facts": reports[0]["rk_facts"],
            "rows": _aggregate(reports),
            "sequential": _sequential(reports),
        }
    from deltakg.kge.precision import cpu_info

    result.update(seconds=round(time.perf_counter() - started, 1), cpu=cpu_info(), threads=torch.get_num_threads(),
                  set_seeds=ints(args.set_seeds), seeds=ints(args.seeds))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
