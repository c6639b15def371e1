"""``deltakg benchmark-edits``: every KG editor on one edit set, tuned on dev, reported on test (issue 15)."""

from __future__ import annotations

import argparse
import contextlib
import sys

from ._common import (CommandError, add_command, add_json_arg, add_progress_arg, emit, int_list, name_list,
                      non_negative_int, positive_float, positive_int)


def _seed_list(value: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (integers >= 0)."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers >= 0, got {value!r}")
    return [non_negative_int(p) for p in parts]


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``benchmark-edits``; method names come from the editor registry."""
    from deltakg.editing.benchmark import kge_methods

    bench = add_command(commands, "benchmark-edits",
                        "the paper-layout edit table: every KG editor tuned on dev, scored on test (mean ± sd)")
    bench.add_argument("--model", required=True, help="the base model the edits apply to (an edit set's DIR/model)")
    bench.add_argument("--editset", required=True, help="an edit-set folder with dev and test cases")
    bench.add_argument("--methods", default="all",
                       help=f"all, or a comma-separated list of: {', '.join(kge_methods())}")
    bench.add_argument("--batch-sizes", type=int_list, default="1,2,4,8,16,32",
                       help="edits per batch to report (each batch on the unedited model)")
    bench.add_argument("--main-batch-size", type=positive_int, default=None,
                       help="the batch size of the table's rows and of tuning (default: 2 if listed, else the first)")
    bench.add_argument("--sequential", type=non_negative_int, default=0,
                       help="also apply this many test edits one batch after another (0: no sequential run)")
    bench.add_argument("--seeds", type=_seed_list, default="0,1,2",
                       help="training seeds of trainable methods (deterministic methods run once)")
    bench.add_argument("--tune-budget", type=positive_int, default=6,
                       help="settings tried per method on dev (grids: deltakg/configs/edit_search.json)")
    bench.add_argument("--no-tune", action="store_true", help="each method's defaults, no search on dev")
    bench.add_argument("--editor-epochs", type=positive_int, default=None, help="trainable methods' epochs")
    bench.add_argument("--editor-minutes", type=positive_float, default=None, metavar="MINUTES",
                       help="cap on each trainable method's training time")
    bench.add_argument("--out", default=None, help="folder for the plots (PNG), report.json and trained editors")
    add_progress_arg(bench)
    add_json_arg(bench)
    bench.set_defaults(func=_benchmark)


def _benchmark(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from deltakg.editing.benchmark import BenchmarkConfig, benchmark_edits, markdown_table, write_plots

    methods = [] if args.methods.strip() == "all" else name_list(args.methods)
    config = BenchmarkConfig(methods=methods, batch_sizes=args.batch_sizes, main_batch_size=args.main_batch_size,
                             sequential=args.sequential, seeds=args.seeds, tune=not args.no_tune,
                             tune_budget=args.tune_budget, editor_epochs=args.editor_epochs,
                             editor_minutes=args.editor_minutes, progress=not args.no_progress)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise CommandError(f"--out: {out} exists and is not a folder")
    started = time.perf_counter()
    log = (lambda message: print(f"deltakg: {message}", file=sys.stderr))
    with contextlib.redirect_stdout(sys.stderr):  # Lightning's messages while editors train
        report = benchmark_edits(args.model, args.editset, config,
                                 work_dir=(out / "editors") if out is not None else None, log=log)
    report["seconds"] = round(time.perf_counter() - started, 1)
    table = markdown_table(report)
    if out is not None:
        report["plots"] = [str(p) for p in write_plots(report, out)]
        (out / "report.json").write_text(json.dumps(report, indent=1))
    lines = [f"{args.editset}: {report['test_cases']} test edits, batch {report['batch_size']}, RK on "
             f"{report['rk_facts']}, settings tuned on {report['tuned_on']}", table]
    for point in report["sequential"]:
        lines.append(f"  sequential {point['method']}: {point['edits']} edits  Succ@1 {point['succ@1']:.3f}  "
                     f"RK@3 {point['rk@3']:.3f}")
    emit(args, report, "\n".join(lines))
    return 0
