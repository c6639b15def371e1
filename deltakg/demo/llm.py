"""The demo's LLM stage: UMLS's single-answer facts said in English, a small GPT-2 trained on them, edited.

UMLS has no relation templates in :mod:`llm_editing.facts` (its facts come from FB15k-237, which needs the
data directory); ``deltakg/configs/umls_templates.json`` says each UMLS relation in English, so the demo runs
on the data PyKEEN ships. UMLS has few single-answer facts (about 120 after the checks of
:func:`llm_editing.facts.single_answer_facts`): enough for a toy model that knows every one of them.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from .config import LLMStage
from .kg import DATASET

__all__ = ["umls_templates", "umls_facts", "METHOD_SETTINGS", "train_and_edit", "write_llm_plot"]

# the causal-LM methods' settings for the demo's 2-layer GPT-2 (the registry's defaults are sized for the
# 4-layer toy): keys at the prompt's last token, no context prefixes; MEMIT's covariance weight for a corpus
# of a few hundred sentences. The same settings tests/test_llm_editing.py gives a 2-layer model
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "ft-l": {"layer": 1},
    "rome": {"layer": 0, "key_position": "prompt_last", "n_prefixes": 0},
    "memit": {"layers": [0, 1], "key_position": "prompt_last", "n_prefixes": 0, "mom2_weight": 10.0},
    "grace": {"layer": 1},
}
METRICS = ("reliability", "generalization", "locality", "exact_match", "time_per_edit_s")


def umls_templates():
    """The :class:`~llm_editing.requests.TemplateRegistry` of UMLS's relations (package data)."""
    from llm_editing import RelationTemplate, TemplateRegistry

    table = json.loads(resources.files("deltakg").joinpath("configs/umls_templates.json").read_text())
    return TemplateRegistry(RelationTemplate(relation, spec["prompt"], tuple(spec.get("rephrasings", ())))
                            for relation, spec in table.items() if not relation.startswith("_"))


def umls_facts() -> list:
    """UMLS's single-answer facts with their English templates."""
    from llm_editing import load_facts

    return load_facts(DATASET, templates=umls_templates(), min_facts=50)


def _row(method: str, report: dict[str, Any]) -> dict[str, Any]:
    row = {"method": method, **{key: report[key] for key in METRICS}, "edits": report["edits"],
           "batch_size": report["batch_size"]}
    row["pre"] = {key: report["pre"][key] for key in METRICS if key in report["pre"]}
    return row


def train_and_edit(folder: Path, config: LLMStage, *, progress: bool) -> dict[str, Any]:
    """Train the toy GPT-2 on UMLS facts (saved in ``folder/model``), then edit known facts with each method."""
    from llm_editing import ToyConfig, save_toy_model, train_toy_model
    from llm_editing.adapter import CausalLMTarget
    from llm_editing.editors import dataset_requests, llm_editors, make_editor, run_llm_edits
    from llm_editing.metrics import MetricsConfig

    facts = umls_facts()
    toy = train_toy_model(facts, ToyConfig(n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
                                           vocab_size=config.vocab_size, epochs=config.epochs,
                                           batch_size=config.batch_size, seed=config.seed, progress=progress))
    save_toy_model(toy, folder / "model")
    corpus = [s for f in facts for s in f.sentences()]  # ROME/MEMIT key statistics: what the model was trained on
    requests = dataset_requests(toy.model, toy.tokenizer, facts, config.n_edits, seed=config.seed)
    rows = []
    for name in llm_editors():
        options = dict(METHOD_SETTINGS.get(name, {}))
        if name in ("rome", "memit"):
            options.update(stats_dir=str(folder / "stats"), progress=False)
        editor = make_editor(name, options, corpus=corpus)
        target = CausalLMTarget(toy.model, toy.tokenizer, corpus)
        batch = 1 if name != "memit" else len(requests)  # MEMIT: all edits in one batch, its point
        report = run_llm_edits(editor, target, requests, batch_size=batch, metrics=MetricsConfig(fluency_tokens=0),
                               progress=progress)
        settings = {k: v for k, v in options.items() if k not in ("stats_dir", "progress")}
        rows.append({**_row(name, report.to_dict()), "settings": settings})
    m = toy.metrics
    return {"model": "llm/model", "facts": len(facts), "dataset": DATASET, "edits": len(requests),
            "toy": {"parameters": m["parameters"], "vocab_size": m["vocab_size"], "train_s": round(m["train_seconds"], 1),
                    "reproduced": m["reproduced"], "reproduced_rephrased": m["reproduced_rephrased"],
                    "n_layer": config.n_layer, "n_embd": config.n_embd},
            "rows": rows,
            "about": "each request edits a fact the model generates exactly into another answer of its relation; "
                     "reliability / generalization: target-token accuracy on the prompt / its rephrasing; locality: "
                     "unchanged tokens on another known fact; exact match: greedy generation is the new answer; "
                     "each batch is applied to the unedited model and rolled back"}


def write_llm_plot(result: dict[str, Any], folder: Path) -> Path:
    """Reliability, generalization, locality and exact match per method as a bar chart (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("reliability", "generalization", "locality", "exact_match")
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(7, 3))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        ax.bar([j + i * width for j in range(len(rows))], [r[key] or 0.0 for r in rows], width, label=key)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], [r["method"] for r in rows])
    ax.set_ylim(0, 1.05)
    ax.set_title(f"toy GPT-2 on {result['facts']} UMLS facts: {result['edits']} edits")
    ax.legend(fontsize=7, ncol=4, loc="lower center")
    fig.tight_layout()
    path = folder / "llm_edits.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
