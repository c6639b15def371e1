"""``deltakg knn-classify``: k-NN calibrated text classification (Revisit-KNN) on one task, over seeds."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from ._common import (CommandError, add_command, add_json_arg, add_progress_arg, emit, fraction, int_list,
                      non_negative_float, positive_float, positive_int)


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``knn-classify``."""
    from kg_data.catalog import DATA_ENV
    from knn.text_classify import ClassifyConfig
    from knn.text_model import HEADS
    from knn.text_tasks import SETTINGS, task_names

    d = ClassifyConfig.__dataclass_fields__
    parser = add_command(
        commands, "knn-classify",
        "train and evaluate a text classifier alone (plain), with k-NN at inference (knn_infer) and with k-NN "
        "calibrated training and inference (knn_train_infer); mean over seeds; k, T and lambda chosen on dev")
    parser.add_argument("--task", required=True, metavar="NAME", help=f"one of {', '.join(task_names())}")
    parser.add_argument("--setting", required=True, choices=SETTINGS,
                        help="zero-shot: prompt model and pseudo-labels only; few-shot: 16 per class; full: the "
                             "full training files")
    parser.add_argument("--seeds", type=int_list, default=[13, 42, 100], help="comma-separated seeds (default: "
                                                                             "13,42,100)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help=f"folder holding sst-5/, trec/, qnli/, boolq/, cb/, semeval/ (default: ${DATA_ENV})")
    model = parser.add_argument_group("model and training")
    model.add_argument("--head", choices=tuple(HEADS), default=None,
                       help="cls: [CLS] sequence classifier; prompt: mask representation, label words scored "
                            "through the tied word embeddings; sentence: mean-pooled text embedding, scored by "
                            "cosine similarity to each label word's embedding (default: prompt, cls for --setting "
                            "full)")
    model.add_argument("--encoder", default="minilm", help="minilm (pretrained, offline) | tiny | a local "
                                                           "Hugging Face BERT-family folder")
    model.add_argument("--epochs", type=positive_int, default=None,
                       help="training epochs (default: 20 few-shot, 3 zero-shot, 2 full)")
    model.add_argument("--batch-size", type=positive_int, default=d["batch_size"].default, help="examples per step")
    model.add_argument("--lr", type=positive_float, default=d["lr"].default, help="AdamW learning rate (linear decay)")
    model.add_argument("--max-length", type=positive_int, default=None, help="tokens per input (default: the task's)")
    model.add_argument("--precision", choices=("32-true", "bf16-mixed"), default=d["precision"].default,
                       help="Lightning precision of training and of the representations")
    knn = parser.add_argument_group("k-NN")
    knn.add_argument("--k", type=positive_int, default=None,
                     help="neighbours of the calibrated loss and of the zero-shot mixture (default: 16, zero-shot 64; "
                          "few-shot/full choose the mixture's k on dev)")
    knn.add_argument("--temperature", type=positive_float, default=d["temperature"].default,
                     help="T of the calibrated loss and the zero-shot mixture, in units of the store's median "
                          "neighbour distance")
    knn.add_argument("--lambda", dest="lam", type=fraction, default=d["lam"].default,
                     help="zero-shot weight of p_knn (few-shot/full choose it on dev)")
    knn.add_argument("--alpha", type=non_negative_float, default=d["alpha"].default,
                     help="calibrated loss CE * (1 + alpha * -log p_knn(y))")
    knn.add_argument("--loss", choices=("ce", "focal"), default=d["loss"].default,
                     help="ce: the paper's weighting; focal: (1 - p_knn(y))^gamma * CE")
    knn.add_argument("--gamma", type=non_negative_float, default=d["gamma"].default, help="focal exponent")
    data = parser.add_argument_group("size")
    data.add_argument("--max-test", type=positive_int, default=None,
                      help="evaluate on a fixed random subset (seed 0) of this many test examples (default: all)")
    data.add_argument("--unlabeled", type=positive_int, default=d["unlabeled"].default,
                      help="zero-shot: texts of the unlabeled pool (a seeded subsample)")
    parser.add_argument("--out", default=None, metavar="FILE", help="also write the JSON object to this file")
    add_progress_arg(parser)
    add_json_arg(parser)
    parser.set_defaults(func=_knn_classify)


def _knn_classify(args: argparse.Namespace) -> int:
    from knn.text_classify import ROWS, ClassifyConfig, run_classification

    out = Path(args.out) if args.out else None
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        raise CommandError(f"--out {out}: expected a file in an existing folder")
    config = ClassifyConfig(task=args.task, setting=args.setting, seeds=tuple(args.seeds), head=args.head,
                            encoder=args.encoder, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            max_length=args.max_length, k=args.k, temperature=args.temperature, lam=args.lam,
                            alpha=args.alpha, loss=args.loss, gamma=args.gamma, max_test=args.max_test,
                            unlabeled=args.unlabeled, precision=args.precision, progress=not args.no_progress)
    # Lightning's progress bar writes to stdout: keep stdout for the JSON object
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        payload = run_classification(config, args.data_dir)
    if out is not None:
        out.write_text(json.dumps(payload, indent=2) + "\n")
    sd = payload["sd"]
    text = [f"{payload['task']} {payload['setting']} ({payload['head']} head, {payload['metric']}, "
            f"{len(payload['seeds'])} seeds, test {payload['test_size']} of {payload['test_size_total']})"]
    text += [f"  {row:<16} {payload['rows'][row]:.4f} ± {sd[row]:.4f}" for row in ROWS]
    emit(args, payload, "\n".join(text))
    return 0
