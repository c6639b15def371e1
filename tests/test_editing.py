"""The edit API: rollback, errors, metrics, FT and KGEditor mechanics (on a small Nations model)."""

from __future__ import annotations

import json

import pytest
import torch

from deltakg.cli import main
from deltakg.editing import EditError, KGETarget, WeightSnapshot, apply_edit, get_editor, run_edits
from deltakg.editing.editor import Editor
from deltakg.editing.metrics import edit_metrics, raw_ranks
from deltakg.editing.methods.kgeditor import KGEditor, KGEditorConfig
from deltakg.editing.methods.kgeditor_training import train_kgeditor
from deltakg.editing.slots import remove_slots, slot_parameter_names
from deltakg.editing.weights import apply_delta, restore_on_error
from deltakg.kge.model import MaskedEntityModel
from deltakg.kge.training import TrainConfig, train_model
from kg_data import EditCase, EditSet, KGDataError, StableFact, Triple, load_dataset


@pytest.fixture(scope="module")
def base(nations_base):
    """The session's small trained Nations model, its edit cases and stable facts (tests/conftest.py)."""
    return nations_base


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ weights
def test_snapshot_restores_bit_exactly():
    layer = torch.nn.Linear(4, 3)
    before = _state(layer)
    snap = WeightSnapshot(layer, ["weight"])
    with torch.no_grad():
        layer.weight.add_(1.0)
        layer.bias.add_(1.0)
    assert snap.changed() == ["weight"]
    snap.restore()
    assert torch.equal(layer.weight, before["weight"]) and not torch.equal(layer.bias, before["bias"])


def test_apply_delta_checks_shape_and_finiteness():
    p = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="shape"):
        apply_delta(p, torch.zeros(3))
    with pytest.raises(FloatingPointError):
        apply_delta(p, torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    assert torch.equal(p, torch.zeros(2, 2))
    apply_delta(p, torch.ones(2, 2))
    assert torch.equal(p, torch.ones(2, 2))


def test_restore_on_error():
    layer = torch.nn.Linear(2, 2)
    before = _state(layer)
    with pytest.raises(RuntimeError):
        with restore_on_error(layer):
            with torch.no_grad():
                layer.weight.mul_(3)
            raise RuntimeError("boom")
    assert _same(before, _state(layer))


# ------------------------------------------------------------------------------------------ metrics
def test_edit_metrics_definitions():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.3, 0.2]])
    assert raw_ranks(scores, torch.tensor([2, 1])).tolist() == [2.0, 1.0]  # ties do not count against
    m = edit_metrics(torch.tensor([4.0, 2.0]), torch.tensor([1.0, 3.0]),
                     torch.tensor([1.0, 1.0, 2.0, 5.0]), torch.tensor([1.0, 4.0, 3.0, 5.0]))
    assert m["succ@1"] == 0.5 and m["succ@3"] == 1.0
    assert m["er_roc"] == pytest.approx(abs(2.0 - 3.0) / 3.0)
    assert m["rk@3"] == pytest.approx(2 / 3)  # 3 stable facts ranked <= 3 before, 2 after
    assert m["rk_roc"] == pytest.approx(abs(3.25 - 2.25) / 3.25)


# ------------------------------------------------------------------------------------------ API + FT
def test_ft_per_batch_rolls_back_exactly(base):
    out, kg, cases, stable = base
    model = MaskedEntityModel.from_pretrained(out)
    before = _state(model)
    report = run_edits(get_editor("ft", steps=5), model, cases[:6], stable[:30], batch_size=2)
    assert _same(before, _state(model))
    m = report.metrics
    for key in ("succ@1", "succ@3", "er_roc", "rk@3", "rk_roc", "time_per_edit_s", "params"):
        assert key in m
    assert m["succ@1"] > 0.5 and m["params"]["edited"] == model.num_parameters()


def test_sequential_edits_accumulate_and_roll_back(base):
    out, kg, cases, stable = base
    model = MaskedEntityModel.from_pretrained(out)
    before = _state(model)
    editor = get_editor("ft", steps=10, lr=1e-3)
    report = run_edits(editor, model, cases[:4], stable[:30], batch_size=2, sequential=True)
    after_both = _state(model)
    assert not _same(before, after_both)
    # the first batch's edit is still in the model: its cases rank better than before any edit
    assert float(report.edit_ranks_after[:2].mean()) < float(report.edit_ranks_before[:2].mean())
    # and the model is not just "the second edit on the original"
    report.rollback()
    assert _same(before, _state(model))
    second_only = run_edits(editor, model, cases[2:4], stable[:30], batch_size=2, sequential=True)
    assert not _same(after_both, _state(model))
    second_only.rollback()
    assert _same(before, _state(model))


