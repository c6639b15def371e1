"""``deltakg demo --fast``: every stage's rows in one JSON report, plots, reuse of finished stages, a refused --out.

The demo runs once per session (about 3 minutes on 2 cores). CI's main job (``.ci/run``) has run it already and
points ``DELTAKG_DEMO_OUT`` at its folder: the session then reruns the demo on that folder (every stage reused)
instead of training everything a second time.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from deltakg.cli import main


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict, str]:
    """(the demo folder, the printed JSON report, the raw stdout) of one ``deltakg demo --fast --json`` run."""
    import contextlib
    import io

    given = os.environ.get("DELTAKG_DEMO_OUT")
    out = Path(given) if given else tmp_path_factory.mktemp("demo") / "demo"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--fast", "--out", str(out), "--json", "--no-progress"])
    assert code == 0
    return out, json.loads(stdout.getvalue()), stdout.getvalue()


@pytest.mark.slow
def test_report_has_the_kg_table_every_editor_llm_and_knn_rows(demo):
    from deltakg.editing.benchmark import kge_methods
    from llm_editing.editors import llm_editors

    out, report, _ = demo
    assert {"kg", "pykeen", "editset", "edits", "llm", "knn", "stages"} <= set(report)
    assert report["fast"] is True and report["dataset"] == "umls"
    for row in (report["kg"], report["pykeen"]):
        assert set(row["test"]) == {"mrr", "mr", "hits@1", "hits@3", "hits@10"}
        assert 0.3 < row["test"]["mrr"] <= 1.0 and row["test"]["hits@10"] >= row["test"]["hits@1"]
    # PyKEEN trained for the same wall-clock time (whole epochs: at most one epoch over)
    assert report["pykeen"]["train_s"] >= report["kg"]["train_s"] - 0.5 and "same wall-clock" in report["pykeen"]["budget"]
    # every KG editor of the registry has a row, after the unedited model's
    rows = {r["method"]: r for r in report["edits"]["rows"]}
    assert list(rows) == ["zsl", *kge_methods()]
    assert rows["zsl"]["succ@1"] == 0.0 and rows["knn"]["succ@1"] > 0.5
    assert "| method | Time (s/edit) | Succ@1" in report["edits"]["table"]
    for plot in (*report["edits"]["plots"], report["llm"]["plot"]):
        assert not Path(plot).is_absolute() and (out / plot).stat().st_size > 1000
    # the LLM rows: every causal-LM method, each edit set from a wrong answer the model did not give before
    llm = report["llm"]
    assert [r["method"] for r in llm["rows"]] == list(llm_editors())
    assert llm["toy"]["reproduced"] >= 0.9 and llm["edits"] >= 5
    for r in llm["rows"]:
        assert r["pre"]["exact_match"] == 0.0 and r["reliability"] > r["pre"]["reliability"]
        assert 0.0 <= r["locality"] <= 1.0 and r["exact_match"] is not None
    assert max(r["exact_match"] for r in llm["rows"]) >= 0.9
    # k-NN: kNN-KGE beside the model alone, and the memory editor's row of the edit table
    link, editor = report["knn"]["rows"]
    assert link["model_alone"]["mrr"] == pytest.approx(report["kg"]["test"]["mrr"], abs=1e-4)
    assert link["store_entries"] == 2 * 5216 and editor["succ@1"] == rows["knn"]["succ@1"]


@pytest.mark.slow
def test_folder_holds_models_editset_report_and_no_machine_paths(demo):
    from deltakg.kge.model import MaskedEntityModel
    from kg_data import EditSet

    out, report, raw = demo
    assert json.loads((out / "report.json").read_text())["edits"]["rows"] == report["edits"]["rows"]
    MaskedEntityModel.from_pretrained(out / "kg")
    assert EditSet.load(out / "editset").cases["test"]
    assert (out / "llm" / "model" / "config.json").is_file()
    assert str(out) not in raw and str(out.resolve()) not in raw  # paths in the report are relative to --out


@pytest.mark.slow
def test_rerun_reuses_every_stage_and_a_changed_stage_is_redone(demo, capsys):
    from deltakg.demo import DemoConfig, run_demo
    from deltakg.demo.config import KNNStage

    out, report, _ = demo
    code, printed, err = _run(["demo", "--fast", "--out", str(out), "--no-progress"], capsys)
    assert code == 0 and "reused from an earlier run" in err
    assert "| PyKEEN ComplEx |" in printed and "| kgeditor |" in printed and "| rome |" in printed
    config = dataclasses.replace(DemoConfig.for_size(fast=True), knn=KNNStage(valid_subset=200))
    again = run_demo(out, config, progress=False, log=lambda message: None)
    assert [name for name, t in again["stages"].items() if not t["reused"]] == ["knn"]
    assert again["edits"]["rows"] == report["edits"]["rows"]
    run_demo(out, DemoConfig.for_size(fast=True), progress=False, log=lambda message: None)  # leave it as it was


def test_a_foreign_out_folder_is_refused(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    code, _, err = _run(["demo", "--fast", "--out", str(mine)], capsys)
    assert code == 2 and "not an earlier demo run" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    code, _, err = _run(["demo", "--out", str(tmp_path / "file")], capsys)
    assert code == 2 and "is not a folder" in err, err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "demo.json").write_text("{not json")
    code, _, err = _run(["demo", "--out", str(bad)], capsys)
    assert code == 2 and "demo.json" in err and "Traceback" not in err, err


def test_demo_help_names_the_stages(capsys):
    code, out, _ = _run(["demo", "--help"], capsys)
    assert code == 0 and "--fast" in out and "PyKEEN" in out and "--out" in out
