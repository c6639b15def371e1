"""Peak resident memory of training our model on FB15k-237 with the default encoder.

Runs ``deltakg train`` in a child process for a bounded number of steps of the first epoch (a full epoch
of 544,230 queries through MiniLM takes hours on 2 CPU cores; resident memory reaches its plateau within
the first steps, which the two step counts show) and reads the child's peak RSS from the kernel. The same
run measures PyKEEN's RotatE training on the same data as a peer.

    python benchmarks/train_memory.py [--steps 20 60] [--data-dir DIR]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GIB = 1024**3

_PYKEEN = """
import sys, torch
from kg_data import load_dataset, to_pykeen
from pykeen.models import RotatE
from pykeen.training import SLCWATrainingLoop
kg = load_dataset("fb15k237", sys.argv[1])
tf = to_pykeen(kg, "train")
model = RotatE(triples_factory=tf, embedding_dim=500, random_seed=0)
loop = SLCWATrainingLoop(model=model, triples_factory=tf, optimizer="adam", optimizer_kwargs=dict(lr=1e-3),
                         negative_sampler_kwargs=dict(num_negs_per_pos=64))
loop.train(triples_factory=tf, num_epochs=1, batch_size=512, use_tqdm=False, sub_batch_size=None,
           callbacks=[], gradient_clipping_max_norm=None)
"""


def _peak_rss_of(cmd: list[str], env: dict) -> tuple[int, float, int]:
    """Run ``cmd``; return (peak RSS bytes, seconds, exit code) of that child alone."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # a fresh child so that RUSAGE_CHILDREN covers this command only
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-2000:])
        os._exit(proc.returncode)
    _, status, usage = os.wait4(pid, 0)
    return usage.ru_maxrss * 1024, time.perf_counter() - start, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("DELTAKG_DATA", str(REPO.parent / "shared/data/kg")))
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 60])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--no-pykeen", action="store_true")
    args = parser.parse_args()
    if not (Path(args.data_dir) / "FB15k237" / "train.tsv").is_file() and not (Path(args.data_dir) / "train.tsv").is_file():
        print(json.dumps({"benchmark": "train_memory", "skipped": f"no FB15k237 under {args.data_dir}"}))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs = []
    for steps in args.steps:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "deltakg", "train", "--dataset", "fb15k237", "--data-dir", args.data_dir,
                   "--encoder", args.encoder, "--epochs", "1", "--max-steps", str(steps), "--batch-size",
                   str(args.batch_size), "--no-progress", "--no-resume", "--out", out]
            rss, seconds, code = _peak_rss_of(cmd, env)
        if code:
            raise SystemExit(f"deltakg train failed with exit code {code}")
        runs.append({"steps": steps, "peak_rss_gib": round(rss / GIB, 3), "seconds": round(seconds, 1)})
    result = {
        "benchmark": "train_memory",
        "dataset": "fb15k237",
        "encoder": args.encoder,
        "batch_size_triples": args.batch_size,
        "queries_per_step": 2 * args.batch_size,
        "ours": runs,
        "ours_peak_rss_gib": max(r["peak_rss_gib"] for r in runs),
        "goal_gib": 4.0,
    }
    if not args.no_pykeen:
        with tempfile.TemporaryDirectory() as home:
            rss, seconds, code = _peak_rss_of([sys.executable, "-c", _PYKEEN, args.data_dir], {**env, "PYSTOW_HOME": home})
        result["pykeen_rotate_epoch"] = {"peak_rss_gib": round(rss / GIB, 3), "seconds": round(seconds, 1), "exit": code}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
