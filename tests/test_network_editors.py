"""The trained editors MEND and KE on the KG model (Nations) through the one edit API: training, edits,
rollback, save/load, the registry (their causal-LM runs are in test_llm_editing.py)."""

from __future__ import annotations

import pytest
import torch

from deltakg.editing import EDITORS, apply_edit, run_edits
from deltakg.editing.benchmark import kge_methods
from deltakg.editing.locate import KE, MEND, MENDConfig, train_network_editor
from deltakg.editing.target import KGETarget
from deltakg.kge.model import MaskedEntityModel
from kg_data.errors import KGDataError

METHODS = {"mend": MEND, "ke": KE}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", params=sorted(METHODS))
def trained(request, nations_base, tmp_path_factory):
    """An editor trained for 3 epochs on 60 Nations edit cases (dev: 20 others), saved; (name, editor, metrics)."""
    folder, _, cases, stable = nations_base
    model = MaskedEntityModel.from_pretrained(folder)
    out = tmp_path_factory.mktemp(request.param)
    cls = METHODS[request.param]
    metrics = cls.train_pretrained(model, cases[:60], stable[:40], str(out), dev_cases=cases[60:80],
                                   dev_stable=stable[40:60], progress=False, epochs=3, seed=0)
    return request.param, cls.from_pretrained(str(out)), metrics


@pytest.mark.parametrize("name", sorted(METHODS))
def test_registered_for_both_families_with_an_untrained_ablation(name):
    assert EDITORS[name].trainable and set(EDITORS[name].families) == {"kge", "causal_lm"}
    assert {name, f"{name}-untrained"} <= set(kge_methods())


def test_training_lowers_the_dev_loss(trained):
    _, _, metrics = trained
    history = metrics["history"]
    assert history[0]["epoch"] == 0 and metrics["best_epoch"] >= 1
    assert min(r["dev_loss"] for r in history[1:]) < history[0]["dev_loss"]


def test_edits_land_and_roll_back_bit_exact(trained, nations_base):
    folder, _, cases, stable = nations_base
    _, editor, _ = trained
    model = MaskedEntityModel.from_pretrained(folder)
    before = _state(model)
    report = run_edits(editor, model, cases[80:100], stable[60:100], batch_size=2)
    assert report.metrics["succ@1"] >= 0.3  # every case starts at succ@1 = 0
    assert report.metrics["params"]["trainable"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_reloaded_editor_makes_the_same_edits_as_the_trained_one(name, nations_base, tmp_path):
    folder, _, cases, stable = nations_base
    model = MaskedEntityModel.from_pretrained(folder)
    cls = METHODS[name]
    editor = cls(cls.config_class(epochs=1, progress=False))
    target = KGETarget(model)
    train_network_editor(editor, target, target.encode(cases[:20]), stable[:20])
    editor.save_pretrained(str(tmp_path / "m"))
    reloaded = cls.from_pretrained(str(tmp_path / "m"))
    batch = target.encode(cases[30:32])
    results = []
    for ed in (editor, reloaded):
        handle = apply_edit(ed, target, batch)
        results.append(_state(model))
        handle.rollback()
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    assert not all(torch.equal(results[0][k], v) for k, v in model.state_dict().items())


def test_bad_folders_and_settings_are_one_clear_error(tmp_path, nations_base):
    with pytest.raises(KGDataError, match="not a mend editor folder"):
        MEND.from_pretrained(str(tmp_path))
    (tmp_path / "editor.json").write_text("{not json")
    with pytest.raises(KGDataError, match="not a mend config"):
        MEND.from_pretrained(str(tmp_path))
    (tmp_path / "editor.json").write_text('{"method": "mend", "config": {}, "shapes": {}}')
    with pytest.raises(KGDataError, match="not a ke config"):
        KE.from_pretrained(str(tmp_path))  # a MEND folder is not a KE
    with pytest.raises(ValueError, match="rank"):
        MENDConfig(rank=0)
    with pytest.raises(ValueError, match="optimizer"):
        MENDConfig(optimizer="sgd")
    with pytest.raises(KGDataError, match="no network yet"):
        MEND().save_pretrained(str(tmp_path / "x"))
    with pytest.raises(KGDataError, match="needs a trained editor"):
        MEND.from_options(None)
    folder, _, cases, stable = nations_base
    other = MaskedEntityModel.from_pretrained(folder)
    with pytest.raises(KGDataError, match="mend has no option 'extra'"):  # a KGEditor option is not dropped silently
        MEND.train_pretrained(other, cases[:4], stable[:4], str(tmp_path / "never"), extra=64, progress=False)
    editor = MEND(MENDConfig(layers=[0], epochs=0, progress=False))
    editor.prepare(KGETarget(other))
    editor.save_pretrained(str(tmp_path / "one"))
    loaded = MEND.from_pretrained(str(tmp_path / "one"))
    loaded.config.layers = [0, 1]  # a model/layer choice that does not match what was saved
    with pytest.raises(KGDataError, match="the trained mend edits"):
        loaded.prepare(KGETarget(other))
