"""The ``deltakg`` command line: thin wrappers that parse arguments, call the Python API and print.

Every command takes ``--json`` for machine-readable output. Bad input exits with code 2 and one line
naming the file, line and field (or the argument) and what was expected.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(payload) if getattr(args, "json", False) else text)


# ------------------------------------------------------------------------------------------- data
def _cmd_data_stats(args: argparse.Namespace) -> int:
    from kg_data import load_dataset

    kg = load_dataset(args.dataset, args.data_dir)
    stats = kg.stats()
    payload = {**stats, "dataset": kg.name, "duplicates": kg.duplicates}
    if kg.entity_texts is not None:
        payload["entities_with_text"] = len(kg.entity_texts)
    lines = [f"{kg.name}"] + [f"  {key:<9} {value:>9,}" for key, value in stats.items()]
    dup = sum(kg.duplicates.values())
    lines.append(f"  duplicate triples: {dup}" + (f" {kg.duplicates}" if dup else ""))
    _emit(args, payload, "\n".join(lines))
    return 0


_CHECK_KINDS = ("triples", "entity2text", "relation2text", "editset", "labels")


def _guess_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".jsonl"):
        return "editset"
    if name.startswith("entity2text"):
        return "entity2text"
    if name.startswith("relation2text"):
        return "relation2text"
    if name in ("entities.txt", "relations.txt"):
        return "labels"
    return "triples"


def _cmd_data_check(args: argparse.Namespace) -> int:
    from kg_data.edits import read_records, read_stable_facts, read_edit_cases
    from kg_data.formats import read_labels, read_text_map, read_triple_columns

    path = Path(args.file)
    kind = args.kind or _guess_kind(path)
    summary: dict[str, Any] = {"file": str(path), "kind": kind, "valid": True}
    if kind == "triples":
        heads, rels, tails = read_triple_columns(path)
        rows = list(zip(heads, rels, tails))
        summary.update(
            triples=len(rows),
            entities=len(set(heads) | set(tails)),
            relations=len(set(rels)),
            duplicates=len(rows) - len(set(rows)),
        )
        text = f"{path}: ok, {len(rows)} triples, {summary['entities']} entities, {summary['relations']} relations"
        if summary["duplicates"]:
            text += f", {summary['duplicates']} duplicate triple(s)"
    elif kind in ("entity2text", "relation2text"):
        texts = read_text_map(path, kind=kind.replace("2text", ""))
        summary.update(rows=len(texts))
        text = f"{path}: ok, {len(texts)} {kind.replace('2text', '')} texts"
    elif kind == "labels":
        labels = read_labels(path)
        summary.update(rows=len(labels))
        text = f"{path}: ok, {len(labels)} labels"
    else:
        records = read_records(path)
        is_stable = bool(records) and "triple" in records[0].data
        items = read_stable_facts(path) if is_stable else read_edit_cases(path)
        counts: dict[str, int] = {}
        for item in items:
            key = "stable" if is_stable else item.kind
            counts[key] = counts.get(key, 0) + 1
        summary.update(records=len(items), counts=counts)
        text = f"{path}: ok, {len(items)} records " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    _emit(args, summary, text)
    return 0


# ------------------------------------------------------------------------------------------ kge
def _load_kg(args: argparse.Namespace):
    from kg_data import load_dataset

    return load_dataset(args.dataset, args.data_dir)


# TrainConfig field <- command-line option; commands offer subsets of these options
_TRAIN_OPTIONS = {
    "epochs": "epochs", "max_steps": "max_steps", "max_time_minutes": "max_time", "batch_size": "batch_size",
    "train_type": "train_type", "fused_loss": "fused_loss", "lr": "lr", "encoder_lr": "encoder_lr",
    "label_smoothing": "label_smoothing", "weight_decay": "weight_decay", "val_subset": "val_subset",
    "pretrain_epochs": "pretrain_epochs", "seed": "seed", "accelerator": "accelerator", "devices": "devices",
    "strategy": "strategy", "num_nodes": "num_nodes", "precision": "precision",
    "gradient_checkpointing": "gradient_checkpointing", "sparse_last_layer": "sparse_last_layer",
    "decoder_dtype": "decoder_dtype", "fused_optimizer": "fused_optimizer", "bound_memory": "bound_memory",
}


def _train_config(args: argparse.Namespace):
    """A TrainConfig from whichever training options the command defines."""
    from deltakg.kge.training import TrainConfig

    values = {field: getattr(args, option) for field, option in _TRAIN_OPTIONS.items() if hasattr(args, option)}
    values["patience"] = args.patience or None
    values["progress"] = not args.no_progress
    if hasattr(args, "no_resume"):
        values["resume"] = not args.no_resume
    return TrainConfig(**values)


def _cmd_train(args: argparse.Namespace) -> int:
    from deltakg.kge.training import train_model

    kg = _load_kg(args)
    config = _train_config(args)
    # Lightning reports on stdout; keep stdout for the JSON line
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        result = train_model(
            kg,
            args.out,
            encoder=args.encoder,
            layers=args.layers,
            max_length=args.max_length,
            use_text=not args.no_text,
            dropout=args.dropout,
            inverse_relations=args.inverse_relations,
            readout=args.readout,
            compact=args.compact_input,
            init_from_text=args.init_from_text,
            config=config,
        )
    if result.is_global_zero:
        payload = {k: v for k, v in result.metrics.items() if k != "config"}
        payload.update(out=str(result.out), dataset=kg.name)
        _emit(args, payload, f"model saved to {result.out} (best valid MRR {payload['best_valid_mrr']})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import time

    import torch

    from deltakg.kge.evaluation import FilterIndex, evaluate_ranking
    from deltakg.kge.model import MaskedEntityModel

    model = MaskedEntityModel.from_pretrained(args.model)
    kg = _load_kg(args)
    model.check_vocabulary(kg)
    if args.split not in kg.splits:
        raise CommandError(f"--split: dataset {kg.name!r} has no split {args.split!r} (has {', '.join(kg.splits)})")
    filter_index = None if args.raw else FilterIndex(kg.all_triples(), kg.num_entities)
    started = time.perf_counter()
    # bf16: the encoder under autocast (2x faster on AMX CPUs here); the entity scores stay float32
    autocast = torch.autocast(model.entity_bias.device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    with torch.inference_mode(), autocast:
        result = evaluate_ranking(
            model.score,
            kg.splits[args.split],
            kg.num_entities,
            filter_index=filter_index,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    payload = result.to_dict()
    payload.update(
        dataset=kg.name, split=args.split, filtered=not args.raw, rank="realistic", precision=args.precision,
        queries=int(result.all_ranks().numel()), seconds=time.perf_counter() - started,
    )
    rows = [("both", payload)] + [(side, payload[side]) for side in ("head", "tail") if side in payload]
    text = [f"{kg.name} {args.split} ({'raw' if args.raw else 'filtered'}, realistic ranks)"]
    text += [
        f"  {name:<5} MRR {m['mrr']:.4f}  MR {m['mr']:.1f}  H@1 {m['hits@1']:.4f}  H@3 {m['hits@3']:.4f}  "
        f"H@10 {m['hits@10']:.4f}"
        for name, m in rows
    ]
    _emit(args, payload, "\n".join(text))
    return 0


def _count_or_fraction(value: str) -> int | float:
    try:
        return int(value)
    except ValueError:
        return float(value)


def _cmd_editset_build(args: argparse.Namespace) -> int:
    from deltakg.editsets import KINDS, build_editset

    if args.kind not in KINDS:
        raise CommandError(f"--kind: unknown edit-set kind {args.kind!r}; choose one of {', '.join(KINDS)}")
    try:
        split = [float(v) for v in args.split.split(",")]
    except ValueError:
        raise CommandError(f"--split: expected three fractions like 0.6,0.2,0.2, got {args.split!r}") from None
    kg = _load_kg(args)
    config = _train_config(args)
    # Lightning reports on stdout; keep stdout for the JSON line
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        build = build_editset(
            kg,
            args.kind,
            args.out,
            encoder=args.encoder,
            use_text=not args.no_text,
            layers=args.layers,
            max_length=args.max_length,
            size=args.size,
            candidates=args.candidates,
            oversample=args.oversample,
            holdout=args.holdout,
            max_answers=args.max_answers,
            stable_size=args.stable_size,
            split=split,
            seed=args.seed,
            train_config=config,
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
            **{name: str(out / f"{name}.jsonl") for name in ("train", "dev", "test", "stable")},
            "editset": str(out / "editset.json"),
        },
        "seconds": build.seconds,
    }
    cases = counts["edit_cases"]
    prefix = "E" if build.kind == "edit" else "A"
    mrr = payload["valid_mrr"]
    text = (
        f"{prefix}-{kg.name}: {cases['train']}/{cases['dev']}/{cases['test']} edit cases (train/dev/test), "
        f"{counts['stable']} stable facts; base model valid MRR "
        f"{'n/a' if mrr is None else f'{mrr:.4f}'}; written to {out}"
    )
    _emit(args, payload, text)
    return 0


# ------------------------------------------------------------------------------------------ editing
def _load_editset(path: str):
    from kg_data.edits import EditSet

    return EditSet.load(path)


def _cmd_train_editor(args: argparse.Namespace) -> int:
    from deltakg.editing.methods.kgeditor import KGEditorConfig
    from deltakg.editing.methods.kgeditor_training import train_kgeditor
    from deltakg.kge.model import MaskedEntityModel

    if args.method != "kgeditor":
        raise CommandError(f"--method: {args.method!r} needs no training; methods that do: kgeditor")
    model = MaskedEntityModel.from_pretrained(args.model)
    editset = _load_editset(args.editset)
    if "train" not in editset.cases:
        raise CommandError(f"--editset: {args.editset} has no train.jsonl to train the editor on")
    config = KGEditorConfig.for_dataset(model.config.dataset, epochs=args.epochs, seed=args.seed,
                                        extra=args.extra, layers=args.layers, rounds=args.rounds,
                                        whiten=False if args.no_whiten else None,
                                        calibrate=False if args.no_calibrate else None)
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        _, metrics = train_kgeditor(model, editset.cases["train"], editset.stable, args.out, config=config,
                                    dev_cases=editset.cases.get("dev"), max_time_minutes=args.max_time,
                                    progress=not args.no_progress)
    metrics.update(out=str(args.out), method=args.method)
    _emit(args, metrics, f"editor saved to {args.out}")
    return 0


def _cmd_edit(args: argparse.Namespace) -> int:
    from deltakg.editing import get_editor, run_edits
    from deltakg.editing.methods.kgeditor import KGEditor
    from deltakg.kge.model import MaskedEntityModel

    model = MaskedEntityModel.from_pretrained(args.model)
    editset = _load_editset(args.editset)
    if args.split not in editset.cases:
        raise CommandError(f"--split: {args.editset} has no {args.split}.jsonl (has {', '.join(editset.cases)})")
    if args.method == "kgeditor":
        if not args.editor:
            raise CommandError("--editor DIR is required for --method kgeditor (train one with deltakg train-editor)")
        editor = KGEditor.from_pretrained(args.editor)
    else:
        editor = get_editor("ft", steps=args.ft_steps, lr=args.ft_lr)
    cases = editset.cases[args.split][: args.limit] if args.limit else editset.cases[args.split]
    report = run_edits(editor, model, cases, editset.stable, batch_size=args.batch_size, sequential=args.sequential)
    metrics = report.metrics
    text = (f"{metrics['method']} on {metrics['edits']} edits (batch {args.batch_size}"
            f"{', sequential' if args.sequential else ''}): Succ@1 {metrics['succ@1']:.3f}  Succ@3 {metrics['succ@3']:.3f}"
            f"  ER_roc {metrics['er_roc']:.3f}  RK@3 {metrics['rk@3']:.3f}  RK_roc {metrics['rk_roc']:.3f}"
            f"  time/edit {metrics['time_per_edit_s']:.4f}s  params {metrics['params']}")
    _emit(args, metrics, text)
    return 0


# ------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``deltakg`` command."""
    parser = argparse.ArgumentParser(
        prog="deltakg", description="Knowledge editing over triples: data, KG embeddings and their editors."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = commands.add_parser("data", help="inspect and validate KG data")
    data_cmds = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    from kg_data.catalog import DATA_ENV, dataset_names

    stats = data_cmds.add_parser("stats", help="entity, relation and split counts of a built-in dataset")
    _dataset_args(stats, DATA_ENV, dataset_names())
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=_cmd_data_stats)

    check = data_cmds.add_parser("check", help="validate a data file; exit 2 with file:line on the first error")
    check.add_argument("file", help="the file to check")
    check.add_argument("--kind", choices=_CHECK_KINDS, default=None, help="file format (default: from the name)")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(func=_cmd_data_check)

    from deltakg.kge import DECODER_DTYPES, ENCODER_CHOICES
    from deltakg.kge.inputs import READOUTS

    train = commands.add_parser("train", help="train a masked-entity KG embedding model (Lightning)")
    _dataset_args(train, DATA_ENV, dataset_names())
    train.add_argument("--encoder", default="minilm",
                       help=f"{' | '.join(ENCODER_CHOICES)} | a local model folder (default: minilm)")
    train.add_argument("--layers", type=int, default=None, help="keep only the first N encoder layers")
    train.add_argument("--max-length", type=int, default=64, help="max tokens per query (default 64)")
    train.add_argument("--no-text", action="store_true", help="entity/relation tokens only, no texts")
    train.add_argument("--init-from-text", action=argparse.BooleanOptionalAction, default=None,
                       help="start entity/relation tokens at their text's mean word embedding, also with --no-text "
                            "(default: on with texts and a pretrained encoder)")
    train.add_argument("--dropout", type=float, default=None,
                       help="encoder hidden/attention dropout (default: the encoder's own, 0.1 for tiny)")
    train.add_argument("--inverse-relations", action="store_true",
                       help="head queries get their own inverse-relation token (default: one token per relation)")
    train.add_argument("--readout", choices=READOUTS, default="mask",
                       help="decode the hidden state at [MASK] (the paper's) or at the known entity's token")
    train.add_argument("--compact-input", action="store_true",
                       help="queries without [CLS]/[SEP]: 3 tokens instead of 7 without texts")
    train.add_argument("--epochs", type=int, default=20, help="max epochs (default 20)")
    train.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimiser steps")
    train.add_argument("--max-time", type=float, default=None, metavar="MINUTES", help="stop after this long")
    train.add_argument("--batch-size", type=int, default=128, help="triples per step (each gives 2 queries)")
    train.add_argument("--fused-loss", action="store_true",
                       help="decoder and loss fused over entity chunks (faster with many entities; kvsall always)")
    train.add_argument("--sparse-last-layer", action="store_true",
                       help="compute the last layer only at the decoded position (same function, ~1.5x faster steps)")
    train.add_argument("--fused-optimizer", action="store_true",
                       help="AdamW's fused kernel: one pass per tensor, ~6x faster optimiser steps on CPU")
    train.add_argument("--bound-memory", action=argparse.BooleanOptionalAction, default=True,
                       help="return large freed blocks to the OS so peak RSS follows the live tensors (default on); "
                            "--no-bound-memory keeps glibc's caching: no page faults on each new tensor, up to "
                            "1.4x faster steps with many entities, at a higher RSS")
    train.add_argument("--decoder-dtype", choices=DECODER_DTYPES, default="float32",
                       help="dtype of the training loss's decoder products (bfloat16: ~3x faster on CPUs with AMX; "
                            "evaluation always scores in float32)")
    train.add_argument("--train-type", choices=("1vsall", "kvsall"), default="1vsall",
                       help="1vsall: one example per training triple and side; kvsall: one per distinct query with "
                            "all its answers as the target, 2 x batch-size queries per step (default 1vsall)")
    train.add_argument("--lr", type=float, default=None, help="learning rate of the new parameters")
    train.add_argument("--encoder-lr", type=float, default=None, help="learning rate of the encoder")
    train.add_argument("--label-smoothing", type=float, default=0.1)
    train.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    train.add_argument("--patience", type=int, default=5, help="early stopping on valid MRR (0: off)")
    train.add_argument("--val-subset", type=int, default=None, help="validate on a fixed random subset")
    train.add_argument("--pretrain-epochs", type=int, default=0,
                       help="PT-KGE stage 1: epochs of entity embeddings learned from descriptions")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--accelerator", default="cpu", help="Lightning accelerator: cpu, gpu, auto")
    train.add_argument("--devices", default=1, type=_devices, help="devices per node (int or 'auto')")
    train.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    train.add_argument("--num-nodes", type=int, default=1)
    train.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed")
    train.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute encoder activations in the backward pass: less memory, ~30%% more time")
    train.add_argument("--no-resume", action="store_true", help="ignore OUT/checkpoints/last.ckpt")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--out", required=True, help="output folder (the saved model, checkpoints, logs)")
    train.add_argument("--json", action="store_true", help="print one JSON object")
    train.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser("evaluate", help="filtered (or raw) link-prediction metrics of a model")
    evaluate.add_argument("--model", required=True, help="a folder written by deltakg train")
    _dataset_args(evaluate, DATA_ENV, dataset_names())
    evaluate.add_argument("--split", choices=("valid", "test"), default="test")
    evaluate.add_argument("--raw", action="store_true", help="raw ranks (no filtering of other true answers)")
    evaluate.add_argument("--batch-size", type=int, default=None, help="queries per batch (default: by memory)")
    evaluate.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                          help="bf16: encoder in bfloat16 autocast, scores in float32 (default fp32)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(func=_cmd_evaluate)

    editset = commands.add_parser("editset", help="build deltaKG edit sets (EDIT / ADD) with their base model")
    editset_cmds = editset.add_subparsers(dest="editset_command", metavar="SUBCOMMAND", required=True)
    es_build = editset_cmds.add_parser(
        "build", help="corrupt (edit) or hold out (add) facts, train the base model, select edit cases and stable facts"
    )
    _dataset_args(es_build, DATA_ENV, dataset_names())
    es_build.add_argument("--kind", required=True, metavar="{edit,add}",
                          help="edit: corrupted facts the model learnt; add: held-out facts it never saw")
    es_build.add_argument("--out", required=True,
                          help="output folder: model/, train/dev/test.jsonl, stable.jsonl, editset.json")
    es_build.add_argument("--encoder", default="tiny",
                          help=f"{' | '.join(ENCODER_CHOICES)} | a local model folder (default: tiny)")
    es_build.add_argument("--layers", type=int, default=None, help="keep only the first N encoder layers")
    es_build.add_argument("--max-length", type=int, default=64, help="max tokens per query (default 64)")
    es_build.add_argument("--no-text", action="store_true", help="entity/relation tokens only, no texts")
    es_build.add_argument("--size", type=int, default=500, help="edit cases wanted, all splits (default 500)")
    es_build.add_argument("--candidates", type=_count_or_fraction, default=None,
                          help="triples to corrupt / hold out: a count or a fraction of train "
                               "(default: oversample x size)")
    es_build.add_argument("--oversample", type=float, default=None,
                          help="default candidates = oversample x size (default 3 for edit, 1.5 for add)")
    es_build.add_argument("--holdout", default="triples", metavar="{triples,entities}",
                          help="add: hold out random triples, or all triples of random entities (default triples)")
    es_build.add_argument("--max-answers", type=int, default=None,
                          help="edit: only corrupt facts whose query has at most this many true answers "
                               "(1 makes the target the unique answer; dense KGs such as UMLS need it)")
    es_build.add_argument("--stable-size", type=int, default=1000, help="stable facts wanted (default 1000)")
    es_build.add_argument("--split", default="0.6,0.2,0.2", help="train,dev,test fractions of the edit cases")
    es_build.add_argument("--seed", type=int, default=0, help="seed of every random choice and of training")
    es_build.add_argument("--epochs", type=int, default=20, help="training epochs of the base model (default 20)")
    es_build.add_argument("--max-time", type=float, default=None, metavar="MINUTES",
                          help="stop training after this long")
    es_build.add_argument("--batch-size", type=int, default=128, help="triples per step (each gives 2 queries)")
    es_build.add_argument("--lr", type=float, default=None, help="learning rate of the new parameters")
    es_build.add_argument("--encoder-lr", type=float, default=None, help="learning rate of the encoder")
    es_build.add_argument("--label-smoothing", type=float, default=0.1)
    es_build.add_argument("--patience", type=int, default=0, help="early stopping on valid MRR (default 0: off)")
    es_build.add_argument("--accelerator", default="cpu", help="Lightning accelerator: cpu, gpu, auto")
    es_build.add_argument("--devices", default=1, type=_devices, help="devices per node (int or 'auto')")
    es_build.add_argument("--overwrite", action="store_true", help="replace an edit set already in --out")
    es_build.add_argument("--no-progress", action="store_true", help="no progress bar")
    es_build.add_argument("--json", action="store_true", help="print one JSON object")
    es_build.set_defaults(func=_cmd_editset_build)

    train_editor = commands.add_parser("train-editor", help="train an edit method that learns (kgeditor)")
    train_editor.add_argument("--method", required=True, choices=("kgeditor",))
    train_editor.add_argument("--model", required=True, help="the model the edits apply to (editset DIR/model)")
    train_editor.add_argument("--editset", required=True, help="an edit-set folder (train/dev/test.jsonl, stable.jsonl)")
    train_editor.add_argument("--out", required=True, help="output folder of the trained editor")
    train_editor.add_argument("--epochs", type=int, default=None, help="default: configs/kgeditor.json")
    train_editor.add_argument("--max-time", type=float, default=None, metavar="MINUTES")
    train_editor.add_argument("--extra", type=int, default=None, help="slot width (default per dataset)")
    train_editor.add_argument("--layers", type=int, nargs="+", default=None, help="slot layers, negative from the end")
    train_editor.add_argument("--rounds", type=int, default=None, help="most calibrated updates per edit")
    train_editor.add_argument("--no-whiten", action="store_true",
                              help="use raw slot gradients (the paper) instead of key-whitened ones")
    train_editor.add_argument("--no-calibrate", action="store_true",
                              help="one update of the hypernetwork's length per edit (the paper)")
    train_editor.add_argument("--seed", type=int, default=None)
    train_editor.add_argument("--no-progress", action="store_true")
    train_editor.add_argument("--json", action="store_true", help="print one JSON object")
    train_editor.set_defaults(func=_cmd_train_editor)

    edit = commands.add_parser("edit", help="apply an edit set's cases and report Succ@k, RK@k, ER_roc, RK_roc")
    edit.add_argument("--model", required=True, help="the model the edits apply to")
    edit.add_argument("--editset", required=True, help="an edit-set folder")
    edit.add_argument("--method", required=True, choices=("ft", "kgeditor"))
    edit.add_argument("--editor", default=None, help="a trained editor folder (kgeditor)")
    edit.add_argument("--split", default="test", choices=("train", "dev", "test"))
    edit.add_argument("--batch-size", type=int, default=2, help="edits per batch (default 2, as the paper)")
    edit.add_argument("--sequential", action="store_true", help="let edits accumulate instead of resetting per batch")
    edit.add_argument("--limit", type=int, default=None, help="only the first N edit cases")
    edit.add_argument("--ft-steps", type=int, default=10, help="FT: optimiser steps per batch")
    edit.add_argument("--ft-lr", type=float, default=1e-3, help="FT: learning rate")
    edit.add_argument("--json", action="store_true", help="print one JSON object")
    edit.set_defaults(func=_cmd_edit)
    return parser


def _devices(value: str) -> int | str:
    return value if value == "auto" else int(value)


def _dataset_args(parser: argparse.ArgumentParser, env: str, names: list[str]) -> None:
    parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(names)}")
    parser.add_argument("--data-dir", default=None, help=f"folder with WN18RR/ or FB15k237/ (default: ${env})")


def _user_errors() -> tuple[type[BaseException], ...]:
    from kg_data.errors import KGDataError

    return (KGDataError, CommandError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deltakg`` console script."""
    # spin-waiting OpenMP threads make torch 10-30x slower on a shared CPU; torch is imported lazily below
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except _user_errors() as err:
        print(f"deltakg: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("deltakg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
