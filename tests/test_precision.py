"""``auto`` precision: the probe's choice under fake timings, its cache, the env override, and what train/evaluate report."""

from __future__ import annotations

import json

import pytest
import torch

from deltakg.cli import main
from deltakg.kge import precision
from deltakg.kge.precision import (BF16_MARGIN, cached_probe, choose_for_workload, choose_precision, cpu_info,
                                   probe_matmul)
from deltakg.kge.training import TrainConfig, resolve_auto_precision
from kg_data import KGDataError


def _fake_timer(fp32_s: float, bf16_s: float, calls: list | None = None):
    def timer(m, k, n, dtype, device, budget_s):
        if calls is not None:
            calls.append((m, k, n, dtype, device))
        return bf16_s if dtype == torch.bfloat16 else fp32_s

    return timer


@pytest.fixture
def probing(monkeypatch, tmp_path):
    """No forced choice, and a cache of this test's own."""
    monkeypatch.delenv(precision.ENV_FORCE, raising=False)
    monkeypatch.setenv(precision.ENV_CACHE, str(tmp_path / "cache"))
    return tmp_path / "cache" / "precision_probe.json"


def test_probe_rates_from_the_timer():
    probe = probe_matmul((100, 200, 300), timer=_fake_timer(0.01, 0.005))
    assert probe.fp32_gflops == pytest.approx(2 * 100 * 200 * 300 / 0.01 / 1e9)
    assert probe.bf16_speedup == pytest.approx(2.0) and probe.use_bf16


@pytest.mark.parametrize(("fp32_s", "bf16_s", "bf16"), [
    (0.010, 0.003, True),     # AMX-like: bf16 3x faster
    (0.010, 0.016, False),    # AVX512-BF16 without AMX: bf16 slower (75 vs 118 GFLOP/s measured)
    (0.010, 0.010 / (BF16_MARGIN - 0.05), False),  # faster, but not by the margin
])
def test_choice_follows_the_measured_rates(probing, fp32_s, bf16_s, bf16):
    choice = choose_precision((64, 32, 16), timer=_fake_timer(fp32_s, bf16_s))
    assert choice.use_bf16 is bf16 and choice.probe is not None
    report = choice.to_dict()
    assert report["dtype"] == ("bf16" if bf16 else "fp32") and "GFLOP/s" in report["reason"]
    assert report["shape"] == (64, 32, 16) and report["bf16_speedup"] == pytest.approx(fp32_s / bf16_s, abs=1e-3)


def test_probe_is_cached_per_shape(probing):
    calls: list = []
    first = cached_probe((8, 8, 8), timer=_fake_timer(0.01, 0.002, calls))
    again = cached_probe((8, 8, 8), timer=_fake_timer(0.01, 0.5, calls))  # would flip the choice if re-measured
    assert len(calls) == 2 and again == first and again.use_bf16
    cached_probe((8, 8, 16), timer=_fake_timer(0.01, 0.5, calls))
    assert len(calls) == 4 and len(json.loads(probing.read_text())) == 2


def test_damaged_cache_is_measured_again_and_rewritten(probing):
    probing.parent.mkdir(parents=True)
    probing.write_text("{not json")
    probe = cached_probe((4, 4, 4), timer=_fake_timer(0.01, 0.02))
    assert not probe.use_bf16 and len(json.loads(probing.read_text())) == 1


def test_real_probe_measures_both_dtypes(probing):
    probe = cached_probe((64, 64, 64))
    assert probe.fp32_gflops > 0 and probe.bf16_gflops > 0 and probing.is_file()


def test_env_forces_the_choice_without_probing(monkeypatch):
    def never(*args):
        raise AssertionError("probed although forced")

    monkeypatch.setenv(precision.ENV_FORCE, "bf16")
    choice = choose_precision((4, 4, 4), timer=never)
    assert choice.use_bf16 and choice.probe is None and "DELTAKG_PRECISION" in choice.reason
    monkeypatch.setenv(precision.ENV_FORCE, "half")
    with pytest.raises(KGDataError, match="DELTAKG_PRECISION.*must be fp32 or bf16"):
        choose_precision((4, 4, 4), timer=never)


def test_cpu_info_names_the_model_and_known_flags():
    info = cpu_info()
    assert isinstance(info["model"], str) and info["model"]
    assert set(info["flags"]) <= {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2"}


def test_resolve_leaves_explicit_settings_alone(monkeypatch):
    from deltakg.kge.model import MaskedEntityModel
    from kg_data import load_dataset

    monkeypatch.setenv(precision.ENV_FORCE, "bf16")
    kg = load_dataset("nations")
    model = MaskedEntityModel.for_graph(kg, "tiny", use_text=False)
    config, report = resolve_auto_precision(TrainConfig(), model, kg)
    assert (config.precision, config.decoder_dtype) == ("bf16-mixed", "bfloat16") and set(report) == {
        "precision", "decoder_dtype"}
    explicit = TrainConfig(precision="32-true", decoder_dtype="float32")
    config, report = resolve_auto_precision(explicit, model, kg)
    assert config == explicit and report == {}


@pytest.mark.parametrize(("fp32_s", "bf16_s", "bf16"), [(0.02, 0.01, True), (0.0226, 0.0255, False)])
def test_workload_choice_follows_the_timed_step(probing, fp32_s, bf16_s, bf16):
    calls: list = []

    def seconds(use_bf16: bool) -> float:
        calls.append(use_bf16)
        return bf16_s if use_bf16 else fp32_s

    choice = choose_for_workload("train step x", "cpu", seconds)
    assert choice.use_bf16 is bf16 and sorted(calls) == [False, True] and "ms" in choice.reason
    assert choose_for_workload("train step x", "cpu", seconds) == choice and len(calls) == 2  # cached


def test_real_training_step_probe_leaves_the_run_untouched(probing):
    from deltakg.kge.model import MaskedEntityModel
    from kg_data import load_dataset

    kg = load_dataset("nations")
    torch.manual_seed(0)
    model = MaskedEntityModel.for_graph(kg, "tiny", use_text=False).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    config, report = resolve_auto_precision(TrainConfig(batch_size=32), model, kg)
    assert torch.equal(torch.get_rng_state(), rng) and not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for field, value in (("precision", config.precision), ("decoder_dtype", config.decoder_dtype)):
        assert report[field]["chosen"] == value and report[field]["fp32_s"] > 0 and report[field]["bf16_s"] > 0
    assert len(json.loads(probing.read_text())) == 2


def test_train_and_evaluate_report_the_choice(tmp_path, capsys):
    # conftest pins DELTAKG_PRECISION=fp32, so auto resolves without probing and the run stays deterministic
    out = tmp_path / "m"
    code = main(["train", "--dataset", "nations", "--encoder", "tiny", "--no-text", "--epochs", "1", "--patience",
                 "0", "--out", str(out), "--json", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    payload = json.loads(captured.out)
    assert payload["precision_choice"]["precision"]["chosen"] == "32-true"
    assert payload["precision_choice"]["decoder_dtype"]["chosen"] == "float32"
    assert "deltakg: precision: auto -> 32-true" in captured.err
    saved = json.loads((out / "train_metrics.json").read_text())
    assert saved["config"]["precision"] == "32-true" and saved["precision_choice"]["precision"]["requested"] == "auto"
    code = main(["evaluate", "--model", str(out), "--dataset", "nations", "--split", "valid", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0 and "precision: auto -> fp32 ($DELTAKG_PRECISION=fp32)" in text
