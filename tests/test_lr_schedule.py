"""The learning-rate decay over a run: by planned steps, or by the time budget when that ends first."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.callbacks import Timer

from deltakg.cli import main
from deltakg.kge import LR_SCHEDULES
from deltakg.kge.lightning import LinkPredictionModule
from deltakg.kge.model import MaskedEntityModel
from deltakg.kge.training import TrainConfig, train_model
from kg_data import KGDataError, load_dataset


class _FakeTimer(Timer):
    def __init__(self, elapsed: float, remaining: float | None) -> None:
        super().__init__(duration=None)
        self._elapsed, self._remaining = elapsed, remaining

    def time_elapsed(self, stage="train") -> float:
        return self._elapsed

    def time_remaining(self, stage="train"):
        return self._remaining


@pytest.fixture(scope="module")
def nations():
    return load_dataset("nations")


def _module(nations, schedule: str, *, warmup: int = 0, total: float = 100, timer: Timer | None = None):
    model = MaskedEntityModel.for_graph(nations, "tiny", use_text=False)
    module = LinkPredictionModule(model, nations, lr=1.0, lr_schedule=schedule, warmup_steps=warmup)
    module._trainer = SimpleNamespace(estimated_stepping_batches=total, callbacks=[timer] if timer else [])
    return module


def _factor(module, step: int) -> float:
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    return scheduler.lr_lambdas[0](step)


def test_decays_by_planned_steps(nations):
    assert LR_SCHEDULES == ("constant", "linear", "cosine")
    assert isinstance(_module(nations, "constant").configure_optimizers(), torch.optim.AdamW)  # no scheduler
    linear, cosine = _module(nations, "linear"), _module(nations, "cosine")
    assert [_factor(linear, s) for s in (0, 25, 50, 100, 150)] == pytest.approx([1.0, 0.75, 0.5, 0.0, 0.0])
    assert [_factor(cosine, s) for s in (0, 50, 100)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)
    assert _factor(cosine, 25) == pytest.approx(0.5 * (1 + 2 ** -0.5))
    # warm-up first ramps, then the decay applies on top
    warm = _module(nations, "linear", warmup=10)
    assert [_factor(warm, s) for s in (0, 4, 9, 50)] == pytest.approx([0.1 * 1.0, 0.5 * 0.96, 1.0 * 0.91, 0.5])


def test_a_time_budget_that_ends_first_sets_the_pace(nations):
    # 1e6 planned steps (epochs without end) but 3 of 4 minutes spent: 3/4 of the run is done
    timed = _module(nations, "linear", total=1e6, timer=_FakeTimer(elapsed=180.0, remaining=60.0))
    assert _factor(timed, 10) == pytest.approx(0.25, abs=1e-4)
    assert timed.run_fraction(10) == pytest.approx(0.75, abs=1e-4)
    # steps ahead of the clock: the step fraction counts
    assert _module(nations, "linear", total=100, timer=_FakeTimer(10.0, 230.0)).run_fraction(50) == pytest.approx(0.5)
    # no time limit: the timer reports no remaining time and is ignored
    assert _module(nations, "linear", total=100, timer=_FakeTimer(10.0, None)).run_fraction(50) == pytest.approx(0.5)
    assert _module(nations, "linear", total=float("inf")).run_fraction(50) == 0.0


def test_training_with_a_schedule_and_bad_values(nations, tmp_path, capsys):
    with pytest.raises(KGDataError, match="lr-schedule"):
        TrainConfig(lr_schedule="step")
    out = tmp_path / "run"
    result = train_model(nations, out, encoder="tiny", use_text=False,
                         config=TrainConfig(epochs=1, batch_size=256, lr_schedule="linear", patience=None,
                                            progress=False))
    assert result.metrics["global_step"] == 7
    with pytest.raises(SystemExit) as info:  # a choice: refused by argparse before anything is loaded
        main(["train", "--dataset", "nations", "--out", str(tmp_path / "bad"), "--lr-schedule", "step"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--lr-schedule" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
    assert json.loads((out / "train_metrics.json").read_text())["global_step"] == 7


def test_a_real_trainer_decays_to_zero_at_the_last_step(nations):
    import pytorch_lightning as pl

    from deltakg.kge.lightning import TripleDataModule

    seen: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    model = MaskedEntityModel.for_graph(nations, "tiny", use_text=False)
    module = LinkPredictionModule(model, nations, lr=1e-3, lr_schedule="linear")
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Record()], limit_val_batches=0)
    trainer.fit(module, datamodule=TripleDataModule(nations, batch_size=256, eval_batch_size=256))
    assert seen == pytest.approx([1e-3, 0.75e-3, 0.5e-3, 0.25e-3])
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0)
