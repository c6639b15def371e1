"""Benchmark: the deltaKG paper-layout table (ZSL = the unedited model, FT, KGEditor) on built edit sets.

For each ``--editset DIR`` (written by ``deltakg editset build``; its base model is ``DIR/model``):

- ZSL: the unedited model judged like an edit (Succ@k of the targets, RK@3 = 1 by definition);
- FT: ``deltakg.editing`` FineTune with its defaults, batches of ``--batch-size`` edits, per-batch protocol;
- KGEditor: trained on the set's train cases (dev cases select the checkpoint, stable facts feed the KL
  term) with the dataset's defaults from ``deltakg/configs/kgeditor.json``, then applied to the test cases.

All rows edit the **test** cases and judge locality on the set's stable facts. Time per edit is the edit call
only (the KGEditor training time is reported separately). Prints one JSON line; a Markdown table goes to
stderr.

    python benchmarks/edit_table.py --editset runs/e-wn18rr --editset runs/a-wn18rr [--editor-epochs N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/quality.py

import torch  # noqa: E402

KEYS = ("time_per_edit_s", "succ@1", "succ@3", "er_roc", "rk@3", "rk_roc")


def zsl_row(model_dir: Path, cases: list, stable: list) -> dict[str, Any]:
    """Metrics of the unedited model in the edit metrics' terms."""
    from deltakg.editing.metrics import edit_metrics
    from deltakg.editing.target import KGETarget
    from deltakg.kge.model import MaskedEntityModel

    target = KGETarget(MaskedEntityModel.from_pretrained(model_dir))
    edit = target.ranks(target.encode(cases))
    kept = target.ranks(target.encode(stable))
    metrics = edit_metrics(edit, edit, kept, kept)
    return {**metrics, "time_per_edit_s": 0.0, "params": {}}


def run_set(editset_dir: Path, *, batch_size: int, editor_epochs: int | None, editor_minutes: float | None,
            work: Path) -> dict[str, Any]:
    """The three rows for one edit set."""
    from deltakg.editing import get_editor, run_edits
    from deltakg.editing.methods.kgeditor import KGEditor, KGEditorConfig
    from deltakg.editing.methods.kgeditor_training import train_kgeditor
    from deltakg.kge.model import MaskedEntityModel
    from kg_data import EditSet

    editset = EditSet.load(editset_dir)
    info = json.loads((editset_dir / "editset.json").read_text())
    model_dir = editset_dir / "model"
    # RK on stable_test only; the editor trains on stable_train and selects on stable_dev (a single-pool set
    # from before the pools serves all three, and the JSON says so)
    test, stable = editset.cases["test"], editset.pool("test")
    rows: dict[str, Any] = {"ZSL": zsl_row(model_dir, test, stable)}
    rows["FT"] = run_edits(get_editor("ft"), MaskedEntityModel.from_pretrained(model_dir), test, stable,
                           batch_size=batch_size).metrics
    config = KGEditorConfig.for_dataset(info["dataset"], epochs=editor_epochs)
    start = time.perf_counter()
    _, trained = train_kgeditor(MaskedEntityModel.from_pretrained(model_dir), editset.cases["train"],
                                editset.pool("train"), work / "editor", config=config,
                                dev_cases=editset.cases["dev"], dev_stable=editset.pool("dev"),
                                max_time_minutes=editor_minutes, progress=False)
    train_s = time.perf_counter() - start
    rows["KGEditor"] = run_edits(KGEditor.from_pretrained(work / "editor"), MaskedEntityModel.from_pretrained(model_dir),
                                 test, stable, batch_size=batch_size).metrics
    rows["KGEditor"]["train_s"] = round(train_s, 1)
    rows["KGEditor"]["train_epochs"] = trained["epochs_run"]
    return {
        "editset": str(editset_dir),
        "kind": info["kind"],
        "dataset": info["dataset"],
        "counts": info["counts"],
        "rk_facts": editset.pool_name("test"),
        "build": {k: info["parameters"].get(k) for k in ("encoder", "use_text", "layers", "size", "candidates",
                                                          "max_answers", "stable_size")},
        "base_model": info.get("base_model"),
        "rows": {name: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
                 for name, row in rows.items()},
        "time_ratio_kgeditor_ft": round(rows["KGEditor"]["time_per_edit_s"] / rows["FT"]["time_per_edit_s"], 3),
    }


def markdown(results: Sequence[dict[str, Any]]) -> str:
    """The paper's layout: one column per edit set, Time/Succ@1/Succ@3/ER_roc/RK@3/RK_roc per method."""
    names = [f"{'E' if r['kind'] == 'edit' else 'A'}-{r['dataset']}" for r in results]
    lines = ["| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for method in ("ZSL", "FT", "KGEditor"):
        cells = ["/".join(f"{r['rows'][method][k]:.3f}" for k in KEYS) for r in results]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the table and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editset", action="append", required=True, help="an edit-set folder (repeatable)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--editor-epochs", type=int, default=None, help="KGEditor training epochs (config default)")
    parser.add_argument("--editor-minutes", type=float, default=None, help="cap on KGEditor training time")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="deltakg-edit-table-") as tmp:
        for i, path in enumerate(args.editset):
            work = Path(tmp) / str(i)
            results.append(run_set(Path(path), batch_size=args.batch_size, editor_epochs=args.editor_epochs,
                                   editor_minutes=args.editor_minutes, work=work))
            print(f"[edit_table] {path}: {json.dumps(results[-1]['rows'])}", file=sys.stderr, flush=True)
    print(markdown(results), file=sys.stderr)
    print(json.dumps({"benchmark": "edit_table", "threads": torch.get_num_threads(), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
