"""Choose ROME / MEMIT settings for benchmarks/llm_edit.py on the DEV part of a toy model's known facts.

Every (method, key position, side) tries the settings of ``benchmarks/configs/llm_edit_grid.json`` (the same
number for ours and for EasyEdit; ``llm_edit_batch_grid.json`` / ``llm_edit_sequential_grid.json`` for the
other modes), each a run of ``llm_edit.py --split dev``; the one with the highest (reliability + locality) / 2
on dev wins (with ``--tolerance T``: the fastest of those within T of it). Prints one JSON line: every setting's
dev metrics and, per row, the chosen setting with the ``--ours`` / ``--peer-set`` arguments that reproduce it on the test part.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GRID = HERE / "configs" / "llm_edit_grid.json"
PEER_FLAG = {"ours": "--ours", "easyedit": "--peer-set"}


def _score(result: dict) -> float:
    return (result["reliability"] + result["locality"]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="toy model folder (deltakg llm-train-toy)")
    parser.add_argument("--n-edits", type=int, default=20, help="dev edits per setting")
    parser.add_argument("--mode", choices=("single", "batch", "sequential"), default="single",
                        help="single edits, all --n-edits in one batch, or --n-edits sequential edits measured on "
                             "the final model (choose a method's settings in the mode it is reported in; --grid then "
                             "names that mode's grid)")
    parser.add_argument("--methods", default="rome,memit")
    parser.add_argument("--key-positions", default="subject_last,prompt_last")
    parser.add_argument("--sides", default="ours,easyedit")
    parser.add_argument("--grid", default=str(GRID))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="choose the fastest setting whose dev score is within this of the side's best (0: the "
                             "best score; a speed grid uses e.g. 0.005, the same for both sides)")
    args = parser.parse_args()
    grid = json.loads(Path(args.grid).read_text())
    started = time.perf_counter()
    tried, chosen = [], {}
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        for position in [p.strip() for p in args.key_positions.split(",") if p.strip()]:
            for side in [s.strip() for s in args.sides.split(",") if s.strip()]:
                row = f"{method}/{position}"
                best = None
                for setting in grid[method][side]:
                    flags = [x for k, v in setting.items() for x in (PEER_FLAG[side], f"{method}.{k}={json.dumps(v)}")]
                    cmd = [sys.executable, str(HERE / "llm_edit.py"), "--mode", args.mode, "--model", args.model,
                           "--split", "dev", "--n-edits", str(args.n_edits), "--methods", method, "--key-positions",
                           position, "--sides", side, "--seed", str(args.seed), "--threads", str(args.threads),
                           "--fluency-tokens", "0", *flags]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                         env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"})
                    if out.returncode != 0:
                        raise SystemExit(f"{row} {side} {setting}: llm_edit.py failed:\n{out.stderr[-2000:]}")
                    result = json.loads(out.stdout.strip().splitlines()[-1])["results"][row][side]
                    entry = {"row": row, "side": side, "setting": setting,
                             **({"error": result["error"]} if "error" in result else
                                {k: result[k] for k in ("reliability", "generalization", "locality", "exact_match",
                                                        "success", "time_per_edit_s")})}
                    tried.append(entry)
                    print(json.dumps(entry), file=sys.stderr, flush=True)
                runs = [e for e in tried if e["row"] == row and e["side"] == side and "error" not in e]
                if runs:
                    top = max(_score(e) for e in runs)
                    near = [e for e in runs if _score(e) >= top - args.tolerance]
                    best = min(near, key=lambda e: e["time_per_edit_s"]) if args.tolerance else near[0]
                if best is not None:
                    chosen.setdefault(row, {})[side] = {
                        "setting": best["setting"], "dev_score": round(_score(best), 4),
                        "args": [x for k, v in best["setting"].items()
                                 for x in (PEER_FLAG[side], f"{method}.{k}={json.dumps(v)}")]}
    print(json.dumps({"benchmark": "llm_edit_tune", "split": "dev", "mode": args.mode, "n_edits": args.n_edits,
                      "seed": args.seed,
                      "model": args.model, "chosen": chosen, "tried": tried,
                      "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
