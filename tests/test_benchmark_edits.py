"""``deltakg benchmark-edits``: every registered KG editor, tuned on dev, reported on test with held-out RK."""

from __future__ import annotations

import json

import pytest

from deltakg.cli import main
from deltakg.editing import EDITORS
from deltakg.editing.benchmark import BenchmarkConfig, kge_methods, search_space
from kg_data import EditSet, KGDataError


@pytest.fixture(scope="module")
def bench_set(nations_base, tmp_path_factory):
    """The session's Nations model with its edit cases and stable facts as a pooled edit set."""
    out, kg, cases, stable = nations_base
    folder = tmp_path_factory.mktemp("bench-set")
    EditSet.with_pools({"train": cases[:12], "dev": cases[12:20], "test": cases[20:30]},
                       {"train": stable[:20], "dev": stable[20:35], "test": stable[35:55]}).save(folder)
    return out, folder


def test_every_grid_names_real_settings():
    for method in kge_methods():
        for key in search_space(method):
            EDITORS[method].from_settings(**{key: search_space(method)[key][0]})  # a bad key raises here


def test_config_validation():
    with pytest.raises(KGDataError, match="unknown KG edit method"):
        BenchmarkConfig(methods=["nope"])
    with pytest.raises(KGDataError, match="main batch size"):
        BenchmarkConfig(batch_sizes=[1, 4], main_batch_size=2)


