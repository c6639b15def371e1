"""``deltakg train-editor`` and ``deltakg edit``: edit methods from the editor registry."""

from __future__ import annotations

import argparse
import contextlib
import sys

from ._common import (CommandError, add_command, add_json_arg, add_progress_arg, emit, non_negative_int,
                      positive_float, positive_int)


def _methods() -> dict:
    from deltakg.editing import EDITORS

    return {name: cls for name, cls in EDITORS.items() if "kge" in cls.families}


def _listing(methods: dict) -> str:
    return "; ".join(f"{name}: {cls.summary}" if cls.summary else name for name, cls in sorted(methods.items()))


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``train-editor`` and ``edit``; method choices come from the editor registry."""
    methods = _methods()
    trainable = {name: cls for name, cls in methods.items() if cls.trainable}

    train = add_command(commands, "train-editor", "train an edit method that learns from an edit set's train cases")
    train.add_argument("--method", required=True, choices=sorted(trainable), help=_listing(trainable))
    train.add_argument("--model", required=True, help="the model the edits apply to (an edit set's DIR/model)")
    train.add_argument("--editset", required=True, help="an edit-set folder (train/dev/test.jsonl, stable_*.jsonl); the editor sees its train and "
                            "dev cases and stable_train/stable_dev, never test cases or stable_test")
    train.add_argument("--out", required=True, help="output folder of the trained editor")
    train.add_argument("--max-time", type=positive_float, default=None, metavar="MINUTES",
                       help="stop training after this long (default: no limit)")
    group = train.add_argument_group("kgeditor options (default: deltakg/configs/kgeditor.json per dataset)")
    group.add_argument("--epochs", type=positive_int, default=None, help="training epochs")
    group.add_argument("--extra", type=positive_int, default=None, help="slot width")
    group.add_argument("--layers", type=int, nargs="+", default=None, help="slot layers, negative from the end")
    group.add_argument("--rounds", type=positive_int, default=None, help="most calibrated updates per edit")
    group.add_argument("--no-whiten", action="store_true",
                       help="use raw slot gradients (the paper) instead of key-whitened ones")
    group.add_argument("--no-calibrate", action="store_true",
                       help="one update of the hypernetwork's length per edit (the paper)")
    group.add_argument("--seed", type=int, default=None, help="training seed")
    add_progress_arg(train)
    add_json_arg(train)
    train.set_defaults(func=_train_editor)

    edit = add_command(commands, "edit", "apply an edit set's cases and report Succ@k, RK@k, ER_roc, RK_roc")
    edit.add_argument("--model", required=True, help="the model the edits apply to")
    edit.add_argument("--editset", required=True, help="an edit-set folder")
    edit.add_argument("--method", required=True, choices=sorted(methods), help=_listing(methods))
    edit.add_argument("--editor", default=None, help="a trained editor folder (methods that learn)")
    edit.add_argument("--split", default="test", choices=("train", "dev", "test"),
                      help="which edit cases; RK is measured on the stable pool of the same name")
    edit.add_argument("--batch-size", type=positive_int, default=2, help="edits per batch; 2 is the paper's")
    edit.add_argument("--sequential", action="store_true", help="let edits accumulate instead of resetting per batch")
    edit.add_argument("--limit", type=positive_int, default=None, help="only the first N edit cases (default: all)")
    edit.add_argument("--ft-steps", type=non_negative_int, default=10, help="ft: optimiser steps per batch")
    edit.add_argument("--ft-lr", type=positive_float, default=1e-3, help="ft: learning rate")
    add_json_arg(edit)
    edit.set_defaults(func=_edit)


def _load_editset(path: str):
    from kg_data.edits import EditSet

    return EditSet.load(path)


def _train_editor(args: argparse.Namespace) -> int:
    from deltakg.kge.model import MaskedEntityModel

    cls = _methods()[args.method]
    model = MaskedEntityModel.from_pretrained(args.model)
    # the editor never sees test cases or stable_test: RK is reported on facts it did not train or select on
    editset = _load_editset(args.editset).training_view()
    if "train" not in editset.cases:
        raise CommandError(f"--editset: {args.editset} has no train.jsonl to train the editor on")
    options = dict(epochs=args.epochs, seed=args.seed, extra=args.extra, layers=args.layers, rounds=args.rounds,
                   whiten=False if args.no_whiten else None, calibrate=False if args.no_calibrate else None)
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        metrics = cls.train_pretrained(model, editset.cases["train"], editset.pool("train"), args.out,
                                       dev_cases=editset.cases.get("dev"), dev_stable=editset.pool("dev"),
                                       max_time_minutes=args.max_time, progress=not args.no_progress, **options)
    metrics.update(out=str(args.out), method=args.method, stable_train=editset.pool_name("train"),
                   stable_dev=editset.pool_name("dev"))
    emit(args, metrics, f"editor saved to {args.out}")
    return 0


def _edit(args: argparse.Namespace) -> int:
    from deltakg.editing import run_edits
    from deltakg.kge.model import MaskedEntityModel

    cls = _methods()[args.method]
    editor = cls.from_options(args.editor, **{key: getattr(args, dest) for key, dest in cls.cli_options.items()})
    model = MaskedEntityModel.from_pretrained(args.model)
    editset = _load_editset(args.editset)
    if args.split not in editset.cases:
        raise CommandError(f"--split: {args.editset} has no {args.split}.jsonl (has {', '.join(editset.cases)})")
    cases = editset.cases[args.split][: args.limit] if args.limit else editset.cases[args.split]
    if cls.replays_stable_train and editset.stable_pools:
        # stable_train only; a single-pool set's facts are the ones RK is measured on, so nothing is replayed
        editor.set_replay(editset.pool("train"))
    # RK of dev cases on stable_dev (for tuning), of test cases on stable_test (for reporting)
    report = run_edits(editor, model, cases, editset.pool(args.split), batch_size=args.batch_size,
                       sequential=args.sequential)
    metrics = report.metrics
    metrics["rk_facts"] = editset.pool_name(args.split)
    text = (f"{metrics['method']} on {metrics['edits']} edits (batch {args.batch_size}"
            f"{', sequential' if args.sequential else ''}): Succ@1 {metrics['succ@1']:.3f}  Succ@3 {metrics['succ@3']:.3f}"
            f"  ER_roc {metrics['er_roc']:.3f}  RK@3 {metrics['rk@3']:.3f}  RK_roc {metrics['rk_roc']:.3f}"
            f"  time/edit {metrics['time_per_edit_s']:.4f}s  params {metrics['params']}")
    emit(args, metrics, text)
    return 0
