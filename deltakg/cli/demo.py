"""``deltakg demo``: train, compare with PyKEEN, build an edit set, run every editor, edit a GPT-2, k-NN (UMLS)."""

from __future__ import annotations

import argparse
import contextlib
import sys

from ._common import add_command, add_json_arg, add_progress_arg, emit


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``demo``."""
    demo = add_command(commands, "demo",
                       "the main job: train a KG model on UMLS and compare it with PyKEEN, build E-UMLS and run every "
                       "KG editor on it (paper-layout table, plots), edit a small GPT-2 trained on UMLS facts, kNN-KGE; "
                       "--fast: about 4 minutes on 2 CPU cores; the full sizes: about 10 (estimated)")
    demo.add_argument("--fast", action="store_true", help="small sizes: about 4 minutes on 2 CPU cores")
    demo.add_argument("--out", default="deltakg-demo", metavar="DIR",
                      help="folder for the models, the edit set, the plots (PNG) and report.json; a rerun with the "
                           "same folder reuses finished stages")
    add_progress_arg(demo)
    add_json_arg(demo)
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from deltakg.demo import DemoConfig, DemoFolder, format_report, run_demo

    DemoFolder(args.out)  # refuse a foreign folder before anything is imported or trained
    # Lightning and PyKEEN report on stdout; keep stdout for the table (or the one JSON object)
    with contextlib.redirect_stdout(sys.stderr):
        report = run_demo(args.out, DemoConfig.for_size(args.fast), progress=not args.no_progress)
    emit(args, report, format_report(report) + f"\n\nreport, models, edit set and plots: {args.out}")
    return 0
