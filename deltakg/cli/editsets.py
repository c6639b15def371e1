"""``deltakg editset build``: deltaKG edit sets (EDIT / ADD) with their base model."""

from __future__ import annotations

import argparse
import contextlib
import sys

from ._common import (CommandError, add_command, add_dataset_args, add_json_arg, add_model_layout_args,
                      add_progress_arg, add_training_args, count_or_fraction, emit, layout_kwargs, non_negative_int,
                      positive_float, positive_int, train_config)


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``editset build``."""
    from deltakg.editsets import HOLDOUT_MODES, KINDS

    editset = add_command(commands, "editset", "build deltaKG edit sets (EDIT / ADD) with their base model")
    sub = editset.add_subparsers(dest="editset_command", metavar="SUBCOMMAND", required=True)
    build = add_command(sub, "build", "corrupt (edit) or hold out (add) facts, train the base model, select edit "
                                      "cases and stable facts")
    add_dataset_args(build)
    build.add_argument("--kind", required=True, choices=KINDS,
                       help="edit: corrupted facts the model learnt; add: held-out facts it never saw")
    build.add_argument("--out", required=True,
                       help="output folder: model/, train/dev/test.jsonl, stable_train/dev/test.jsonl, editset.json")
    # a different default from `train` on purpose: an edit set's base model is trained and edited many times
    # over in a benchmark, and the tiny encoder builds one in minutes on a CPU
    add_model_layout_args(build, encoder_default="tiny",
                          reason=" (default: tiny, unlike train: a base model built in minutes on a CPU)")
    build.add_argument("--size", type=positive_int, default=500, help="edit cases wanted, all splits")
    build.add_argument("--candidates", type=count_or_fraction, default=None,
                       help="triples to corrupt / hold out: a count or a fraction of train "
                            "(default: oversample x size)")
    build.add_argument("--oversample", type=positive_float, default=None,
                       help="default candidates = oversample x size (default: 3 for edit, 1.5 for add)")
    build.add_argument("--holdout", default="triples", choices=HOLDOUT_MODES,
                       help="add: hold out random triples, or all triples of random entities")
    build.add_argument("--max-answers", type=positive_int, default=None,
                       help="edit: only corrupt facts whose query has at most this many true answers "
                            "(1 makes the target the unique answer; dense KGs such as UMLS need it; default: any)")
    build.add_argument("--stable-size", type=non_negative_int, default=1000, help="stable facts wanted")
    build.add_argument("--split", default="0.6,0.2,0.2", help="train,dev,test fractions of the edit cases")
    build.add_argument("--stable-split", default="0.5,0.25,0.25",
                       help="train,dev,test fractions of the stable facts: disjoint pools for a method's locality "
                            "training signal, selection, and the only facts RK is reported on")
    # early stopping off by default, unlike train: the base model must fit its (corrupted) training facts,
    # which valid MRR does not reward
    add_training_args(build, epochs=20, patience=0, advanced=False,
                      patience_reason=", unlike train: the base model must memorise its corrupted training facts")
    # fp32 unless asked: the same edit-set files on every machine, whatever auto precision would pick
    build.set_defaults(precision="32-true")
    build.add_argument("--overwrite", action="store_true", help="replace an edit set already in --out")
    add_progress_arg(build)
    add_json_arg(build)
    build.set_defaults(func=_build)


def _fractions(value: str, option: str = "--split", example: str = "0.6,0.2,0.2") -> list[float]:
    try:
        split = [float(v) for v in value.split(",")]
    except ValueError:
        raise CommandError(f"{option}: expected three fractions like {example}, got {value!r}") from None
    return split


def _build(args: argparse.Namespace) -> int:
    from deltakg.editsets import build_editset

    from .kge import load_kg

    split = _fractions(args.split)
    stable_split = _fractions(args.stable_split, "--stable-split", "0.5,0.25,0.25")
    config = train_config(args, decoder_dtype="float32")
    kg = load_kg(args)
    # Lightning reports on stdout; keep stdout for the JSON line
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        build = build_editset(
            kg, args.kind, args.out, **layout_kwargs(args), size=args.size, candidates=args.candidates,
            oversample=args.oversample, holdout=args.holdout, max_answers=args.max_answers,
            stable_size=args.stable_size, split=split, stable_split=stable_split, seed=args.seed, train_config=config,
            overwrite=args.overwrite,
        )
    out = build.out_dir
    counts = build.counts
    payload = {
        "kind": build.kind,
        "dataset": kg.name,
        "seed": args.seed,
        "out": str(out),
        "counts": counts,
        "valid_mrr": build.info["base_model"]["valid_mrr"],
        "paths": {
            "model": str(build.model_dir),
            **{name: str(out / f"{name}.jsonl") for name in ("train", "dev", "test")},
            **{f"stable_{name}": str(out / f"stable_{name}.jsonl") for name in ("train", "dev", "test")},
            "editset": str(out / "editset.json"),
        },
        "seconds": build.seconds,
    }
    cases = counts["edit_cases"]
    prefix = "E" if build.kind == "edit" else "A"
    mrr = payload["valid_mrr"]
    text = (
        f"{prefix}-{kg.name}: {cases['train']}/{cases['dev']}/{cases['test']} edit cases (train/dev/test), "
        f"{counts['stable']} stable facts ({'/'.join(str(counts['stable_pools'][p]) for p in ('train', 'dev', 'test'))}"
        f" train/dev/test pools); base model valid MRR "
        f"{'n/a' if mrr is None else f'{mrr:.4f}'}; written to {out}"
    )
    emit(args, payload, text)
    return 0
