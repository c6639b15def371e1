"""``deltakg llm-edit``: edit a causal LM with a registered method and report the edit metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ._common import CommandError, add_command, add_json_arg, add_progress_arg, emit, positive_int


def _methods() -> dict:
    from llm_editing.editors import llm_editors

    return llm_editors()


def _option(value: str) -> tuple[str, Any]:
    """``KEY=VALUE``; VALUE read as JSON when it parses (numbers, lists), else as a string."""
    if "=" not in value or not value.split("=", 1)[0].strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    key, raw = value.split("=", 1)
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``llm-edit``; method choices come from the editor registry (causal-LM family)."""
    from deltakg.editing.locate import KEY_POSITIONS

    methods = _methods()
    cmd = add_command(commands, "llm-edit", "edit a causal LM (a local Hugging Face folder, e.g. the toy GPT-2) and "
                      "report reliability, generalization, locality, portability, exact match, success, fluency")
    cmd.add_argument("--model", required=True, metavar="PATH", help="a local Hugging Face causal-LM folder")
    source = cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", metavar="NAME", help="edit facts of this dataset that the model knows (fb15k237)")
    source.add_argument("--edits", metavar="FILE.jsonl", help="edit requests (EasyEdit / ZsRE / CounterFact records)")
    cmd.add_argument("--data-dir", default=None, metavar="DIR", help="folder with FB15k237/ (default: $DELTAKG_DATA)")
    cmd.add_argument("--n-edits", type=positive_int, default=None, metavar="N", help="edits to draw (with --dataset)")
    cmd.add_argument("--method", required=True, choices=sorted(methods),
                     help="; ".join(f"{n}: {c.summary}" for n, c in sorted(methods.items())))
    cmd.add_argument("--batch-size", type=positive_int, default=1, help="edits per batch")
    cmd.add_argument("--sequential", action="store_true", help="let edits accumulate instead of resetting per batch")
    cmd.add_argument("--key-position", choices=KEY_POSITIONS, default=None,
                     help="where ROME/MEMIT read keys (default: the method's default for the model type)")
    cmd.add_argument("--set", dest="options", type=_option, action="append", default=[], metavar="KEY=VALUE",
                     help="a field of the method's config dataclass, e.g. --set layer=1 --set layers=[0,1]")
    cmd.add_argument("--corpus", default=None, metavar="FILE",
                     help="text for ROME/MEMIT key statistics, one text per line (default: the toy model's facts)")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the drawn edits")
    add_progress_arg(cmd)
    add_json_arg(cmd)
    cmd.set_defaults(func=_llm_edit)


def _load(path: str) -> tuple[Any, Any, list]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_editing.toy import FACTS_FILE
    from llm_editing.facts import read_facts_jsonl

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise CommandError(f"--model: {path} is not a Hugging Face model folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    facts = read_facts_jsonl(folder / FACTS_FILE) if (folder / FACTS_FILE).is_file() else []
    return model, tokenizer, facts


def _llm_edit(args: argparse.Namespace) -> int:
    from llm_editing.adapter import CausalLMTarget
    from llm_editing.editors import dataset_requests, make_editor, run_llm_edits
    from llm_editing.facts import load_facts
    from llm_editing.requests import load_requests

    if args.dataset and args.n_edits is None:
        raise CommandError("--n-edits is required with --dataset")
    if args.edits and args.n_edits is not None:
        raise CommandError("--n-edits goes with --dataset; --edits applies every request of the file")
    options = dict(args.options)
    if args.key_position:
        options["key_position"] = args.key_position
    editor = make_editor(args.method, options)  # a bad option fails before the model loads
    if type(editor).trainable and not options.get("pretrained"):
        raise CommandError(f"--method {args.method} needs a trained editor: --set pretrained=DIR (train one with "
                           f"deltakg llm-train-editor --method {args.method})")
    model, tokenizer, trained_on = _load(args.model)
    if args.dataset:
        facts = load_facts(args.dataset, args.data_dir)
        if trained_on:  # a toy model: its own facts are the ones it can know
            own = {f.triple for f in trained_on}
            facts = [f for f in facts if f.triple in own]
        requests = dataset_requests(model, tokenizer, facts, args.n_edits, seed=args.seed)
    else:
        requests = load_requests(args.edits)
    if args.corpus:
        corpus = [line.rstrip("\n") for line in Path(args.corpus).read_text(encoding="utf-8").splitlines()
                  if line.strip()]
    else:
        corpus = [s for f in trained_on for s in f.sentences()] or None
    editor.corpus = corpus
    target = CausalLMTarget(model, tokenizer, corpus)
    report = run_llm_edits(editor, target, requests, batch_size=args.batch_size, sequential=args.sequential,
                           progress=not args.no_progress)
    out = report.to_dict()
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    keys = ("reliability", "generalization", "locality", "portability", "exact_match", "success", "fluency")
    text = (f"{out['method']} on {out['edits']} edits (batch {args.batch_size}"
            f"{', sequential' if args.sequential else ''}): "
            + "  ".join(f"{k} {fmt(out[k])} (pre {fmt(out['pre'][k])})" for k in keys)
            + f"  time/edit {out['time_per_edit_s']:.4f}s")
    emit(args, out, text)
    return 0
