"""The KG edit benchmark: every registered KG editor on one edit set, settings tuned on dev, reported on test.

Protocol (issue 15): each method's settings are chosen on the dev edit cases with RK on ``stable_dev``, from
its grid in ``deltakg/configs/edit_search.json`` with the same number of tried settings per method
(``tune_budget``); trainable methods train on ``EditSet.training_view()`` (train cases, ``stable_train``,
selection on dev and ``stable_dev``); test cases and ``stable_test`` are touched only to report. Rows are
means and standard deviations over ``seeds`` (a trainable method's training seed; the other methods here are
deterministic, so their spread is zero and the report says so).
"""

from __future__ import annotations

import itertools
import json
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from kg_data import EditSet, KGDataError

from .editor import EDITORS, Editor, apply_edit, run_edits
from .metrics import edit_metrics
from .target import KGETarget

__all__ = ["BenchmarkConfig", "benchmark_edits", "kge_methods", "search_space", "markdown_table", "write_plots",
           "REPORTED"]

REPORTED = ("time_per_edit_s", "succ@1", "succ@3", "er_roc", "rk@3", "rk_roc")


def _variants() -> dict[str, dict[str, Any]]:
    table = json.loads(resources.files("deltakg").joinpath("configs/edit_variants.json").read_text())
    return {name: spec for name, spec in table.items() if not name.startswith("_")}


def kge_methods() -> list[str]:
    """The registered editors of the KG model family, then their named variants (deltakg/configs/edit_variants.json)."""
    base = sorted(name for name, cls in EDITORS.items() if "kge" in cls.families)
    return base + sorted(name for name, spec in _variants().items() if spec["method"] in base)


def _resolve(name: str, dataset: str) -> tuple[str, dict[str, Any], str | None]:
    """(registered method, fixed settings, description) of a method or variant name."""
    spec = _variants().get(name)
    if spec is None:
        return name, {}, None
    settings = {**spec.get("settings", {}), **spec.get("per_dataset", {}).get(dataset.lower(), {})}
    return spec["method"], settings, spec.get("about")


def search_space(method: str) -> dict[str, list]:
    """The tuning grid of ``method`` (empty: its defaults only)."""
    table = json.loads(resources.files("deltakg").joinpath("configs/edit_search.json").read_text())
    return {k: list(v) for k, v in table.get(method, {}).items()}


@dataclass
class BenchmarkConfig:
    """What :func:`benchmark_edits` runs."""

    methods: Sequence[str] = ()  # empty: every KG editor in the registry
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32)
    main_batch_size: int | None = None  # the rows' batch size (default: 2, the paper's, if listed, else the first)
    sequential: int = 0  # edits applied one batch after another (0: none)
    seeds: Sequence[int] = (0, 1, 2)
    tune: bool = True
    tune_budget: int = 6  # settings tried per method on dev
    editor_epochs: int | None = None  # trainable methods' epochs (default: their config)
    editor_minutes: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(kge_methods()))
        if unknown:
            raise KGDataError(f"unknown KG edit method(s) {', '.join(unknown)}; choose from "
                              f"{', '.join(kge_methods())} or all", field="methods")
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise KGDataError(f"batch sizes must be positive, got {list(self.batch_sizes)}", field="batch-sizes")
        if self.main_batch_size is not None and self.main_batch_size not in self.batch_sizes:
            raise KGDataError(f"the main batch size {self.main_batch_size} is not among {list(self.batch_sizes)}",
                              field="batch-sizes")
        if self.sequential < 0 or self.tune_budget < 1 or not self.seeds:
            raise KGDataError("sequential must be >= 0, tune_budget >= 1 and seeds non-empty", field="sequential")

    @property
    def row_batch_size(self) -> int:
        """The batch size of the main table."""
        if self.main_batch_size is not None:
            return self.main_batch_size
        return 2 if 2 in self.batch_sizes else int(self.batch_sizes[0])


def _candidates(method: str, budget: int, seed: int = 0) -> list[dict[str, Any]]:
    space = search_space(method)
    if not space:
        return [{}]
    grid = [dict(zip(space, values)) for values in itertools.product(*space.values())]
    random.Random(seed).shuffle(grid)  # a seeded draw of `budget` settings, the same for every run
    return grid[:budget]


