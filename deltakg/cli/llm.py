"""``deltakg llm-*``: causal-LM commands (the toy GPT-2 trained on KG facts)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (CommandError, add_command, add_dataset_args, add_json_arg, add_progress_arg, emit,
                      positive_float, positive_int, non_negative_float)


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``llm-train-toy``."""
    register_train_toy(commands)


def register_train_toy(commands: argparse._SubParsersAction) -> None:
    """``llm-train-toy``: train a small GPT-2 on a dataset's single-answer facts and save it."""
    from llm_editing.toy import ToyConfig

    d = ToyConfig()
    parser = add_command(commands, "llm-train-toy",
                         "train a small GPT-2 from a config on a dataset's single-answer facts (so that it knows "
                         "the facts edits change) and save it for from_pretrained")
    add_dataset_args(parser)
    parser.add_argument("--n-facts", type=positive_int, default=2000,
                        help="facts to learn, chosen by a seeded shuffle")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (model, tokenizer, facts.jsonl)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    size = parser.add_argument_group("model size")
    size.add_argument("--n-embd", type=positive_int, default=d.n_embd, help="hidden width")
    size.add_argument("--n-layer", type=positive_int, default=d.n_layer, help="transformer layers")
    size.add_argument("--n-head", type=positive_int, default=d.n_head, help="attention heads")
    size.add_argument("--vocab-size", type=positive_int, default=d.vocab_size, help="BPE vocabulary size (at most)")
    size.add_argument("--n-positions", type=positive_int, default=d.n_positions, help="max tokens per sentence")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=positive_int, default=d.epochs, help="passes over all sentences")
    train.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="sentences per step")
    train.add_argument("--lr", type=positive_float, default=d.lr, help="AdamW peak learning rate (cosine decay)")
    train.add_argument("--weight-decay", type=non_negative_float, default=d.weight_decay, help="AdamW weight decay")
    train.add_argument("--seed", type=int, default=d.seed, help="seed of fact selection, initialisation and order")
    add_progress_arg(parser)
    add_json_arg(parser)
    parser.set_defaults(func=_train_toy)


def _train_toy(args: argparse.Namespace) -> int:
    from llm_editing.facts import load_facts, select_facts
    from llm_editing.toy import ToyConfig, save_toy_model, train_toy_model

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file, expected a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise CommandError(f"--out {out} is not empty (pass --overwrite to write into it)")
    try:
        config = ToyConfig(n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head, vocab_size=args.vocab_size,
                           n_positions=args.n_positions, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           weight_decay=args.weight_decay, seed=args.seed, progress=not args.no_progress)
    except ValueError as err:
        raise CommandError(str(err)) from None
    facts = select_facts(load_facts(args.dataset, args.data_dir), args.n_facts, seed=args.seed)
    toy = train_toy_model(facts, config)
    save_toy_model(toy, out)
    m = toy.metrics
    payload = {"out": str(out), "dataset": args.dataset, **m}
    text = (f"{out}: GPT-2 ({m['parameters']:,} parameters, vocabulary {m['vocab_size']:,}) trained on "
            f"{m['n_facts']:,} facts in {m['train_seconds']:.0f} s; greedy reproduction {m['reproduced']:.3f} "
            f"(rephrased prompts {m['reproduced_rephrased']:.3f})")
    emit(args, payload, text)
    return 0