@pytest.mark.slow
def test_benchmark_cli_json_table_plots_and_protocol(bench_set, tmp_path, capsys):
    model, folder = bench_set
    out = tmp_path / "bench"
    code = main(["benchmark-edits", "--model", str(model), "--editset", str(folder), "--methods", "ft,ft-l,grace",
                 "--batch-sizes", "1,2", "--sequential", "6", "--seeds", "0,1", "--tune-budget", "2",
                 "--out", str(out), "--json", "--no-progress"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["method"]: row for row in report["rows"]}
    assert list(rows) == ["zsl", "ft", "ft-l", "grace"]
    for row in report["rows"]:
        assert {"method", "time_per_edit_s", "succ@1", "succ@3", "er_roc", "rk@3", "rk_roc", "params", "std"} <= set(row)
    assert rows["zsl"]["succ@1"] == 0.0 and rows["zsl"]["rk@3"] == 1.0
    assert rows["ft"]["succ@1"] > 0.2 and rows["ft"]["deterministic"] and rows["ft"]["std"]["succ@1"] == 0.0
    assert report["rk_facts"] == "stable_test" and report["tuned_on"] == "dev cases + stable_dev"
    # tuning tried the budget on dev only and kept the best-scoring setting
    tried = report["tuning"]["ft"]["tried"]
    assert len(tried) == 2 and report["tuning"]["ft"]["chosen"] == max(tried, key=lambda t: t["score"])["settings"]
    assert {(e["method"], e["batch_size"]) for e in report["by_batch_size"]} == {
        (m, b) for m in ("ft", "ft-l", "grace") for b in (1, 2)}
    seq = [p for p in report["sequential"] if p["method"] == "grace"]
    assert [p["edits"] for p in seq] == [2, 6]  # marks 1 and 6, met at batch ends and {"succ@1", "rk@3"} <= set(seq[-1])
    assert {p.rsplit("/", 1)[-1] for p in report["plots"]} == {"edits_batch.png", "edits_sequential.png"}
    assert all((out / name).stat().st_size > 1000 for name in ("edits_batch.png", "edits_sequential.png"))
    assert json.loads((out / "report.json").read_text())["rows"] == report["rows"]


def test_benchmark_text_output_and_bad_methods(bench_set, capsys):
    model, folder = bench_set
    assert main(["benchmark-edits", "--model", str(model), "--editset", str(folder), "--methods", "ft",
                 "--batch-sizes", "2", "--seeds", "0", "--no-tune", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| method | Time (s/edit) | Succ@1" in text and "| zsl |" in text and "| ft |" in text
    assert main(["benchmark-edits", "--model", str(model), "--editset", str(folder), "--methods", "ft,nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown KG edit method(s) nope" in err[0]


def test_variants_are_rows_with_their_fixed_settings(bench_set, capsys):
    model, folder = bench_set
    assert {"kgeditor-paper", "kgeditor-untrained", "kgeditor-no-whiten", "kgeditor-no-calibrate"} <= set(kge_methods())
    assert main(["benchmark-edits", "--model", str(model), "--editset", str(folder), "--methods",
                 "kgeditor-untrained", "--batch-sizes", "2", "--seeds", "0", "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    row = report["rows"][1]
    assert row["method"] == "kgeditor-untrained" and row["settings"] == {"epochs": 0} and not row["deterministic"]
    assert "initialisation" in report["tuning"]["kgeditor-untrained"]["about"] and 0 <= row["succ@1"] <= 1


@pytest.mark.slow
def test_edit_suite_benchmark_smoke(tmp_path):
    """benchmarks/edit_suite.py builds a set, benchmarks it and aggregates over sets (tiny sizes)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "edit_suite.py"
    result = subprocess.run([sys.executable, str(script), "--dataset", "nations", "--smoke", "--kinds", "edit",
                             "--set-seeds", "0", "--seeds", "0", "--methods", "ft", "--batch-sizes", "2",
                             "--sequential", "3", "--out", str(tmp_path / "suite")],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    rows = {row["method"]: row for row in payload["kinds"]["edit"]["rows"]}
    assert payload["benchmark"] == "edit_suite" and set(rows) == {"zsl", "ft"} and rows["ft"]["sets"] == 1
    assert payload["kinds"]["edit"]["rk_facts"] == "stable_test" and payload["cpu"]["model"]
    assert (tmp_path / "suite" / "E-nations-seed0" / "plots" / "edits_batch.png").is_file()


@pytest.mark.slow  # two benchmark runs with plots, then the merge (~14 s)
def test_merge_edit_reports_puts_per_method_runs_together(bench_set, tmp_path, capsys):
    """benchmarks/merge_edit_reports.py: two one-method runs give one table, the curves of both, merged plots.

    ROME's run also checks that --no-progress silences its key-statistics bar (it did not).
    """
    import importlib.util
    from pathlib import Path

    model, folder = bench_set
    files = []
    for method in ("ft-l", "rome"):
        assert main(["benchmark-edits", "--model", str(model), "--editset", str(folder), "--methods", method,
                     "--batch-sizes", "2", "--sequential", "4", "--seeds", "0", "--tune-budget", "1",
                     "--json", "--no-progress"]) == 0
        captured = capsys.readouterr()
        assert "key statistics" not in captured.err and "%|" not in captured.err
        files.append(tmp_path / f"{method}.json")
        files[-1].write_text(captured.out)
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "merge_edit_reports.py"
    spec = importlib.util.spec_from_file_location("merge_edit_reports", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([*map(str, files), "--out", str(tmp_path / "plots"), "--name", "nations"]) == 0
    captured = capsys.readouterr()
    merged = json.loads(captured.out)
    singles = [json.loads(f.read_text()) for f in files]
    assert [row["method"] for row in merged["rows"]] == ["zsl", "ft-l", "rome"]
    assert merged["rows"][1] == singles[0]["rows"][1] and merged["rows"][2] == singles[1]["rows"][1]
    assert merged["sequential"] == singles[0]["sequential"] + singles[1]["sequential"]
    assert set(merged["tuning"]) == {"ft-l", "rome"}
    assert sorted(Path(p).name for p in merged["plots"]) == ["edits_batch_nations.png", "edits_sequential_nations.png"]
    assert "| rome |" in captured.err and "sequential rome: 4 edits" in captured.err
    # a method run later joins the merged report: the earlier methods' seconds stay as they were
    first = tmp_path / "first.json"
    assert module.main([str(files[0])]) == 0
    first.write_text(capsys.readouterr().out)
    assert module.main([str(first), str(files[1])]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["rows"] == merged["rows"] and again["sequential"] == merged["sequential"]
    assert again["seconds"] == merged["seconds"]
    # a file that is not a report: one line naming it, exit 2
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert module.main([str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_trained_network_editors_are_benchmark_rows(bench_set, capsys):
    """MEND and KE train on the set's train cases + stable_train (dev chooses the epoch) inside the benchmark."""
    model, folder = bench_set
    assert main(["benchmark-edits", "--model", str(model), "--editset", str(folder), "--methods", "mend,ke",
                 "--batch-sizes", "2", "--seeds", "0", "--editor-epochs", "2", "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["method"]: row for row in report["rows"]}
    assert set(rows) == {"zsl", "mend", "ke"}
    for name in ("mend", "ke"):
        assert rows[name]["params"]["trainable"] > 0 and not rows[name]["deterministic"]
        assert 0 <= rows[name]["succ@1"] <= 1 and rows[name]["train_s"] > 0