def _editor_for(method: str, settings: dict[str, Any], model_dir: Path, editset: EditSet, seed: int,
                config: BenchmarkConfig, work: Path, name: str | None = None) -> tuple[Editor, dict[str, Any]]:
    """An editor of ``method`` with ``settings``; a trainable one is trained on the training view first."""
    from deltakg.kge.model import MaskedEntityModel

    cls = EDITORS[method]
    view = editset.training_view()  # what a method may see: no test cases, no stable_test
    if not cls.trainable:
        editor = cls.from_settings(progress=config.progress, **settings)
        if cls.replays_stable_train and editset.stable_pools:
            # stable_train only; a single-pool set's facts are the ones RK is measured on: nothing is replayed
            editor.set_replay(view.pool("train"))
        return editor, {}
    out = work / f"{name or method}-seed{seed}"
    started = time.perf_counter()
    options = {"epochs": config.editor_epochs, **settings}  # a variant's own epochs (e.g. 0) win
    metrics = cls.train_pretrained(MaskedEntityModel.from_pretrained(model_dir), view.cases["train"],
                                   view.pool("train"), str(out), dev_cases=view.cases.get("dev"),
                                   dev_stable=view.pool("dev"), max_time_minutes=config.editor_minutes,
                                   progress=False, seed=seed, **options)
    metrics["train_s"] = round(time.perf_counter() - started, 2)
    return cls.from_pretrained(str(out)), metrics


def _score(metrics: dict[str, Any]) -> float:
    # selection on dev: reliability and locality weigh alike
    return (metrics["succ@1"] + metrics["rk@3"]) / 2


