"""benchmarks/llm_edit.py at tiny sizes: every mode runs ours and EasyEdit on one toy model and prints one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kg_data import Triple
from llm_editing.facts import Fact
from llm_editing.requests import RelationTemplate
from llm_editing.toy import ToyConfig, save_toy_model, train_toy_model

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "llm_edit.py"
PEER = Path(os.environ.get("DELTAKG_EASYEDIT", REPO.parent / "shared" / "peers" / "EasyEdit-14cea82"))
METRICS = ("reliability", "generalization", "locality", "portability", "exact_match", "success", "fluency",
           "time_per_edit_s")

BORN = RelationTemplate("born_in", "{subject} was born in", ("The birthplace of {subject} is",),
                        "{object} is the birthplace of")
WORKS = RelationTemplate("works_as", "The profession of {subject} is", ("{subject} works as a",))
PEOPLE = ["Ada Lovelace", "Bob Marley", "Carl Sagan", "Dora Maar", "Emil Nolde", "Frida Kahlo", "Gus Grissom",
          "Hedy Lamarr", "Ida Wells", "Jan Hus", "Kurt Weill", "Lise Meitner", "Max Ernst", "Nina Simone"]
CITIES = ["London", "Nine Mile", "New York", "Paris", "Nolde", "Mexico City", "Mitchell"]
JOBS = ["Actor", "Singer", "Physicist", "Painter"]
SMALL = ToyConfig(n_embd=64, n_layer=2, n_head=2, vocab_size=400, n_positions=32, epochs=50, batch_size=16,
                  lr=5e-3, progress=False)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    facts = []
    for i, person in enumerate(PEOPLE):
        facts.append(Fact(Triple(f"p{i}", "born_in", f"c{i % len(CITIES)}"), person, CITIES[i % len(CITIES)], BORN))
        facts.append(Fact(Triple(f"p{i}", "works_as", f"j{i % len(JOBS)}"), person, JOBS[(i * 3) % len(JOBS)], WORKS))
    toy = train_toy_model(facts, SMALL)
    assert toy.metrics["reproduced"] >= 0.9
    return save_toy_model(toy, tmp_path_factory.mktemp("toy"))


def _run(*args: str) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), *args, "--fluency-tokens", "4", "--threads", "1"],
                            capture_output=True, text=True, timeout=300, check=False, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout  # one JSON line, EasyEdit's printing silenced
    return json.loads(lines[0])


def _check(side: dict) -> None:
    assert all(key in side for key in METRICS), side
    assert set(side["pre"]) >= {"reliability", "locality", "exact_match"}
    assert side["pre"]["locality"] == 1.0  # the unedited model against itself
    assert 0.0 <= side["reliability"] <= 1.0 and side["time_per_edit_s"] > 0


@pytest.mark.parametrize("mode, expected", [
    ("single", {"rome/subject_last", "memit/subject_last", "ft"}),
    pytest.param("batch", {"memit/subject_last"}, marks=pytest.mark.slow),
    pytest.param("sequential", {"rome/subject_last", "memit/subject_last"}, marks=pytest.mark.slow),
])
def test_benchmark_modes_compare_both_sides(mode, expected, toy_dir) -> None:
    if not (PEER / "easyeditor").is_dir():
        pytest.skip(f"EasyEdit is not at {PEER} (set DELTAKG_EASYEDIT)")
    payload = _run("--mode", mode, "--model", str(toy_dir), "--n-edits", "2", "--key-positions", "subject_last")
    assert payload["benchmark"] == "llm_edit" and payload["mode"] == mode and payload["n_edits"] == 2
    assert payload["matmul_gflops"] > 0 and payload["machine"]["model"]
    assert set(payload["results"]) == expected
    for row in payload["results"].values():
        _check(row["ours"])
        _check(row["easyedit"])
        assert row["ours"]["pre"] == row["easyedit"]["pre"]  # the same model, requests and metric code


@pytest.mark.slow  # another full benchmark process (~12 s); single mode stays in the fast suite
def test_grace_mode_and_peer_absent(toy_dir, tmp_path) -> None:
    partial = tmp_path / "partial.jsonl"
    payload = _run("--mode", "grace", "--model", str(toy_dir), "--n-edits", "2", "--partial", str(partial))
    _check(payload["results"]["grace"]["ours"])
    kept = [json.loads(line) for line in partial.read_text().splitlines()]  # each side's line, written as it ends
    assert [(k["result"], k["side"], k["mode"]) for k in kept] == [("grace", "ours", "grace")]
    assert {k: v for k, v in kept[0].items() if k not in ("mode", "seed", "n_edits", "result", "side")} == \
        payload["results"]["grace"]["ours"]
    skipped = _run("--model", str(toy_dir), "--n-edits", "2", "--peer-dir", str(tmp_path))
    assert "skipped" in skipped and "EasyEdit not found" in skipped["skipped"]


def test_summary_gives_mean_and_sd_over_seeds(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from llm_edit_summary import summarise
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    base = {"mode": "single", "n_edits": 100, "result": "rome/prompt_last", "side": "ours"}
    lines = [{**base, "seed": 0, "reliability": 0.9, "locality": 1.0, "pre": {"reliability": 0.2}},
             {**base, "seed": 1, "reliability": 1.0, "locality": 1.0, "pre": {"reliability": 0.3}},
             {**base, "side": "easyedit", "seed": 0, "error": "ValueError: bugged"}]
    rows = {row["side"]: row for row in summarise(lines)}
    assert rows["ours"]["seeds"] == [0, 1] and rows["ours"]["reliability"] == {"mean": 0.95, "sd": 0.0707}
    assert rows["ours"]["locality"]["sd"] == 0.0 and rows["ours"]["pre_reliability"] == 0.25
    assert rows["easyedit"]["errors"] == 1 and "reliability" not in rows["easyedit"]
