"""``deltakg demo``: the whole project in one run, on UMLS (shipped with PyKEEN), on a CPU.

Stages, in order (each reused from ``OUT/stages/NAME.json`` when an earlier run finished it with the same
settings):

1. ``kg``: train the masked-entity model on UMLS and evaluate it on test;
2. ``pykeen``: PyKEEN's ComplEx trained for the same wall-clock time, scored by PyKEEN's evaluator;
3. ``editset``: build E-UMLS (corrupted single-answer facts the base model learnt);
4. ``edits``: every KG editor of the registry on it, tuned on dev, the paper-layout table and PNG plots;
5. ``llm``: a small GPT-2 trained on UMLS's single-answer facts, edited by every causal-LM method;
6. ``knn``: kNN-KGE beside the model alone (and the k-NN memory editor's row of the edit table).

``run_demo(out, DemoConfig.for_size(fast=True))`` returns the report that ``OUT/report.json`` holds and
``deltakg demo --json`` prints; :func:`format_report` is its text form.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from .config import DemoConfig
from .folder import FORMAT, DemoFolder
from .report import format_report

__all__ = ["DemoConfig", "DemoFolder", "STAGES", "run_demo", "format_report"]

STAGES = {
    "kg": "train the base KG model on UMLS (tiny encoder) and evaluate it on test",
    "pykeen": "train PyKEEN's ComplEx on UMLS for the same wall-clock time and evaluate it",
    "editset": "build E-UMLS: corrupt single-answer facts, train a base model on them, pick edit cases",
    "edits": "run every KG editor of the registry on E-UMLS (tuned on dev, scored on test)",
    "llm": "train a small GPT-2 on UMLS's single-answer facts and edit it with every causal-LM method",
    "knn": "kNN-KGE: mix a k-NN over the training queries into the base model's scores",
}


def _stderr(message: str) -> None:
    print(f"deltakg demo: {message}", file=sys.stderr, flush=True)


def run_demo(out: str | Path, config: DemoConfig | None = None, *, progress: bool = True,
             log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Run (or reuse) every stage into ``out``; write and return the report."""
    from deltakg.serialization import write_json

    from . import edits, kg, llm

    config = config or DemoConfig.for_size(fast=True)
    folder = DemoFolder(out)
    started = time.perf_counter()
    records: dict[str, dict[str, Any]] = {}
    timings: dict[str, dict[str, Any]] = {}

    def stage(index: int, name: str, settings: dict[str, Any], run: Callable[[Path], dict[str, Any]]) -> dict:
        prefix = f"[{index}/{len(STAGES)}] {name}"
        record = folder.finished(name, settings)
        if record is not None:
            log(f"{prefix}: reused from an earlier run ({record['seconds']:.0f} s then)")
            timings[name] = {"seconds": record["seconds"], "reused": True}
        else:
            log(f"{prefix}: {STAGES[name]} ...")
            t0 = time.perf_counter()
            result = run(folder.start(name))
            record = folder.finish(name, settings, result, time.perf_counter() - t0)
            log(f"{prefix}: done in {record['seconds']:.0f} s")
            timings[name] = {"seconds": record["seconds"], "reused": False}
        records[name] = record
        return record["result"]

    root = folder.root
    kg_settings = config.settings("kg")
    kg_result = stage(1, "kg", kg_settings, lambda d: kg.train_kg(d, config.kg, progress=progress))
    budget = kg_result["train_s"]
    pk_result = stage(2, "pykeen", {"kg": kg_settings, "budget_s": budget, "seed": config.kg.seed},
                      lambda d: kg.train_pykeen(budget, config.kg.seed, progress=progress))
    es_settings = config.settings("editset")
    es_result = stage(3, "editset", es_settings, lambda d: edits.build_eumls(d, config.editset, progress=progress))
    edit_result = stage(4, "edits", {"editset": es_settings, **config.settings("edits")},
                        lambda d: edits.edit_table(root, d, config.edits, progress=progress, log=log))

    def run_llm(d: Path) -> dict[str, Any]:
        result = llm.train_and_edit(d, config.llm, progress=progress)
        result["plot"] = llm.write_llm_plot(result, d).relative_to(root).as_posix()
        return result

    llm_result = stage(5, "llm", config.settings("llm"), run_llm)
    knn_result = stage(6, "knn", {"kg": kg_settings, **config.settings("knn")},
                       lambda d: kg.knn_rows(root / "kg", config.knn, progress=progress))
    report = {
        "format": FORMAT, "fast": config.fast, "dataset": kg_result["dataset"],
        "kg": kg_result, "pykeen": pk_result, "editset": es_result, "edits": edit_result,
        "llm": llm_result, "knn": _knn_report(knn_result, edit_result),
        "stages": timings, "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(root / "report.json", report)
    return report


def _knn_report(link: dict[str, Any], edit: dict[str, Any]) -> dict[str, Any]:
    """The k-NN rows: kNN-KGE beside the model alone, and the k-NN memory editor's row of the edit table."""
    rows = [{"row": "kNN-KGE link prediction (UMLS test)", **{k: link["knn"][k] for k in ("mrr", "hits@1", "hits@10")},
             "model_alone": {k: link["model"][k] for k in ("mrr", "hits@1", "hits@10")}, **link["settings"]}]
    editor = next((r for r in edit["rows"] if r["method"] == "knn"), None)
    if editor is not None:
        rows.append({"row": "knn memory editor (E-UMLS test)",
                     **{k: editor[k] for k in ("succ@1", "succ@3", "rk@3", "time_per_edit_s")}})
    return {"rows": rows, "valid_queries": link["valid_queries"]}
