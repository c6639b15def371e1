"""The demo's edit stages: build E-UMLS, then every KG editor of the registry on it (the paper-layout table)."""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from .config import EditSetStage, EditsStage
from .kg import DATASET

__all__ = ["build_eumls", "edit_table"]


def build_eumls(folder: Path, config: EditSetStage, *, progress: bool) -> dict[str, Any]:
    """An EDIT set of UMLS (single-answer facts corrupted, the base model trained on them) in ``folder``."""
    from deltakg.editsets import build_editset
    from deltakg.kge.training import TrainConfig
    from kg_data import load_dataset

    kg = load_dataset(DATASET)
    train = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, label_smoothing=0.0,
                        patience=None, seed=config.seed, precision="32-true", decoder_dtype="float32",
                        progress=progress)
    build = build_editset(kg, "edit", folder, encoder="tiny", use_text=False, layers=config.layers,
                          size=config.size, candidates=config.candidates, max_answers=1,
                          stable_size=config.stable_size, seed=config.seed, train_config=train, overwrite=True)
    shutil.rmtree(build.model_dir / "checkpoints", ignore_errors=True)  # resume files; the model is saved beside
    counts = build.counts
    return {"name": f"E-{kg.name.upper()}", "editset": "editset", "model": "editset/model",
            "edit_cases": counts["edit_cases"], "stable_pools": counts["stable_pools"],
            "corrupted": counts.get("corrupted"), "base_valid_mrr": build.info["base_model"]["valid_mrr"]}


def _relative(report: dict[str, Any], root: Path) -> dict[str, Any]:
    """The benchmark report with paths relative to the demo folder (no machine's absolute paths in output)."""
    def rel(path: str) -> str:
        try:
            return Path(path).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return Path(path).name

    out = dict(report)
    for key in ("model", "editset"):
        out[key] = rel(out[key])
    out["plots"] = [rel(p) for p in out.get("plots", [])]
    return out


def edit_table(root: Path, folder: Path, config: EditsStage, *, progress: bool,
               log: Callable[[str], None]) -> dict[str, Any]:
    """:func:`~deltakg.editing.benchmark.benchmark_edits` over every KG editor, its table and PNG plots."""
    from deltakg.editing.benchmark import BenchmarkConfig, benchmark_edits, markdown_table, write_plots

    bench = BenchmarkConfig(methods=(), batch_sizes=config.batch_sizes, sequential=config.sequential,
                            seeds=config.seeds, tune_budget=config.tune_budget, editor_epochs=config.editor_epochs,
                            progress=progress)
    with contextlib.redirect_stdout(sys.stderr):  # Lightning's messages while editors train
        report = benchmark_edits(root / "editset" / "model", root / "editset", bench, work_dir=folder / "editors",
                                 log=log)
    for checkpoints in (folder / "editors").glob("*/checkpoints"):  # resume files; each editor is saved beside
        shutil.rmtree(checkpoints)
    report["plots"] = [str(p) for p in write_plots(report, folder)]
    report = _relative(report, root)
    report["table"] = markdown_table(report)
    return report
