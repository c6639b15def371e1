"""``deltakg train`` and ``deltakg evaluate``: the masked-entity KG embedding model."""

from __future__ import annotations

import argparse
import contextlib
import sys

from ._common import (CommandError, add_command, add_dataset_args, add_json_arg, add_model_layout_args,
                      add_progress_arg, add_training_args, emit, fraction, layout_kwargs, positive_float,
                      positive_int, train_config)


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``evaluate``."""
    train = add_command(commands, "train", "train a masked-entity KG embedding model (Lightning)")
    add_dataset_args(train)
    add_model_layout_args(train, encoder_default="minilm")
    add_training_args(train, epochs=20, patience=5)
    existing = train.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true",
                          help="--out already holds a run: remove its files and start afresh")
    existing.add_argument("--resume", action="store_true",
                          help="continue the run in --out from its checkpoints/last.ckpt (same data and options)")
    train.add_argument("--out", required=True, help="output folder (the saved model, checkpoints, logs)")
    add_progress_arg(train)
    add_json_arg(train)
    train.set_defaults(func=_train)

    evaluate = add_command(commands, "evaluate", "filtered (or raw) link-prediction metrics of a model")
    evaluate.add_argument("--model", required=True, help="a folder written by deltakg train")
    add_dataset_args(evaluate)
    evaluate.add_argument("--split", choices=("valid", "test"), default="test", help="the split to rank")
    evaluate.add_argument("--raw", action="store_true", help="raw ranks (no filtering of other true answers)")
    evaluate.add_argument("--batch-size", type=positive_int, default=None,
                          help="queries per batch (default: by memory)")
    evaluate.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                          help="bf16: encoder in bfloat16 autocast, scores in float32; auto: bf16 where a one-time "
                               "probe on this device finds it faster, else fp32 (the choice is printed)")
    knn = evaluate.add_argument_group("kNN-KGE", "a datastore of the training queries mixed into the model's "
                                                 "entity distribution; --json adds a 'knn' object beside the model "
                                                 "alone")
    knn.add_argument("--knn", action="store_true", help="also rank with the kNN mixture (encoder in fp32 "
                                                       "unless --precision bf16)")
    knn.add_argument("--knn-k", type=positive_int, default=None, help="neighbours (default: chosen on valid)")
    knn.add_argument("--knn-lambda", type=fraction, default=None,
                     help="weight of p_knn in the mixture (default: chosen on valid, grid 0.1..0.9)")
    knn.add_argument("--knn-temperature", type=positive_float, default=None,
                     help="softmax temperature over squared L2 distances (default: chosen on valid)")
    knn.add_argument("--knn-valid-subset", type=positive_int, default=1000,
                     help="seeded valid triples the choice is made on")
    add_progress_arg(evaluate)
    add_json_arg(evaluate)
    evaluate.set_defaults(func=_evaluate)


def load_kg(args: argparse.Namespace):
    """The dataset named by ``--dataset`` / ``--data-dir``."""
    from kg_data import load_dataset

    return load_dataset(args.dataset, args.data_dir)


def _train(args: argparse.Namespace) -> int:
    from deltakg.kge.training import train_model

    config = train_config(args, resume=args.resume, overwrite=args.overwrite)
    kg = load_kg(args)
    # Lightning reports on stdout; keep stdout for the JSON line
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        result = train_model(kg, args.out, **layout_kwargs(args), config=config)
    if result.is_global_zero:
        payload = {k: v for k, v in result.metrics.items() if k != "config"}
        payload.update(out=str(result.out), dataset=kg.name)
        chosen = "".join(f"; {name} auto -> {c['chosen']}" for name, c in payload["precision_choice"].items())
        emit(args, payload, f"model saved to {result.out} (best valid MRR {payload['best_valid_mrr']}{chosen})")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from deltakg.kge.evaluation import evaluate_model
    from deltakg.kge.model import MaskedEntityModel

    model = MaskedEntityModel.from_pretrained(args.model)
    kg = load_kg(args)
    if args.split not in kg.splits:
        raise CommandError(f"--split: dataset {kg.name!r} has no split {args.split!r} (has {', '.join(kg.splits)})")
    if args.knn:
        from knn.link_prediction import evaluate_model_knn

        payload = evaluate_model_knn(model, kg, args.split, k=args.knn_k, lam=args.knn_lambda,
                                     temperature=args.knn_temperature, filtered=not args.raw,
                                     valid_subset=args.knn_valid_subset,
                                     precision="bf16" if args.precision == "bf16" else "fp32",
                                     progress=not args.no_progress)
    else:
        payload = evaluate_model(model, kg, args.split, filtered=not args.raw, batch_size=args.batch_size,
                                 precision=args.precision, progress=not args.no_progress)
    rows = [("both", payload)] + [(side, payload[side]) for side in ("head", "tail") if side in payload]
    if args.knn:
        knn = payload["knn"]
        rows = [("model", payload), ("+kNN", knn)] + [(f"{side} +kNN", knn[side]) for side in ("head", "tail")]
    text = [f"{kg.name} {args.split} ({'raw' if args.raw else 'filtered'}, realistic ranks, {payload['precision']})"]
    if "precision_choice" in payload:
        text.append(f"  precision: auto -> {payload['precision']} ({payload['precision_choice']['reason']})")
    if args.knn:
        knn = payload["knn"]
        text.append(f"  kNN: k {knn['k']}, lambda {knn['lambda']}, T {knn['temperature']:.4g} "
                    f"({', '.join(f'{n} {how}' for n, how in knn['set_by'].items())}); "
                    f"{knn['store_entries']} training queries in the store")
    width = 10 if args.knn else 5
    text += [
        f"  {name:<{width}} MRR {m['mrr']:.4f}  MR {m['mr']:.1f}  H@1 {m['hits@1']:.4f}  H@3 {m['hits@3']:.4f}  "
        f"H@10 {m['hits@10']:.4f}"
        for name, m in rows
    ]
    emit(args, payload, "\n".join(text))
    return 0