def test_errors_leave_model_unchanged(base):
    out, kg, cases, stable = base
    model = MaskedEntityModel.from_pretrained(out)
    before = _state(model)
    target = KGETarget(model)
    with pytest.raises(KGDataError, match="unknown entity"):
        target.encode([EditCase(Triple("atlantis", kg.relations.label(0), "usa"), "tail")])
    with pytest.raises(KGDataError, match="empty"):
        run_edits(get_editor("ft"), model, [], stable[:5])
    with pytest.raises(EditError, match="already predicts"):
        run_edits(get_editor("ft"), model, [EditCase(stable[0].triple, "tail")], stable[:5])

    class Exploding(Editor):
        name = "exploding-test"

        def touched(self, target):
            return ["entity_bias"]

        def edit(self, target, cases):
            with torch.no_grad():
                target.model.entity_bias.add_(1.0)
            raise RuntimeError("half-way failure")

    with pytest.raises(RuntimeError, match="half-way"):
        apply_edit(Exploding(), target, target.encode(cases[:2]))
    assert _same(before, _state(model))


def test_unknown_method():
    with pytest.raises(KGDataError, match="ft"):
        get_editor("nope")


# ------------------------------------------------------------------------------------------ KGEditor
def test_fresh_slots_do_not_change_the_model(base):
    out, kg, cases, stable = base
    model = MaskedEntityModel.from_pretrained(out)
    with torch.no_grad():
        reference = model.score(kg.test, "tail")
    editor = KGEditor(KGEditorConfig(layers=[-1], extra=8))
    editor.prepare(KGETarget(model))
    assert len(slot_parameter_names(model)) == 2
    with torch.no_grad():
        assert torch.equal(model.score(kg.test, "tail"), reference)
    remove_slots(model)
    assert not slot_parameter_names(model)


def test_kgeditor_trains_saves_and_edits_reversibly(base, tmp_path):
    out, kg, cases, stable = base
    model = MaskedEntityModel.from_pretrained(out)
    config = KGEditorConfig(layers=[-1], extra=8, epochs=1, seed=0)
    editor, metrics = train_kgeditor(model, cases[:20], stable[:40], tmp_path / "editor", config=config,
                                     dev_cases=cases[20:24], progress=False)
    assert metrics["global_step"] == 10 and (tmp_path / "editor" / "hypernetwork.safetensors").is_file()

    fresh = MaskedEntityModel.from_pretrained(out)
    loaded = KGEditor.from_pretrained(tmp_path / "editor")
    loaded.prepare(KGETarget(fresh))
    before = _state(fresh)
    handle = apply_edit(loaded, KGETarget(fresh), KGETarget(fresh).encode(cases[30:32]))
    assert not _same(before, _state(fresh))
    handle.rollback()
    assert _same(before, _state(fresh))

    # a reloaded editor makes exactly the same edit as the trained one
    again = MaskedEntityModel.from_pretrained(out)
    other = KGEditor.from_pretrained(tmp_path / "editor")
    other.prepare(KGETarget(again))
    apply_edit(other, KGETarget(again), KGETarget(again).encode(cases[30:32]))
    apply_edit(loaded, KGETarget(fresh), KGETarget(fresh).encode(cases[30:32]))
    assert _same(_state(fresh), _state(again))
    # ... and the same as the in-memory editor that training returned (not only two reloads agreeing)
    third = MaskedEntityModel.from_pretrained(out)
    editor.prepare(KGETarget(third))
    apply_edit(editor, KGETarget(third), KGETarget(third).encode(cases[30:32]))
    assert _same(_state(third), _state(fresh))

    report = run_edits(KGEditor.from_pretrained(tmp_path / "editor"), MaskedEntityModel.from_pretrained(out),
                       cases[30:40], stable[:40], batch_size=2)
    encoder = model.encoder.config
    assert report.metrics["params"]["added"] == 8 * (encoder.intermediate_size + encoder.hidden_size)
    assert report.metrics["method"] == "kgeditor" and report.metrics["edits"] == 10


