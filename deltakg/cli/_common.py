"""What every command module shares: the user-error type, output, argument validators and option groups.

Validators run at parse time, so a bad number is refused by argparse with one line and exit code 2 before
anything is loaded. Option groups (dataset, model layout, training) are declared once and used by every
command that offers them, so their defaults and help agree.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any, Callable

__all__ = [
    "CommandError", "HelpFormatter", "emit", "add_command", "add_dataset_args", "add_json_arg", "add_progress_arg",
    "add_model_layout_args", "add_training_args", "train_config", "positive_int", "non_negative_int",
    "positive_float", "non_negative_float", "fraction", "open_fraction", "int_list", "name_list", "devices",
    "count_or_fraction", "layout_kwargs",
]


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default (unless its help already does) and keeps wide help readable."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=110)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def add_command(commands: argparse._SubParsersAction, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command parser with the shared help formatter (and ``--verbose``, also accepted after the command)."""
    parser = commands.add_parser(name, help=help, description=help, formatter_class=HelpFormatter, **kwargs)
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show third-party logs and warnings, and the traceback of an unexpected error")
    return parser


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    """Print ``payload`` as one JSON object with ``--json``, else ``text``."""
    print(json.dumps(payload) if getattr(args, "json", False) else text)


# ------------------------------------------------------------------------------------------ validators
def _number(kind: Callable[[str], Any], test: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}") from None
        if isinstance(number, float) and not math.isfinite(number) or not test(number):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
        return number

    parse.__name__ = expected  # argparse names the type in its message
    return parse


positive_int = _number(int, lambda v: v > 0, "an integer > 0")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a number > 0")
non_negative_float = _number(float, lambda v: v >= 0, "a number >= 0")
fraction = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
open_fraction = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def int_list(value: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (each > 0)."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers > 0, got {value!r}")
    return [positive_int(p) for p in parts]


