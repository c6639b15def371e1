"""``deltakg llm-*``: causal-LM commands (the toy GPT-2 trained on KG facts)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (CommandError, add_command, add_dataset_args, add_json_arg, add_progress_arg, emit,
                      positive_float, positive_int, non_negative_float)
from .llm_edit import _option


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``llm-train-toy`` and ``llm-train-editor``."""
    register_train_toy(commands)
    register_train_editor(commands)


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

    out = _output_folder(args.out, args.overwrite)
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


def _output_folder(path: str, overwrite: bool) -> Path:
    """``--out`` as a folder that is new, empty, or may be written into (``--overwrite``)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file, expected a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CommandError(f"--out {out} is not empty (pass --overwrite to write into it)")
    return out


def register_train_editor(commands: argparse._SubParsersAction) -> None:
    """``llm-train-editor``: train a trainable causal-LM editor (MEND) on the train part of a model's known facts."""
    from llm_editing.editors import llm_editors

    trainable = sorted(name for name, cls in llm_editors().items() if cls.trainable)
    parser = add_command(commands, "llm-train-editor",
                         "train an editor network (e.g. MEND) for a causal LM on edits of the train part of the facts "
                         "it knows (checkpoint chosen on the dev part; the test part is never read) and save it")
    parser.add_argument("--model", required=True, metavar="PATH", help="a toy model folder (deltakg llm-train-toy)")
    parser.add_argument("--method", required=True, choices=trainable, help="the editor to train")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the trained editor")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    parser.add_argument("--n-edits", type=positive_int, default=None, metavar="N",
                        help="training edits (default: every editable fact of the train part)")
    parser.add_argument("--n-dev", type=positive_int, default=50, metavar="N", help="dev edits for checkpoint choice")
    parser.add_argument("--train-fraction", type=positive_float, default=0.15, help="share of known facts for training")
    parser.add_argument("--dev-fraction", type=positive_float, default=0.15, help="share of known facts for dev")
    parser.add_argument("--set", dest="options", type=_option, action="append", default=[], metavar="KEY=VALUE",
                        help="a field of the method's config dataclass, e.g. --set epochs=10 --set lr=1e-3")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn edits and of the editor")
    add_progress_arg(parser)
    add_json_arg(parser)
    parser.set_defaults(func=_train_editor)


def _train_editor(args: argparse.Namespace) -> int:
    from llm_editing.adapter import CausalLMTarget
    from llm_editing.editors import known_facts, known_split, make_editor
    from llm_editing.facts import edit_requests, editable_facts
    from deltakg.editing.locate.network import train_network_editor

    from .llm_edit import _load

    out = _output_folder(args.out, args.overwrite)
    options = {"seed": args.seed, "progress": not args.no_progress, **dict(args.options)}
    editor = make_editor(args.method, options)
    model, tokenizer, facts = _load(args.model)
    if not facts:
        raise CommandError(f"--model: {args.model} has no facts.jsonl (the facts it was trained on)")
    known = known_facts(model, tokenizer, facts)
    parts = {part: known_split(known, part, train_fraction=args.train_fraction, dev_fraction=args.dev_fraction)
             for part in ("train", "dev")}
    editable = {part: len(editable_facts(facts)) for part, facts in parts.items()}
    train = edit_requests(parts["train"], min(args.n_edits or editable["train"], editable["train"]), seed=args.seed)
    dev = edit_requests(parts["dev"], min(args.n_dev, editable["dev"]), seed=args.seed)
    # the KL inputs: the train part's own facts as text (never a dev or test fact)
    locality = [f"{f.prompt} {f.answer}" for f in parts["train"]]
    target = CausalLMTarget(model, tokenizer)
    metrics = train_network_editor(editor, target, train, locality,
                                   dev=(dev, [f"{f.prompt} {f.answer}" for f in parts["dev"]]))
    editor.save_pretrained(str(out))
    payload = {"out": str(out), "method": args.method, "train_edits": len(train), "dev_edits": len(dev),
               **{k: v for k, v in metrics.items() if k != "history"}, "history": metrics["history"]}
    best = next(r for r in metrics["history"] if r["epoch"] == metrics["best_epoch"])
    emit(args, payload, f"{args.method} trained on {len(train)} edits in {metrics['seconds']:.0f} s "
                        f"(best epoch {metrics['best_epoch']}, dev edit NLL {best.get('dev_edit_nll', float('nan')):.3f}, "
                        f"dev KL {best.get('dev_kl', float('nan')):.4f}); saved to {out}")
    return 0

