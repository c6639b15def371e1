"""Peak resident memory of training our model on FB15k-237 with the default encoder.

A full epoch (2,126 steps of 256 queries through MiniLM) takes hours on 2 CPU cores, so the epoch's peak is
bounded instead of watched:

1. ``deltakg train`` in a child process for ``--steps`` steps of the first epoch (the real command);
2. ``worst_case``: the same training step (the LightningModule's loss, its AdamW) in a child process, fed the
   first epoch's ``--worst-steps`` **widest** batches, widest first (padded width decides every activation's
   size; batch size is fixed). Training bounds allocator caching (glibc serves large blocks with
   mmap, see ``deltakg.kge.allocator.bound_allocator_caching``), so resident memory follows the live tensors:
   the peak over the widest batches bounds the epoch's, and a flat RSS over the later steps shows no growth.

Peak RSS is read from the kernel for each child. The same run measures PyKEEN's RotatE epoch as a peer.

    python benchmarks/train_memory.py [--steps 20 60] [--worst-steps 40] [--data-dir DIR]

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


_WORST = """
import json, resource, sys, time, torch
from torch.nn import functional as F
from kg_data import load_dataset
from deltakg.kge.lightning import EpochShuffleSampler, LinkPredictionModule
from deltakg.kge.model import MaskedEntityModel
from deltakg.kge.allocator import bound_allocator_caching
data_dir, encoder, batch_size, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
checkpointing = sys.argv[5] == "1"
bound_allocator_caching()
torch.manual_seed(0)
kg = load_dataset("fb15k237", data_dir)
model = MaskedEntityModel.for_graph(kg, encoder)
if checkpointing:  # as deltakg.kge.training.train_model does
    model.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
module = LinkPredictionModule(model, kg, lr=5e-4, encoder_lr=5e-5)
optimizer = module.configure_optimizers()
order = torch.tensor(list(iter(EpochShuffleSampler(kg.train.shape[0], 0))))
batches = [kg.train[order[i:i + batch_size]] for i in range(0, len(order), batch_size)]
widths = []
for batch in batches:
    n = len(batch)
    sides = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    widths.append(model.builder.build(torch.cat([batch, batch]), sides)["input_ids"].shape[1])
ranked = sorted(range(len(batches)), key=lambda i: -widths[i])
model.train()
trace = []
for step, index in enumerate(ranked[:steps]):
    loss = module.training_step(batches[index], step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    trace.append([widths[index], round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)])
print(json.dumps({"epoch_max_width": max(widths), "epoch_min_width": min(widths), "batches": len(batches),
                  "trace_width_peak_gib": trace}))
"""


def _peak_rss_of(cmd: list[str], env: dict, stdout_to: str | None = None) -> tuple[int, float, int]:
    """Run ``cmd``; return (peak RSS bytes, seconds, exit code) of that child alone (stdout to a file if given)."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # a fresh child so that RUSAGE_CHILDREN covers this command only
        with open(stdout_to or os.devnull, "w") as sink:
            proc = subprocess.run(cmd, env=env, stdout=sink, stderr=subprocess.PIPE, text=True)
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
    parser.add_argument("--worst-steps", type=int, default=40, help="steps of the widest-first run (0: skip)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="train with --gradient-checkpointing")
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
                   str(args.batch_size), "--no-progress", "--overwrite", "--out", out]
            cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
            rss, seconds, code = _peak_rss_of(cmd, env)
        if code:
            raise SystemExit(f"deltakg train failed with exit code {code}")
        runs.append({"steps": steps, "peak_rss_gib": round(rss / GIB, 3), "seconds": round(seconds, 1)})
    result = {
        "benchmark": "train_memory",
        "dataset": "fb15k237",
        "encoder": args.encoder,
        "batch_size_triples": args.batch_size,
        "gradient_checkpointing": args.gradient_checkpointing,
        "queries_per_step": 2 * args.batch_size,
        "ours": runs,
        "ours_peak_rss_gib": max(r["peak_rss_gib"] for r in runs),
        "goal_gib": 4.0,
    }
    if args.worst_steps:
        with tempfile.NamedTemporaryFile("r", suffix=".json") as report:
            rss, seconds, code = _peak_rss_of([sys.executable, "-c", _WORST, args.data_dir, args.encoder,
                                               str(args.batch_size), str(args.worst_steps),
                                               "1" if args.gradient_checkpointing else "0"], env, report.name)
            if code:
                raise SystemExit(f"the widest-first run failed with exit code {code}")
            worst = json.loads(report.read().strip().splitlines()[-1])
        result["worst_case"] = {"steps": args.worst_steps, "peak_rss_gib": round(rss / GIB, 3),
                                "seconds": round(seconds, 1), **worst}
        result["ours_peak_rss_gib"] = max(result["ours_peak_rss_gib"], result["worst_case"]["peak_rss_gib"])
    if not args.no_pykeen:
        with tempfile.TemporaryDirectory() as home:
            rss, seconds, code = _peak_rss_of([sys.executable, "-c", _PYKEEN, args.data_dir], {**env, "PYSTOW_HOME": home})
        result["pykeen_rotate_epoch"] = {"peak_rss_gib": round(rss / GIB, 3), "seconds": round(seconds, 1), "exit": code}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