def name_list(value: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` (no empty names)."""
    parts = [p.strip() for p in value.split(",")]
    if not value.strip() or any(not p for p in parts):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of names, got {value!r}")
    return parts


def devices(value: str) -> int | str:
    """Lightning's ``devices``: an integer > 0 or ``auto``."""
    return value if value == "auto" else positive_int(value)


def count_or_fraction(value: str) -> int | float:
    """An integer count > 0, or a fraction in (0, 1]."""
    try:
        return positive_int(value)
    except argparse.ArgumentTypeError:
        number = _number(float, lambda v: 0 < v <= 1, "an integer > 0 or a fraction in (0, 1]")(value)
        return number


# ------------------------------------------------------------------------------------------ option groups
def add_json_arg(parser: argparse.ArgumentParser) -> None:
    """``--json``: one JSON object on stdout."""
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_dataset_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--dataset`` (a catalog name) and ``--data-dir``."""
    from kg_data.catalog import DATA_ENV, dataset_names

    parser.add_argument("--dataset", required=required, metavar="NAME",
                        help=f"a built-in dataset (any case): {', '.join(dataset_names())}")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help=f"folder with WN18RR/ or FB15k237/ (default: ${DATA_ENV})")


def add_model_layout_args(parser: argparse.ArgumentParser, *, encoder_default: str, reason: str = "") -> None:
    """The model's encoder and query layout (saved in the model's config.json)."""
    from deltakg.kge import ENCODER_CHOICES
    from deltakg.kge.inputs import READOUTS

    parser.add_argument("--encoder", default=encoder_default, metavar="ENCODER",
                        help=f"{' | '.join(ENCODER_CHOICES)} | a local Hugging Face BERT-family folder{reason}")
    parser.add_argument("--layers", type=positive_int, default=None,
                        help="keep only the first N encoder layers (default: all)")
    parser.add_argument("--max-length", type=positive_int, default=64, help="max tokens per query")
    parser.add_argument("--no-text", action="store_true", help="entity/relation tokens only, no texts")
    parser.add_argument("--init-from-text", action=argparse.BooleanOptionalAction, default=None,
                        help="start entity/relation tokens at their text's mean word embedding, also with "
                             "--no-text (default: on with texts and a pretrained encoder)")
    parser.add_argument("--dropout", type=open_fraction, default=None,
                        help="encoder hidden/attention dropout (default: the encoder's own, 0.1 for tiny)")
    parser.add_argument("--inverse-relations", action="store_true",
                        help="head queries get their own inverse-relation token (paper: one token per relation)")
    parser.add_argument("--readout", choices=READOUTS, default="mask",
                        help="decode the hidden state at [MASK] (the paper's) or at the known entity's token")
    parser.add_argument("--compact-input", action="store_true",
                        help="queries without [CLS]/[SEP]: 3 tokens instead of 7 without texts")


def layout_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``train_model``/``build_editset`` keyword arguments of :func:`add_model_layout_args`' options."""
    return dict(encoder=args.encoder, layers=args.layers, max_length=args.max_length, use_text=not args.no_text,
                dropout=args.dropout, inverse_relations=args.inverse_relations, readout=args.readout,
                compact=args.compact_input, init_from_text=args.init_from_text)


def add_training_args(parser: argparse.ArgumentParser, *, epochs: int, patience: int, patience_reason: str = "",
                      advanced: bool = True) -> None:
    """The training options of ``TrainConfig`` (``train`` offers all, ``editset build`` the common ones)."""
    from deltakg.kge import DECODER_DTYPES, LR_SCHEDULES

    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=positive_int, default=epochs, help="max epochs")
    group.add_argument("--max-time", type=positive_float, default=None, metavar="MINUTES",
                       help="stop training after this long (default: no limit)")
    group.add_argument("--batch-size", type=positive_int, default=128, help="triples per step (each gives 2 queries)")
    group.add_argument("--lr", type=positive_float, default=None,
                       help="learning rate of the new parameters (default: 5e-4 pretrained encoder, 1e-3 tiny)")
    group.add_argument("--encoder-lr", type=positive_float, default=None,
                       help="learning rate of the encoder (default: 5e-5 pretrained encoder, --lr for tiny)")
    group.add_argument("--label-smoothing", type=open_fraction, default=0.1, help="label smoothing of the loss")
    group.add_argument("--patience", type=non_negative_int, default=patience,
                       help=f"early stopping after this many validations without a better valid MRR; 0: off "
                            f"(default: {patience}{patience_reason})")
    group.add_argument("--seed", type=int, default=0, help="seed of training (and of every random choice)")
    group.add_argument("--accelerator", default="cpu", help="Lightning accelerator: cpu, gpu, auto")
    group.add_argument("--devices", default=1, type=devices, help="devices per node (an integer or 'auto')")
    group.add_argument("--precision", default="auto",
                       help="Lightning precision, e.g. 32-true or bf16-mixed; auto: bf16-mixed where a one-time probe "
                            "of this model's products on this device finds bf16 faster (CPUs with AMX, recent "
                            "GPUs), else 32-true; the choice is printed and saved in train_metrics.json")
    if not advanced:
        return
    group.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimiser steps (-1: no limit)")
    group.add_argument("--weight-decay", type=non_negative_float, default=0.01, help="AdamW weight decay")
    group.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                       help="learning-rate decay to 0 at the run's end: its planned steps or, with --max-time, its "
                            "time budget, whichever comes first (a time-limited decay depends on the machine's speed)")
    group.add_argument("--train-type", choices=("1vsall", "kvsall"), default="1vsall",
                       help="1vsall: one example per training triple and side; kvsall: one per distinct query with "
                            "all its answers as the target, 2 x batch-size queries per step")
    group.add_argument("--fused-loss", action="store_true",
                       help="decoder and loss fused over entity chunks (faster with many entities; kvsall always)")
    group.add_argument("--sparse-last-layer", action="store_true",
                       help="compute the last layer only at the decoded position (same function, ~1.5x faster steps)")
    group.add_argument("--fused-optimizer", action="store_true",
                       help="AdamW's fused kernel: one pass per tensor, ~6x faster optimiser steps on CPU")
    group.add_argument("--bound-memory", action=argparse.BooleanOptionalAction, default=True,
                       help="return large freed blocks to the OS so peak RSS follows the live tensors "
                            "(default: on); --no-bound-memory keeps glibc's caching: no page faults on each new "
                            "tensor, up to 1.4x faster steps with many entities, at a higher RSS")
    group.add_argument("--decoder-dtype", choices=(*DECODER_DTYPES, "auto"), default="auto",
                       help="dtype of the training loss's decoder products (bfloat16: ~3x faster on CPUs with AMX, "
                            "slower without); auto: probed like --precision; evaluation scores in float32")
    group.add_argument("--val-subset", type=positive_int, default=None,
                       help="validate on a fixed random subset of this many triples (default: all)")
    group.add_argument("--pretrain-epochs", type=non_negative_int, default=0,
                       help="PT-KGE stage 1: epochs of entity embeddings learned from descriptions")
    group.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    group.add_argument("--num-nodes", type=positive_int, default=1, help="Lightning nodes")
    group.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute encoder activations in the backward pass: less memory, ~30%% more time")


# TrainConfig field <- command-line option; commands offer subsets of these options
_TRAIN_OPTIONS = {
    "epochs": "epochs", "max_steps": "max_steps", "max_time_minutes": "max_time", "batch_size": "batch_size",
    "train_type": "train_type", "fused_loss": "fused_loss", "lr": "lr", "encoder_lr": "encoder_lr",
    "label_smoothing": "label_smoothing", "weight_decay": "weight_decay", "lr_schedule": "lr_schedule",
    "val_subset": "val_subset",
    "pretrain_epochs": "pretrain_epochs", "seed": "seed", "accelerator": "accelerator", "devices": "devices",
    "strategy": "strategy", "num_nodes": "num_nodes", "precision": "precision",
    "gradient_checkpointing": "gradient_checkpointing", "sparse_last_layer": "sparse_last_layer",
    "decoder_dtype": "decoder_dtype", "fused_optimizer": "fused_optimizer", "bound_memory": "bound_memory",
}


def train_config(args: argparse.Namespace, **overrides: Any):
    """A ``TrainConfig`` from whichever training options the command defines."""
    from deltakg.kge.training import TrainConfig

    values = {field: getattr(args, option) for field, option in _TRAIN_OPTIONS.items() if hasattr(args, option)}
    values["patience"] = args.patience or None
    values["progress"] = not args.no_progress
    values.update(overrides)
    return TrainConfig(**values)
