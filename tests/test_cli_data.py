"""``deltakg data stats`` and ``deltakg data check``: in-process through deltakg.cli.main, plus real
subprocess calls of the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deltakg.cli import main
from kg_data import DATA_ENV, EditCase, StableFact, Triple, write_edit_cases, write_stable_facts

UMLS = {"entities": 135, "relations": 46, "train": 5_216, "valid": 652, "test": 661}
WN18RR = {"entities": 40_943, "relations": 11, "train": 86_835, "valid": 3_034, "test": 3_134}


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _console_script() -> str:
    candidate = Path(sys.executable).with_name("deltakg")
    found = str(candidate) if candidate.is_file() else shutil.which("deltakg")
    if not found:
        pytest.skip("the deltakg console script is not installed next to this Python or on PATH")
    return found


# ------------------------------------------------------------------------------------------ stats
def test_stats_umls_json(capsys):
    code, out, err = _run(capsys, "data", "stats", "--dataset", "umls", "--json")
    assert code == 0 and err == ""
    payload = json.loads(out)
    assert {key: payload[key] for key in UMLS} == UMLS
    assert payload["dataset"] == "umls"
    assert payload["duplicates"] == {"train": 0, "valid": 0, "test": 0}
    assert payload["entities_with_text"] == 135


def test_stats_umls_text(capsys):
    code, out, _ = _run(capsys, "data", "stats", "--dataset", "UMLS")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "umls"
    assert any(line.split() == ["train", "5,216"] for line in lines)
    assert "duplicate triples: 0" in out


def test_stats_console_script_subprocess(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop(DATA_ENV, None)
    result = subprocess.run(
        [_console_script(), "data", "stats", "--dataset", "umls", "--json"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert {key: payload[key] for key in UMLS} == UMLS


def test_console_script_subprocess_reports_bad_file(tmp_path):
    bad = tmp_path / "train.tsv"
    bad.write_bytes(b"a\tr\tb\r\nc\tr\r\n")
    result = subprocess.run(
        [_console_script(), "data", "check", str(bad)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"deltakg: error: {bad}:2: ")


def test_stats_wn18rr_with_data_dir(capsys, kg_data_dir, wn18rr_dir):
    code, out, _ = _run(capsys, "data", "stats", "--dataset", "wn18rr", "--data-dir", str(kg_data_dir), "--json")
    assert code == 0
    payload = json.loads(out)
    assert {key: payload[key] for key in WN18RR} == WN18RR
    assert payload["entities_with_text"] == 40_943


def test_stats_wn18rr_from_environment(capsys, monkeypatch, kg_data_dir, wn18rr_dir):
    monkeypatch.setenv(DATA_ENV, str(kg_data_dir))
    code, out, _ = _run(capsys, "data", "stats", "--dataset", "wn18rr", "--json")
    assert code == 0 and json.loads(out)["test"] == 3_134


def test_stats_missing_data_dir(capsys, tmp_path):
    missing = tmp_path / "no-such-dir"
    code, out, err = _run(capsys, "data", "stats", "--dataset", "wn18rr", "--data-dir", str(missing))
    assert code == 2 and out == ""
    assert err.startswith(f"deltakg: error: {missing}: ")
    assert "no WN18RR dataset here" in err and "train.tsv" in err
    assert err.count("\n") == 1


def test_stats_without_any_data_dir(capsys, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    code, _, err = _run(capsys, "data", "stats", "--dataset", "fb15k237")
    assert code == 2
    assert "no data directory" in err and "--data-dir" in err and DATA_ENV in err


def test_stats_unknown_dataset(capsys):
    code, _, err = _run(capsys, "data", "stats", "--dataset", "freebase")
    assert code == 2 and "unknown dataset 'freebase'" in err


# ------------------------------------------------------------------------------------------ check: valid files
@pytest.fixture
def edit_files(tmp_path) -> dict[str, Path]:
    cases = [
        EditCase(Triple("a", "r", "b"), "tail", wrong="c"),
        EditCase(Triple("a", "r", "b"), "head", wrong="d"),
        EditCase(Triple("x", "r", "y"), "head"),
    ]
    stable = [StableFact(Triple("a", "r", "b"), "tail"), StableFact(Triple("b", "r", "c"), "head")]
    paths = {"edits": tmp_path / "train.jsonl", "stable": tmp_path / "stable.jsonl"}
    write_edit_cases(paths["edits"], cases)
    write_stable_facts(paths["stable"], stable)
    return paths


def test_check_triples(capsys, tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"a\tr\tb\r\nb\tr\tc\r\na\tr\tb\r\nc\ts\ta\r\n\r\n")
    code, out, _ = _run(capsys, "data", "check", str(path), "--kind", "triples")
    assert code == 0
    assert out.strip() == f"{path}: ok, 4 triples, 3 entities, 2 relations, 1 duplicate triple(s)"
    code, out, _ = _run(capsys, "data", "check", str(path), "--json")
    assert code == 0
    assert json.loads(out) == {
        "file": str(path), "kind": "triples", "valid": True, "triples": 4, "entities": 3, "relations": 2, "duplicates": 1
    }


def test_check_real_files(capsys, fb15k237_dir, wn18rr_dir):
    code, out, _ = _run(capsys, "data", "check", str(fb15k237_dir / "dev.tsv"), "--json")
    assert code == 0 and json.loads(out)["triples"] == 17_535
    code, out, _ = _run(capsys, "data", "check", str(wn18rr_dir / "entity2text.txt"), "--json")
    assert code == 0 and json.loads(out)["kind"] == "entity2text" and json.loads(out)["rows"] == 40_943
    code, out, _ = _run(capsys, "data", "check", str(fb15k237_dir / "relation2text.txt"), "--kind", "relation2text")
    assert code == 0 and out.strip() == f"{fb15k237_dir / 'relation2text.txt'}: ok, 237 relation texts"
    code, out, _ = _run(capsys, "data", "check", str(wn18rr_dir / "entities.txt"), "--json")
    assert code == 0 and json.loads(out) == {
        "file": str(wn18rr_dir / "entities.txt"), "kind": "labels", "valid": True, "rows": 40_943
    }


@pytest.mark.parametrize("kind", ["entity2text", "relation2text"])
def test_check_text_maps(capsys, tmp_path, kind):
    path = tmp_path / "texts.txt"
    path.write_text("a\tthe letter a\nb\tthe letter\tb\n")
    code, out, _ = _run(capsys, "data", "check", str(path), "--kind", kind)
    assert code == 0
    assert out.strip() == f"{path}: ok, 2 {kind.replace('2text', '')} texts"


def test_check_editset(capsys, edit_files):
    code, out, _ = _run(capsys, "data", "check", str(edit_files["edits"]), "--kind", "editset")
    assert code == 0 and out.strip() == f"{edit_files['edits']}: ok, 3 records add=1, edit=2"
    code, out, _ = _run(capsys, "data", "check", str(edit_files["stable"]), "--json")  # kind from .jsonl
    assert code == 0
    assert json.loads(out) == {
        "file": str(edit_files["stable"]), "kind": "editset", "valid": True, "records": 2, "counts": {"stable": 2}
    }


# ------------------------------------------------------------------------------------------ check: invalid files
@pytest.mark.parametrize(
    ("kind", "name", "data", "line", "needle"),
    [
        ("triples", "train.tsv", b"a\tr\tb\nc\tr\td\ne\tr\n", 3, "2 tab-separated column(s)"),
        ("triples", "dev.tsv", b"a\tr\tb\r\n\xff\tr\tb\r\n", 2, "UTF-8"),
        ("triples", "test.tsv", b"a\tr\tb\na\t\tb\n", 2, "field 'relation'"),
        ("entity2text", "entity2text.txt", b"a\tx\nb\ny\tz\n", 2, "expected 2 or more"),
        ("entity2text", "entity2text.txt", b"a\tx\na\ty\n", 2, "appears again (first on line 1)"),
        ("relation2text", "relation2text.txt", b"r\tx\ns\t\n", 2, "field 'text'"),
        ("labels", "entities.txt", b"a\nb\na\n", 3, "listed again"),
        ("editset", "train.jsonl", b'{"triples": ["a", "r", "b"], "label": "b", "head": 0}\n{"label": 1\n', 2,
         "invalid JSON"),
        ("editset", "dev.jsonl", b'{"triples": ["a", "r", "b"], "label": "b", "head": 0}\n'
         b'{"triples": ["a", "r", "b"], "label": "a", "head": 0}\n', 2, "field 'label'"),
        ("editset", "stable.jsonl", b'{"triple": ["a", "r", "b"], "label": "b"}\n{"triple": ["a", "r"], "label": "a"}\n',
         2, "field 'triple'"),
    ],
)
def test_check_invalid_files(capsys, tmp_path, kind, name, data, line, needle):
    path = tmp_path / name
    path.write_bytes(data)
    for extra in ([], ["--kind", kind]):  # the kind guessed from the name, and given
        code, out, err = _run(capsys, "data", "check", str(path), *extra)
        assert code == 2 and out == ""
        assert err.startswith(f"deltakg: error: {path}:{line}: ")
        assert needle in err


def test_check_missing_file(capsys, tmp_path):
    code, _, err = _run(capsys, "data", "check", str(tmp_path / "nope.tsv"))
    assert code == 2 and f"{tmp_path / 'nope.tsv'}: file not found" in err


# ------------------------------------------------------------------------------------------ help and usage
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--help"], "usage: deltakg"),
        (["data", "--help"], "stats"),
        (["data", "stats", "--help"], "--data-dir"),
        (["data", "check", "--help"], "--kind"),
    ],
)
def test_help(capsys, argv, needle):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert needle in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv", [["data"], ["data", "stats"], ["data", "check"], ["data", "check", "x", "--kind", "nope"]]
)
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_no_arguments_prints_the_command_list(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("data", "train", "evaluate", "editset", "train-editor", "edit"):
        assert f"    {command}" in out


# ------------------------------------------------------------------------------------------ benchmark script
def test_load_triples_benchmark_skips_without_data(tmp_path):
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "load_triples.py"
    result = subprocess.run(
        [sys.executable, str(script), "--data-dir", str(tmp_path / "absent")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    payload = json.loads(lines[0])
    assert payload["benchmark"] == "load_triples"
    assert payload["skipped"].startswith("FB15k-237 train file not found: ")


@pytest.mark.slow
def test_memorise_benchmark_smoke():
    """The memorisation benchmark trains on a fixed sample and reports a trace the loss falls along."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "memorise.py"
    result = subprocess.run(
        [sys.executable, str(script), "--dataset", "nations", "--facts", "64", "--steps", "6", "--every", "3",
         "--batch-size", "32", "--lr", "1e-2", "--threads", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.splitlines()[-1])
    assert payload["benchmark"] == "memorise" and [t["step"] for t in payload["trace"]] == [0, 3, 6]
    assert payload["trace"][-1]["loss"] < payload["trace"][0]["loss"]
    assert all(0 <= t["hits@1"] <= 1 and t["geomean_rank"] >= 1 for t in payload["trace"])


@pytest.mark.parametrize("compare,kinds,tolerance,extra", [
    ("loss", ("fused", "unfused"), 1e-5, ()),
    pytest.param("last-layer", ("sparse", "full"), 1e-5, (), marks=pytest.mark.slow),
    pytest.param("decoder-dtype", ("bfloat16", "float32"), 1e-2, (), marks=pytest.mark.slow),
    # both forms under the same autocast run the same forward
    pytest.param("optimizer", ("fused_adamw", "adamw"), 0.0, ("--bf16-autocast", "--bound-memory"),
                 marks=pytest.mark.slow),
])
def test_train_step_benchmark_smoke(compare, kinds, tolerance, extra):
    """The training-step benchmark times two forms of a step on one model, and their losses agree."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "train_step.py"
    result = subprocess.run(
        [sys.executable, str(script), "--dataset", "nations", "--batch-size", "16", "--steps", "2", "--threads", "1",
         "--compare", compare, "--readout", "entity", *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.splitlines()[-1])
    assert payload["benchmark"] == "train_step" and payload["entities"] == 14
    assert payload["first_loss_abs_diff"] <= tolerance  # bf16 products: rounding; the optimiser: same forward
    for kind in kinds:
        assert payload[kind]["step_ms"] > 0 and payload[kind]["queries_per_s"] > 0


@pytest.mark.slow
def test_fit_probe_benchmark_smoke():
    """The fit probe trains ours and the MLP reference with one loop and reports train/valid curves and test MRR."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "fit_probe.py"
    for model in ("ours", "mlp"):
        result = subprocess.run(
            [sys.executable, str(script), "--dataset", "nations", "--model", model, "--epochs", "2", "--every", "1",
             "--threads", "1", "--init-range", "0.05"],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert result.returncode == 0, result.stderr
        payload = json.loads(result.stdout.splitlines()[-1])
        assert payload["benchmark"] == "fit_probe" and payload["model"] == model and payload["epochs"] == 2
        assert [point["epoch"] for point in payload["curve"]] == [1, 2]
        assert 0 < payload["test_mrr"] <= 1 and 0 < payload["best_valid"]["valid_mrr"] <= 1


@pytest.mark.slow
def test_quality_benchmark_smoke(tmp_path):
    """The equal-budget comparison runs ours and both PyKEEN models on Nations and reports the same metrics."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "quality.py"
    env = dict(os.environ, PYSTOW_HOME=str(tmp_path / "pystow"))
    result = subprocess.run(
        [sys.executable, str(script), "--dataset", "nations", "--minutes", "0.05", "--threads", "1",
         "--keep-model", str(tmp_path / "kept")],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )
    assert result.returncode == 0, result.stderr
    from deltakg.kge.model import MaskedEntityModel

    assert MaskedEntityModel.from_pretrained(tmp_path / "kept").config.num_entities == 14  # ours' best state, kept
    again = subprocess.run([sys.executable, str(script), "--dataset", "nations", "--keep-model", str(tmp_path / "kept")],
                           capture_output=True, text=True, timeout=120, check=False, env=env)
    assert again.returncode == 2 and "is not an empty folder" in again.stderr.splitlines()[-1]  # never overwritten
    payload = json.loads(result.stdout.splitlines()[-1])
    assert payload["benchmark"] == "quality" and set(payload["results"]) == {"ours", "rotate", "complex"}
    for name, metrics in payload["results"].items():
        assert 0 < metrics["mrr"] <= 1 and metrics["hits@1"] <= metrics["hits@10"], name
    ours = payload["results"]["ours"]["config"]
    assert (ours["readout"], ours["inverse_relations"], ours["layers"]) == ("entity", True, 1)
    # auto precision (pinned to fp32 by the test environment) is reported, and so is the chip it ran on
    assert payload["results"]["ours"]["precision_choice"]["precision"]["chosen"] == "32-true"
    assert payload["cpu"]["model"] and isinstance(payload["cpu"]["flags"], list)