def _sequential_curve(editor: Editor, model, cases, stable, batch_size: int, total: int) -> list[dict[str, Any]]:
    """Succ@1 on every edit so far and RK@3 after 1, 10, 100, 1000 ... and ``total`` sequential edits."""
    target = KGETarget(model)
    editor.prepare(target)
    facts, stable_facts = target.encode(list(cases[:total])), target.encode(list(stable))
    edit_before, stable_before = target.ranks(facts), target.ranks(stable_facts)
    marks = sorted({m for m in (1, 10, 100, 1000, 10000) if m < len(facts)} | {len(facts)})
    handles, curve, done = [], [], 0
    try:
        for start in range(0, len(facts), batch_size):
            handles.append(apply_edit(editor, target, facts.select(slice(start, start + batch_size)), check=False))
            done = min(start + batch_size, len(facts))
            if marks and done >= marks[0]:
                while marks and done >= marks[0]:
                    marks.pop(0)
                so_far = facts.select(slice(0, done))
                m = edit_metrics(edit_before[:done], target.ranks(so_far), stable_before, target.ranks(stable_facts))
                curve.append({"edits": done, "succ@1": m["succ@1"], "rk@3": m["rk@3"]})
    finally:
        for handle in reversed(handles):
            handle.rollback()
    return curve


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def benchmark_edits(model_dir: str | Path, editset_dir: str | Path, config: BenchmarkConfig | None = None, *,
                    work_dir: str | Path | None = None,
                    log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Run the benchmark; returns ``{"rows": [...], "sequential": [...], "by_batch_size": [...], ...}``."""
    from deltakg.kge.model import MaskedEntityModel
    from tqdm.auto import tqdm

    config = config or BenchmarkConfig()
    model_dir, editset = Path(model_dir), EditSet.load(editset_dir)
    for split in ("dev", "test"):
        if not editset.cases.get(split):
            raise KGDataError(f"has no {split} edit cases (tuning needs dev, reporting needs test)",
                              path=Path(editset_dir) / f"{split}.jsonl")
    methods = list(config.methods) or kge_methods()
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="deltakg-bench-"))
    dev, dev_stable = editset.cases["dev"], editset.pool("dev")
    test, test_stable = editset.cases["test"], editset.pool("test")
    fresh = lambda: MaskedEntityModel.from_pretrained(model_dir)  # noqa: E731  every run edits a clean copy

    target = KGETarget(fresh())
    edit_ranks, stable_ranks = target.ranks(target.encode(test)), target.ranks(target.encode(test_stable))
    zsl = {**edit_metrics(edit_ranks, edit_ranks, stable_ranks, stable_ranks), "time_per_edit_s": 0.0}
    rows: list[dict[str, Any]] = [{"method": "zsl", **{k: zsl[k] for k in REPORTED}, "params": {},
                                   "std": {k: 0.0 for k in REPORTED}, "settings": {}, "seeds": 0}]
    by_batch: list[dict[str, Any]] = []
    sequential: list[dict[str, Any]] = []
    tuning: dict[str, Any] = {}
    dataset = fresh().config.dataset
    bar = tqdm(methods, desc="methods", disable=not config.progress)
    for name in bar:
        bar.set_postfix_str(name)
        method, fixed, about = _resolve(name, dataset)
        cls = EDITORS[method]
        started = time.perf_counter()
        # 1. settings on dev (trainable methods: their config defaults, trained once per seed below)
        tried = []
        searched = config.tune and not cls.trainable and not fixed
        for settings in (_candidates(method, config.tune_budget) if searched else [{}]):
            settings = {**fixed, **settings}
            if cls.trainable:
                tried.append({"settings": settings})
                break
            editor, _ = _editor_for(method, settings, model_dir, editset, config.seeds[0], config, work, name)
            m = run_edits(editor, fresh(), dev, dev_stable, batch_size=config.row_batch_size, check=False).metrics
            tried.append({"settings": settings, "dev_succ@1": m["succ@1"], "dev_rk@3": m["rk@3"], "score": _score(m)})
        best = max(tried, key=lambda t: t["score"])["settings"] if len(tried) > 1 else tried[0]["settings"]
        tuning[name] = {"tried": tried if not cls.trainable else [], "chosen": best, "about": about,
                        "note": "trained method: config defaults (and the variant's settings), not searched"
                        if cls.trainable else ("a fixed variant, not searched" if fixed else None)}
        method_name = name
        # 2. test at every batch size, per seed
        seeds = list(config.seeds) if cls.trainable else [config.seeds[0]]
        per_batch: dict[int, list[dict[str, Any]]] = {int(b): [] for b in config.batch_sizes}
        trained: list[dict[str, Any]] = []
        editors = []
        for seed in seeds:
            editor, train_metrics = _editor_for(method, best, model_dir, editset, seed, config, work, name)
            editors.append(editor)
            trained.append(train_metrics)
            for b in per_batch:
                per_batch[b].append(run_edits(editor, fresh(), test, test_stable, batch_size=b, check=False).metrics)
        for b, runs in per_batch.items():
            entry = {"method": method_name, "batch_size": b}
            for key in REPORTED:
                entry[key], entry.setdefault("std", {})[key] = _mean_std([r[key] for r in runs])
            by_batch.append(entry)
        main = next(e for e in by_batch if e["method"] == method_name and e["batch_size"] == config.row_batch_size)
        rows.append({**main, "params": per_batch[config.row_batch_size][0]["params"], "settings": best,
                     "seeds": len(seeds), "deterministic": not cls.trainable,
                     **({"train_s": statistics.fmean(t["train_s"] for t in trained)} if cls.trainable else {})})
        # 3. sequential editing on the test cases with the first seed's editor
        if config.sequential:
            curve = _sequential_curve(editors[0], fresh(), test, test_stable, config.row_batch_size,
                                      config.sequential)
            sequential += [{"method": method_name, **point} for point in curve]
        log(f"{method_name}: {time.perf_counter() - started:.1f} s")
    available = len(test)
    return {
        "model": str(model_dir),
        "editset": str(editset_dir),
        "rk_facts": editset.pool_name("test"),
        "tuned_on": f"dev cases + {editset.pool_name('dev')}",
        "test_cases": available,
        "batch_size": config.row_batch_size,
        "sequential_requested": config.sequential,
        "sequential_edits": min(config.sequential, available),
        "rows": rows,
        "sequential": sequential,
        "by_batch_size": by_batch,
        "tuning": tuning,
        "seeds": list(config.seeds),
    }


def markdown_table(report: dict[str, Any]) -> str:
    """The paper's layout: Time, Succ@1, Succ@3, ER_roc, RK@3, RK_roc, Params per method (mean ± sd)."""
    head = "| method | Time (s/edit) | Succ@1 | Succ@3 | ER_roc | RK@3 | RK_roc | Params |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        cells = []
        for key in REPORTED:
            sd = row["std"].get(key, 0.0)
            fmt = "{:.4f}" if key == "time_per_edit_s" else "{:.3f}"
            cells.append(fmt.format(row[key]) + (f" ± {fmt.format(sd)}" if sd else ""))
        params = ", ".join(f"{k} {v:,}" for k, v in row.get("params", {}).items()) or "-"
        lines.append(f"| {row['method']} | " + " | ".join(cells) + f" | {params} |")
    return "\n".join(lines)


def write_plots(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Succ@1 and RK@3 against edits per batch, and against sequential edits, as PNGs in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    plots = [("batch", "by_batch_size", "batch_size", "edits per batch")]
    if report["sequential"]:
        plots.append(("sequential", "sequential", "edits", "sequential edits"))
    markers = "osD^vP*X<>"
    colors = plt.get_cmap("tab20").colors  # a benchmark of every registered method has more than 10 rows
    for name, key, x, label in plots:
        fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4))
        for i, method in enumerate(dict.fromkeys(e["method"] for e in report[key])):
            points = [e for e in report[key] if e["method"] == method]
            style = {"marker": markers[i % len(markers)], "color": colors[(2 * i) % 20 + (i // 10) % 2],
                     "label": method}
            for ax, metric in zip(axes, ("succ@1", "rk@3")):
                ax.plot([p[x] for p in points], [p[metric] for p in points], **style)
        for ax, metric in zip(axes, ("Succ@1", "RK@3")):
            ax.set_xscale("log", base=2 if name == "batch" else 10)
            ax.set_xlabel(label)
            ax.set_ylabel(metric)
            ax.set_ylim(-0.02, 1.02)
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
        fig.tight_layout()
        path = out / f"edits_{name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written
