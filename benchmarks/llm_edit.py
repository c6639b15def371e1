"""Causal-LM editing: our FT-L / ROME / MEMIT / GRACE against EasyEdit's FT / ROME / MEMIT on one model, one run.

Both sides edit the SAME toy GPT-2 (``--model`` folder written by ``deltakg llm-train-toy``, or one trained here
from ``--dataset`` at the given size) with the SAME requests, and both are applied, timed, measured and rolled
back by the same code (``llm_editing.editors.run_llm_edits`` with our metrics); EasyEdit is imported from its
folder at run time (``benchmarks/_easyedit.py``). Requests are edits of single-answer facts the model knows,
drawn from a ``--split``: the model's known facts are split once (seeded, ``llm_editing.editors.known_split``)
into a train part (``--train-fraction``, what ``deltakg llm-train-editor`` trains MEND on), a dev part
(``--dev-fraction``, for choosing settings) and a disjoint test part (for reporting).

Modes:
- ``single``: each edit applied to the original model, measured, rolled back (ROME, MEMIT, FT);
- ``batch``: all ``--n-edits`` in one MEMIT batch;
- ``sequential``: edits accumulate one by one; measured on the final model (ROME, MEMIT);
- ``grace``: GRACE's sequential edits (ours only).

``--methods ...,mend,ke`` adds our MEND / KE (single and sequential modes; ours only, trained beforehand on
the train part with ``deltakg llm-train-editor`` and passed as ``--ours mend.pretrained=DIR``).

ROME and MEMIT run at each ``--key-positions`` (ours: subject_last / prompt_last; EasyEdit: fact_token
subject_last / last). Settings: ``--ours METHOD.FIELD=VALUE`` (a field of our config dataclass) and
``--peer-set METHOD.FIELD=VALUE`` (an EasyEdit hyperparameter). Prints one JSON line: per method and key
position, each side's reliability, generalization, locality, portability, exact_match, success, fluency and
time_per_edit_s, with the pre-edit values under ``pre``, plus the machine's CPU and fp32 matmul GFLOP/s.
Without the peer it prints a ``skipped`` line. ``--partial FILE`` also appends each side's result to FILE
as soon as it is measured (a long run that is stopped keeps what it finished).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_PEER = REPO.parent / "shared" / "peers" / "EasyEdit-14cea82"
PEER_ENV = "DELTAKG_EASYEDIT"
MODES = {"single": ("rome", "memit", "ft"), "batch": ("memit",), "sequential": ("rome", "memit"),
         "grace": ("grace",)}
# ours-only methods a mode also accepts in --methods (trained editors: --ours NAME.pretrained=DIR, llm-train-editor)
OPTIONAL = {"single": ("mend", "ke"), "batch": (), "sequential": ("mend", "ke"), "grace": ()}
DEFAULT_EDITS = {"single": 100, "batch": 1000, "sequential": 100, "grace": 1000}
OUR_NAMES = {"rome": "rome", "memit": "memit", "ft": "ft-l", "grace": "grace", "mend": "mend", "ke": "ke"}
PEER_KEY = {"subject_last": "subject_last", "prompt_last": "last"}
KEYED = ("rome", "memit")  # methods whose key position matters


def _setting(value: str) -> tuple[str, str, Any]:
    """``METHOD.FIELD=VALUE`` with VALUE read as JSON when it parses."""
    head, sep, raw = value.partition("=")
    method, dot, name = head.partition(".")
    if not sep or not dot or not method or not name:
        raise argparse.ArgumentTypeError(f"expected METHOD.FIELD=VALUE, got {value!r}")
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        parsed = raw
    return method.strip(), name.strip(), parsed


def _by_method(settings: list[tuple[str, str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for method, name, value in settings:
        out.setdefault(method, {})[name] = value
    return out


def _matmul_gflops() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    times = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 1024 ** 3 / sorted(times)[2] / 1e9


def _skip(reason: str, args: argparse.Namespace) -> None:
    print(json.dumps({"benchmark": "llm_edit", "mode": args.mode, "skipped": reason}))


def _model(args: argparse.Namespace) -> tuple[Path, dict[str, Any]] | None:
    """The model folder (trained here into a temporary folder when --model is not given) and its summary."""
    from kg_data import KGDataError
    from llm_editing.facts import load_facts, select_facts
    from llm_editing.toy import ToyConfig, save_toy_model, train_toy_model

    if args.model:
        folder = Path(args.model)
        if not (folder / "config.json").is_file():
            raise SystemExit(f"--model: {folder} is not a Hugging Face model folder (no config.json)")
        meta = json.loads((folder / "toy.json").read_text()) if (folder / "toy.json").is_file() else {}
        return folder, {"trained_here": False, **meta.get("config", {}), **meta.get("metrics", {})}
    try:
        facts = load_facts(args.dataset, args.data_dir)
    except KGDataError as err:
        _skip(f"no data to train the toy model on: {err}", args)
        return None
    config = ToyConfig(n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head, epochs=args.epochs,
                       seed=args.seed, progress=False)
    toy = train_toy_model(select_facts(facts, args.n_facts, seed=args.seed), config)
    folder = Path(tempfile.mkdtemp(prefix="llm-edit-toy-"))
    save_toy_model(toy, folder)
    return folder, {"trained_here": True, **toy.metrics, "n_embd": args.n_embd, "n_layer": args.n_layer}


def split_requests(model: Any, tokenizer: Any, facts: list, n_edits: int, split: str, train_fraction: float,
                   dev_fraction: float, seed: int) -> list:
    """``n_edits`` requests from one part (train / dev / test, disjoint) of the facts the model knows."""
    from llm_editing.editors import known_facts, known_split
    from llm_editing.facts import edit_requests

    pool = known_split(known_facts(model, tokenizer, facts), split, train_fraction=train_fraction,
                       dev_fraction=dev_fraction)
    return edit_requests(pool, n_edits, seed=seed)


def _round(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODES), default="single")
    parser.add_argument("--model", default=None, help="toy model folder (deltakg llm-train-toy); else trained here")
    parser.add_argument("--dataset", default="fb15k237")
    parser.add_argument("--data-dir", default=None, help="folder holding FB15k237/ (default $DELTAKG_DATA)")
    parser.add_argument("--n-facts", type=int, default=2000, help="facts of a toy model trained here")
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--n-edits", type=int, default=None, help="default: 100 (single, sequential), 1000 (batch, "
                        "grace)")
    parser.add_argument("--split", choices=("dev", "test"), default="test")
    parser.add_argument("--train-fraction", type=float, default=0.15, help="known facts kept for training editors")
    parser.add_argument("--dev-fraction", type=float, default=0.15, help="known facts for choosing settings")
    parser.add_argument("--methods", default=None, help="comma-separated subset of the mode's methods")
    parser.add_argument("--key-positions", default="subject_last,prompt_last")
    parser.add_argument("--sides", default="ours,easyedit", help="ours, easyedit or both")
    parser.add_argument("--ours", type=_setting, action="append", default=[], metavar="METHOD.FIELD=VALUE")
    parser.add_argument("--peer-set", type=_setting, action="append", default=[], metavar="METHOD.FIELD=VALUE")
    parser.add_argument("--peer-dir", default=os.environ.get(PEER_ENV, str(DEFAULT_PEER)))
    parser.add_argument("--fluency-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--partial", default=None, metavar="FILE.jsonl",
                        help="append each side's result as one JSON line as soon as it is measured, so that a "
                        "long run that is stopped keeps what it finished")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(MODES[args.mode])
    bad = [m for m in methods if m not in MODES[args.mode] + OPTIONAL[args.mode]]
    if bad or not set(sides) <= {"ours", "easyedit"}:
        raise SystemExit(f"--methods/--sides: {bad or sides} not available in mode {args.mode}")
    for trained in ("mend", "ke"):
        if trained in methods and "pretrained" not in _by_method(args.ours).get(trained, {}):
            raise SystemExit(f"--methods {trained} needs a trained editor: --ours {trained}.pretrained=DIR "
                             f"(deltakg llm-train-editor --method {trained})")
    positions = [p.strip() for p in args.key_positions.split(",") if p.strip()]
    if not set(positions) <= set(PEER_KEY):
        raise SystemExit(f"--key-positions: choose from {', '.join(PEER_KEY)}")
    peer = None
    peer_methods = [m for m in methods if m in ("rome", "memit", "ft")]
    if "easyedit" in sides and peer_methods:
        from _easyedit import load_easyedit

        peer, reason = load_easyedit(Path(args.peer_dir))
        if peer is None:
            _skip(reason, args)
            return

    from deltakg.kge.precision import cpu_info
    from llm_editing.adapter import CausalLMTarget
    from llm_editing.editors import make_editor, run_llm_edits
    from llm_editing.facts import read_facts_jsonl
    from llm_editing.metrics import MetricsConfig
    from llm_editing.toy import FACTS_FILE
    from deltakg.editing.locate.stats import model_fingerprint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    found = _model(args)
    if found is None:
        return
    folder, summary = found
    if not (folder / FACTS_FILE).is_file():
        raise SystemExit(f"--model: {folder} has no {FACTS_FILE} (the facts it was trained on)")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    facts = read_facts_jsonl(folder / FACTS_FILE)
    corpus = [s for f in facts for s in f.sentences()]
    n_edits = args.n_edits or DEFAULT_EDITS[args.mode]
    requests = split_requests(model, tokenizer, facts, n_edits, args.split, args.train_fraction, args.dev_fraction,
                              args.seed)
    target = CausalLMTarget(model, tokenizer, corpus)
    metrics = MetricsConfig(fluency_tokens=args.fluency_tokens)
    ours_set, peer_set = _by_method(args.ours), _by_method(args.peer_set)
    sequential = args.mode in ("sequential", "grace")
    batch_size = n_edits if args.mode == "batch" else 1
    original = model_fingerprint(model)
    stats_dir = tempfile.mkdtemp(prefix="llm-edit-stats-")

    results: dict[str, dict[str, Any]] = {}

    def keep(name: str, side: str, value: dict[str, Any]) -> None:
        """Store one side's result; with --partial also append it to that file at once."""
        results.setdefault(name, {})[side] = value
        if args.partial:
            with open(args.partial, "a", encoding="utf-8") as out:
                out.write(json.dumps({"mode": args.mode, "seed": args.seed, "n_edits": len(requests),
                                      "result": name, "side": side, **value}) + "\n")

    for method in methods:
        for position in (positions if method in KEYED else [None]):
            name = method if position is None else f"{method}/{position}"
            results.setdefault(name, {})  # keeps the order of methods and key positions
            if "ours" in sides:
                options = {"progress": False, "stats_dir": stats_dir} if method in KEYED else {}
                if position is not None:
                    options["key_position"] = position
                options.update(ours_set.get(method, {}))
                editor = make_editor(OUR_NAMES[method], options, corpus)
                report = run_llm_edits(editor, target, requests, batch_size=batch_size, sequential=sequential,
                                       metrics=metrics)
                report.rollback()
                if hasattr(editor, "detach"):
                    editor.detach(target)  # GRACE's codebook hook
                keep(name, "ours", {**_round(report.metrics), "pre": _round(report.pre),
                                    "settings": {k: v for k, v in vars(editor.resolved(target)).items()
                                                 if k not in ("progress", "stats_dir")}})
            if peer is not None and method in peer_methods:
                from _easyedit import PeerEditor, peer_hparams, reset_peer_caches

                overrides = dict(peer_set.get(method, {}))
                if position is not None:
                    overrides.setdefault("fact_token", PEER_KEY[position])
                hparams = peer_hparams(method, folder, model.config.n_layer, len(corpus), stats_dir, overrides)
                reset_peer_caches(peer)
                editor = PeerEditor(peer, method, hparams, corpus)
                shown = {k: v for k, v in hparams.items() if not k.endswith("_tmp") and k not in (
                    "model_name", "stats_dir", "ln_f_module", "lm_head_module", "device", "model_parallel")}
                try:
                    report = run_llm_edits(editor, target, requests, batch_size=batch_size, sequential=sequential,
                                           metrics=metrics)
                except Exception as err:  # the peer refusing a setting is a result (e.g. MEMIT's fact_token "last")
                    keep(name, "easyedit", {"error": f"{type(err).__name__}: {err}", "settings": shown})
                else:
                    report.rollback()
                    keep(name, "easyedit", {**_round(report.metrics), "pre": _round(report.pre),
                                            "settings": shown})
            if model_fingerprint(model) != original:
                raise SystemExit(f"{method}: the model was not restored after its edits")
    if peer is not None:
        for row in results.values():
            if "ours" in row and "time_per_edit_s" in row.get("easyedit", {}):
                ours_t, peer_t = row["ours"]["time_per_edit_s"], row["easyedit"]["time_per_edit_s"]
                row["peer_time_over_ours"] = round(peer_t / ours_t, 3) if ours_t else None

    print(json.dumps({
        "benchmark": "llm_edit", "mode": args.mode, "split": args.split, "n_edits": len(requests),
        "batch_size": batch_size, "sequential": sequential, "seed": args.seed,
        "model": {k: summary[k] for k in ("n_embd", "n_layer", "n_facts", "parameters", "reproduced",
                                          "trained_here") if k in summary},
        "peer": Path(args.peer_dir).name if peer is not None else None,
        "machine": cpu_info(), "threads": args.threads, "matmul_gflops": round(_matmul_gflops(), 1),
        "results": results, "seconds": round(time.perf_counter() - started, 1),
    }))


if __name__ == "__main__":
    main()
