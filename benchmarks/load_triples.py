"""Benchmark: load FB15k-237 train.tsv (272,115 triples, CRLF) into our store vs PyKEEN.

Ours:   ``KnowledgeGraph.from_files({"train": path})``  (read, validate, build vocabularies, map to ids)
PyKEEN: ``TriplesFactory.from_path(path)``              (the same work in PyKEEN)

Both libraries are imported before timing and each loader runs once as a warm-up; then the two loaders
alternate for ``--runs`` rounds and the medians are compared. Prints ONE JSON line, e.g.

    {"benchmark": "load_triples", "file": ".../FB15k237/train.tsv", "triples": 272115,
     "ours_median_s": 0.41, "pykeen_median_s": 0.83, "ratio": 0.49, ...}

``ratio`` = ours / PyKEEN (goal: <= 1.0). The data folder is ``--data-dir``, else ``$DELTAKG_DATA``, else
``<repo>/../shared/data/kg``; when the file is absent the script prints a ``"skipped"`` JSON line and exits 0.

Usage: python benchmarks/load_triples.py [--data-dir DIR] [--runs 5] [--max-ratio R]
(with --max-ratio the exit code is 1 when the ratio exceeds R).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

BENCHMARK = "load_triples"
DATA_ENV = "DELTAKG_DATA"
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kg"


def find_train_file(data_dir: str | None) -> Path:
    root = Path(data_dir or os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)
    for candidate in (root / "FB15k237" / "train.tsv", root / "train.tsv"):
        if candidate.is_file():
            return candidate
    return root / "FB15k237" / "train.tsv"


def timed(fn) -> tuple[float, object]:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help=f"folder holding FB15k237/ (default: ${DATA_ENV} or ../shared/data/kg)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each loader (default 5)")
    parser.add_argument("--max-ratio", type=float, default=None, help="exit 1 when ours/pykeen exceeds this")
    args = parser.parse_args(argv)

    path = find_train_file(args.data_dir)
    if not path.is_file():
        print(json.dumps({"benchmark": BENCHMARK, "skipped": f"FB15k-237 train file not found: {path}"}))
        return 0

    # imports first: their cost is not part of the measurement
    import pykeen
    import torch
    from pykeen.triples import TriplesFactory

    from kg_data import KnowledgeGraph

    logging.getLogger("pykeen").setLevel(logging.ERROR)

    def ours():
        return KnowledgeGraph.from_files({"train": path})

    def theirs():
        return TriplesFactory.from_path(path)

    # warm-up (file cache, lazy imports inside both libraries) and a sanity check: same counts
    _, kg = timed(ours)
    _, tf = timed(theirs)
    if (kg.train.shape[0], kg.num_entities, kg.num_relations) != (tf.num_triples, tf.num_entities, tf.num_relations):
        raise SystemExit(f"loaders disagree: ours {kg.stats()} vs PyKEEN {tf.num_triples} triples")
    del kg, tf

    ours_s, theirs_s = [], []
    for _ in range(args.runs):  # alternate so that drifts of the machine hit both alike
        ours_s.append(timed(ours)[0])
        theirs_s.append(timed(theirs)[0])
    _, kg = timed(ours)

    ours_median, theirs_median = statistics.median(ours_s), statistics.median(theirs_s)
    ratio = ours_median / theirs_median
    print(
        json.dumps(
            {
                "benchmark": BENCHMARK,
                "file": str(path),
                "triples": int(kg.train.shape[0]),
                "entities": kg.num_entities,
                "relations": kg.num_relations,
                "runs": args.runs,
                "ours_median_s": round(ours_median, 4),
                "pykeen_median_s": round(theirs_median, 4),
                "ratio": round(ratio, 3),
                "ours_runs_s": [round(s, 4) for s in ours_s],
                "pykeen_runs_s": [round(s, 4) for s in theirs_s],
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "pykeen": pykeen.get_version(),
            }
        )
    )
    if args.max_ratio is not None and ratio > args.max_ratio:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