def test_cli_edit_and_train_editor(base, tmp_path, capsys):
    out, kg, cases, stable = base
    editset = EditSet(cases={"train": cases[:12], "dev": cases[12:16], "test": cases[16:22]}, stable=stable[:30])
    editset.save(tmp_path / "es")
    assert main(["edit", "--model", str(out), "--editset", str(tmp_path / "es"), "--method", "ft", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    for key in ("succ@1", "succ@3", "er_roc", "rk@3", "rk_roc", "time_per_edit_s", "params"):
        assert key in payload
    assert main(["train-editor", "--method", "kgeditor", "--model", str(out), "--editset", str(tmp_path / "es"),
                 "--out", str(tmp_path / "ed"), "--epochs", "1", "--rounds", "2", "--no-progress", "--json"]) == 0
    capsys.readouterr()
    saved = json.loads((tmp_path / "ed" / "kgeditor.json").read_text())["config"]
    assert saved["rounds"] == 2 and saved["whiten"] and saved["calibrate"]
    assert (tmp_path / "ed" / "keys.safetensors").is_file()
    assert main(["edit", "--model", str(out), "--editset", str(tmp_path / "es"), "--method", "kgeditor",
                 "--editor", str(tmp_path / "ed"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "kgeditor"
    assert main(["edit", "--model", str(out), "--editset", str(tmp_path / "es"), "--method", "kgeditor"]) == 2
    assert "--editor" in capsys.readouterr().err


def test_kgeditor_edits_values_only_with_whitened_keys(base):
    out, kg, cases, stable = base
    model = MaskedEntityModel.from_pretrained(out)
    target = KGETarget(model)
    editor = KGEditor(KGEditorConfig(layers=[-1], extra=32))
    editor.prepare(target)
    assert editor.edited_names == [n for n in editor.slot_names if n.endswith(".up.weight")]
    assert set(editor.key_inverse) == set(editor.edited_names)
    inverse = editor.key_inverse[editor.edited_names[0]]
    assert inverse.shape == (32, 32) and torch.allclose(inverse, inverse.T, atol=1e-4)
    assert bool((torch.linalg.eigvalsh(inverse.double()) > 0).all())
    # the key statistics need only the model (random queries from the editor's seed): deterministic
    again = KGEditor(KGEditorConfig(layers=[-1], extra=32))
    again.prepare(KGETarget(MaskedEntityModel.from_pretrained(out)))
    assert torch.equal(again.key_inverse[editor.edited_names[0]], inverse)
    both = KGEditor(KGEditorConfig(layers=[-1], extra=32, edit_keys=True))
    both.prepare(KGETarget(MaskedEntityModel.from_pretrained(out)))
    assert both.edited_names == both.slot_names


def test_kgeditor_calibrated_edit_succeeds_and_whitening_keeps_more(base):
    out, kg, cases, stable = base
    reports = {}
    for whiten in (False, True):
        config = KGEditorConfig(layers=[-1], extra=64, whiten=whiten)
        reports[whiten] = run_edits(KGEditor(config), MaskedEntityModel.from_pretrained(out), cases[:10],
                                    stable[:60], batch_size=2).metrics
    assert reports[True]["succ@1"] >= 0.8
    assert reports[True]["rk@3"] > reports[False]["rk@3"]

    model = MaskedEntityModel.from_pretrained(out)
    target = KGETarget(model)
    editor = KGEditor(KGEditorConfig(layers=[-1], extra=64))
    editor.prepare(target)
    batch = target.encode(cases[:2])
    with torch.no_grad():
        deltas = editor.updates(target, batch)
    scale, done = editor.calibrated_scale(target, batch, deltas)
    if done:  # the calibrated step is one that makes both targets rank first
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, delta in deltas.items():
                named[name].add_(scale * delta)
        assert (target.ranks(batch) == 1).all()


def test_kgeditor_sequential_edits_accumulate(base):
    out, kg, cases, stable = base
    model = MaskedEntityModel.from_pretrained(out)
    editor = KGEditor(KGEditorConfig(layers=[-1], extra=64))
    editor.prepare(KGETarget(model))  # adds the slots (a structural change rollback does not undo)
    before = _state(model)
    memory = {n: b.clone() for n, b in model.named_buffers() if n.endswith("edit_keys")}
    report = run_edits(editor, model, cases[:6], stable[:30], batch_size=2, sequential=True)
    assert all(b.any() for n, b in model.named_buffers() if n.endswith("edit_keys"))
    # after all three batches the first batch's targets still rank better than before any edit, and the
    # last batch's rank first
    assert float(report.edit_ranks_after[:2].mean()) < float(report.edit_ranks_before[:2].mean())
    assert (report.edit_ranks_after[4:6] == 1).all()
    report.rollback()
    assert _same(before, _state(model))
    assert all(torch.equal(b, memory[n]) for n, b in model.named_buffers() if n.endswith("edit_keys"))


def test_last_layer_cache_matches_full_passes(base):
    """The cached last-layer path gives the model's scores, per-edit gradients and the same edits."""
    from deltakg.editing.gradients import per_edit_gradients
    from deltakg.editing.slot_cache import LastLayerSlotCache

    out, kg, cases, stable = base
    model = MaskedEntityModel.from_pretrained(out)
    target = KGETarget(model)
    editor = KGEditor(KGEditorConfig(layers=[-1], extra=32, edit_keys=True))
    editor.prepare(target)
    with torch.no_grad():  # a non-zero ``up`` so that the ``down`` gradients are non-zero
        dict(model.named_parameters())[editor.slot_names[1]].normal_(std=0.05)
    facts = target.encode(cases[:5])
    cache = editor.slot_cache(target, facts)
    assert isinstance(cache, LastLayerSlotCache) and len(cache) == 5
    model.eval()
    with torch.no_grad():
        assert torch.allclose(cache.scores(), target.scores(facts), atol=1e-4)
        assert torch.allclose(cache.select(torch.tensor([1, 3])).scores(), target.scores(facts.select([1, 3])),
                              atol=1e-4)
    slow = per_edit_gradients(target, facts, editor.edited_names)
    fast = cache.per_case_gradients(editor.edited_names)
    for name in editor.edited_names:
        assert fast[name].shape == slow[name].shape == (5, *dict(model.named_parameters())[name].shape)
        assert torch.allclose(fast[name], slow[name], atol=1e-5, rtol=1e-3), name

    # a slot below the last layer has no cache; a whole edit run is the same with and without it
    lower = KGEditor(KGEditorConfig(layers=[0], extra=32))
    lower_target = KGETarget(MaskedEntityModel.from_pretrained(out))
    lower.prepare(lower_target)
    assert lower.slot_cache(lower_target, facts) is None
    with pytest.raises(ValueError, match="last layer"):  # forced onto a lower slot, the capture's check refuses
        LastLayerSlotCache.capture(lower_target, lower.slot_paths[0], facts)
    runs = {}
    for cached in (True, False):
        config = KGEditorConfig(layers=[-1], extra=32, cache_last_layer=cached)
        runs[cached] = run_edits(KGEditor(config), MaskedEntityModel.from_pretrained(out), cases[:6], stable[:30],
                                 batch_size=2)
    assert torch.equal(runs[True].edit_ranks_after, runs[False].edit_ranks_after)
    assert torch.allclose(runs[True].stable_ranks_after, runs[False].stable_ranks_after, atol=2)


def test_editors_work_on_the_entity_readout_layout(tmp_path):
    """FT and KGEditor act on the decoded position, which under ``readout="entity"`` is the known entity's token."""
    from deltakg.editing.slot_cache import LastLayerSlotCache

    kg = load_dataset("nations")
    train_model(kg, tmp_path / "m", encoder="tiny", use_text=False, layers=1, inverse_relations=True,
                readout="entity", config=TrainConfig(epochs=4, batch_size=64, progress=False, patience=None, seed=1))
    model = MaskedEntityModel.from_pretrained(tmp_path / "m")
    assert not model.sparse_last_layer  # editors hook every position of the FFN
    with torch.no_grad():
        top = model.score(kg.train, "tail").argmax(dim=1)
    cases = [EditCase(t, "tail", wrong=kg.entities.label(int(top[i])))
             for i, t in enumerate(kg.triples("train")) if top[i] != kg.train[i, 2]][:6]
    stable = [StableFact(t, "tail") for i, t in enumerate(kg.triples("train")) if top[i] == kg.train[i, 2]][:30]
    assert len(cases) == 6 and len(stable) == 30
    for editor in (get_editor("ft", steps=5), KGEditor(KGEditorConfig(layers=[-1], extra=64))):
        model = MaskedEntityModel.from_pretrained(tmp_path / "m")
        if isinstance(editor, KGEditor):
            editor.prepare(KGETarget(model))
            facts = KGETarget(model).encode(cases)
            cache = editor.slot_cache(KGETarget(model), facts)
            assert isinstance(cache, LastLayerSlotCache)
            model.eval()
            with torch.no_grad():
                assert torch.allclose(cache.scores(), KGETarget(model).scores(facts), atol=1e-4)
        before = _state(model)
        report = run_edits(editor, model, cases, stable, batch_size=2)
        assert _same(before, _state(model))
        assert report.metrics["succ@1"] >= 0.5, report.metrics


# ------------------------------------------------------------------------------------------ CaliNet
def test_calinet_trains_only_its_slots_and_rolls_back_exactly(base):
    from deltakg.editing.methods.calinet import CaliNet

    out, kg, cases, stable = base
    model = MaskedEntityModel.from_pretrained(out)
    target = KGETarget(model)
    facts = target.encode(cases[:4])
    with torch.no_grad():
        plain = model(**target.inputs(facts))
    editor = get_editor("calinet", lr=3e-2, steps=50)
    editor.prepare(target)
    assert editor.touched(target) == slot_parameter_names(model) and len(editor.touched(target)) == 4  # 2 layers
    with torch.no_grad():
        assert torch.equal(model(**target.inputs(facts)), plain)  # fresh slots change nothing
    prepared = _state(model)
    report = run_edits(editor, model, cases[:8], stable[:30], batch_size=2)
    assert _same(prepared, _state(model))  # every batch rolled back, slots included
    m = report.metrics
    assert m["succ@1"] >= 0.75 and m["params"] == {"added": sum(
        p.numel() for n, p in model.named_parameters() if n in set(slot_parameter_names(model)))}
    # the base model is frozen: one applied edit writes the slots and nothing else
    handle = apply_edit(editor, target, target.encode(cases[:2]))
    changed = {k for k, v in _state(model).items() if not torch.equal(v, prepared[k])}
    assert changed and changed <= set(slot_parameter_names(model))
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in changed)  # unfrozen again
    handle.rollback()
    assert _same(prepared, _state(model))
    # the paper's setting (Adafactor lr 3e-4) is the default; bad settings are refused by name
    assert CaliNet().config.lr == 3e-4 and CaliNet().config.extra == 32
    with pytest.raises(KGDataError, match="CaliNet needs"):
        CaliNet(steps=0)
    with pytest.raises(TypeError):
        CaliNet(nope=1)


# ------------------------------------------------------------------------------------------ K-Adapter
def test_kadapter_trains_only_its_adapters_with_replay_and_rolls_back(base):
    from deltakg.editing.methods.kadapter import KAdapter

    out, kg, cases, stable = base
    model = MaskedEntityModel.from_pretrained(out)
    target = KGETarget(model)
    facts = target.encode(cases[:4])
    with torch.no_grad():
        plain = model(**target.inputs(facts))
    editor = get_editor("k-adapter", lr=1e-2, steps=50)
    editor.set_replay(stable[30:60])
    editor.prepare(target)
    with torch.no_grad():
        assert torch.equal(model(**target.inputs(facts)), plain)  # fresh adapters change nothing
    prepared = _state(model)
    assert set(editor.touched(target)) == {k for k in prepared if k.startswith("kadapter.")}
    report = run_edits(editor, model, cases[:8], stable[:30], batch_size=2)
    assert _same(prepared, _state(model))
    assert report.metrics["succ@1"] >= 0.75 and report.metrics["params"]["added"] > 0
    handle = apply_edit(editor, target, target.encode(cases[:2]))
    changed = {k for k, v in _state(model).items() if not torch.equal(v, prepared[k])}
    assert changed and all(k.startswith("kadapter.") for k in changed)
    handle.rollback()
    assert _same(prepared, _state(model))
    # the same editor and replay give bit-identical edits (seeded replay draws)
    again = run_edits(editor, model, cases[:8], stable[:30], batch_size=2)
    assert torch.equal(again.edit_ranks_after, report.edit_ranks_after)
    assert KAdapter().config.lr == 5e-5 and KAdapter().config.layers == [0, -1]
    with pytest.raises(KGDataError, match="K-Adapter needs"):
        KAdapter(size=30, heads=4)
    with pytest.raises(KGDataError, match="out of range"):
        KAdapter(layers=[9]).prepare(KGETarget(MaskedEntityModel.from_pretrained(out)))


def test_benchmark_hands_replaying_methods_stable_train_only(base, tmp_path, monkeypatch):
    from deltakg.editing.benchmark import BenchmarkConfig, _editor_for
    from deltakg.editing.methods.kadapter import KAdapter

    out, kg, cases, stable = base
    folder = tmp_path / "set"
    EditSet.with_pools({"train": cases[:4], "dev": cases[4:8], "test": cases[8:12]},
                       {"train": stable[:5], "dev": stable[5:10], "test": stable[10:15]}).save(folder)
    editor, _ = _editor_for("k-adapter", {}, out, EditSet.load(folder), 0, BenchmarkConfig(methods=["k-adapter"]),
                            tmp_path)
    assert isinstance(editor, KAdapter) and editor._replay == EditSet.load(folder).pool("train")
