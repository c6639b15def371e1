"""FT-L, ROME, MEMIT and GRACE on causal LMs through the one edit API (tiny GPT-2 and Llama, stories260K)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from deltakg.cli import main
from deltakg.editing import EDITORS, apply_edit
from deltakg.editing.locate import MEMITConfig, ROMEConfig, second_moment
from deltakg.editing.locate.adapter import weight_matrix
from deltakg.editing.locate.stats import model_fingerprint
from kg_data.errors import KGDataError
from kg_data.triple import Triple
from llm_editing.adapter import CAUSAL_LM_LAYOUTS, CausalLMTarget, layout_for
from llm_editing.editors import llm_editors, make_editor, run_llm_edits
from llm_editing.facts import FB15K237_TEMPLATES, Fact, edit_requests
from llm_editing.metrics import MetricsConfig
from llm_editing.requests import EditRequest

STORIES = Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "stories260K"
METRICS = MetricsConfig(fluency_tokens=0)
FIRST = ["Alma", "Boris", "Cyril", "Dana", "Elio", "Farah", "Goran", "Hedda", "Ivo", "Jana", "Kamil", "Lotte"]
LAST = ["Varga", "Ostrom", "Pilkey", "Quade", "Rendel", "Sowa"]
COUNTRIES = ["France", "Japan", "Brazil", "Canada"]
JOBS = ["actor", "lawyer", "painter", "singer"]


def _facts() -> list[Fact]:
    nationality = FB15K237_TEMPLATES["/people/person/nationality"]
    profession = FB15K237_TEMPLATES["/people/person/profession"]
    facts = []
    for i, first in enumerate(FIRST):
        name = f"{first} {LAST[i % len(LAST)]}"
        facts.append(Fact(Triple(f"/m/p{i}", nationality.relation, f"/m/c{i % 4}"), name, COUNTRIES[i % 4], nationality))
        facts.append(Fact(Triple(f"/m/p{i}", profession.relation, f"/m/j{(i + 1) % 4}"), name, JOBS[(i + 1) % 4],
                          profession))
    return facts


@pytest.fixture(scope="module")
def toy():
    """A tiny GPT-2 that knows 24 facts (the toy trainer, a few seconds)."""
    from llm_editing.toy import ToyConfig, train_toy_model

    trained = train_toy_model(_facts(), ToyConfig(n_embd=64, n_layer=2, n_head=2, vocab_size=400, epochs=60,
                                                  batch_size=24, lr=5e-3, progress=False))
    assert trained.metrics["reproduced"] >= 0.9
    return trained


@pytest.fixture(scope="module")
def llama(toy):
    """A tiny Llama (Linear projections) trained on the same sentences with the toy's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = toy.tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    texts = [s for f in toy.facts for s in f.sentences()]
    rows = [ids + [tok.eos_token_id] for ids in tok(texts)["input_ids"]]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(150):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def _requests(facts, n=3):
    return edit_requests(facts, n, seed=1, n_locality=2)


def _target(model, toy, **kwargs):
    corpus = [s for f in toy.facts for s in f.sentences()]
    return CausalLMTarget(model, toy.tokenizer, corpus, **kwargs)


def _options(name, tmp_path):
    """Settings for a 2-layer, 64-dim model (the defaults are the toy GPT-2's)."""
    stats = {"stats_dir": str(tmp_path), "progress": False, "n_prefixes": 0}
    return {"rome": {"layer": 0, "key_position": "prompt_last", **stats},
            "memit": {"layers": [0, 1], "key_position": "prompt_last", "mom2_weight": 10.0, **stats},
            "ft-l": {"layer": 1, "lr": 1e-2, "eps": 0.5, "steps": 40},
            "grace": {"layer": 1, "eps_init": 0.1}}[name]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_registry_lists_the_causal_lm_methods():
    assert set(llm_editors()) >= {"ft-l", "rome", "memit", "grace", "mend", "ke"}
    assert all("causal_lm" in EDITORS[name].families for name in llm_editors())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["ft-l", "rome", "memit", "grace"])
def test_method_installs_edits_and_rolls_back(method, family, toy, llama, tmp_path):
    model = toy.model if family == "gpt2" else llama
    target = _target(model, toy)
    requests = _requests(toy.facts)
    before = _state(model)
    editor = make_editor(method, _options(method, tmp_path))
    report = run_llm_edits(editor, target, requests, batch_size=1 if method != "memit" else 3, metrics=METRICS)
    assert report.pre["reliability"] < 0.5  # new targets are wrong answers
    assert report.metrics["reliability"] >= 0.99 if method in ("rome", "memit", "grace") else \
        report.metrics["reliability"] > report.pre["reliability"]
    assert report.metrics["time_per_edit_s"] > 0
    assert _same(before, model.state_dict())  # per-batch runs roll every edit back, bit-exact


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_rome_exact_value_sees_its_own_update(family, toy, llama, tmp_path):
    """With exact_value, the value step's loss IS the edited model's loss on the request's prompt."""
    from deltakg.editing.locate.rome import key_direction, compute_keys, optimise_values

    model = toy.model if family == "gpt2" else llama
    target = _target(model, toy)
    request = target.encode(_requests(toy.facts, 1))
    options = {**_options("rome", tmp_path), "exact_value": True, "stop_nll": 0.0, "v_steps": 5}
    editor = make_editor("rome", options)
    editor.prepare(target)
    adapter = editor.adapter(target)
    config = editor.resolved(adapter)
    key = compute_keys(adapter, request, 0, config.key_position, [""])[0]
    direction = key_direction(key, editor.covariance(adapter, 0))[None]
    delta, _ = optimise_values(adapter, request, 0, config, [""], direction)
    probe = adapter.target_probe(request, config.key_position, [""])
    module = model.get_submodule(adapter.layout.ffn_out.format(0))
    from deltakg.editing.locate.hooks import add_through_key

    with torch.no_grad(), add_through_key(module, delta, direction.float(), probe.owners):
        hooked = adapter.target_nll(probe, adapter.forward(probe.inputs))
    before = _state(model)
    handle = apply_edit(editor, target, request, check=False)
    with torch.no_grad():
        edited = adapter.target_nll(probe, adapter.forward(probe.inputs))
    handle.rollback()
    torch.testing.assert_close(edited, hooked, rtol=1e-3, atol=1e-4)
    assert _same(before, model.state_dict())


def test_memit_exact_value_optimises_the_batch_update_jointly(toy, tmp_path):
    """MEMIT's exact_value: the coupled value step's loss IS the loss of the model after the batch update."""
    from deltakg.editing.locate.hooks import add_through_key
    from deltakg.editing.locate.memit import memit_directions
    from deltakg.editing.locate.rome import compute_keys, optimise_values

    target = _target(toy.model, toy)
    requests = target.encode(_requests(toy.facts, 3))
    options = {**_options("memit", tmp_path), "layers": [0], "exact_value": True, "stop_nll": 0.0, "v_steps": 5}
    editor = make_editor("memit", options)
    editor.prepare(target)
    adapter = editor.adapter(target)
    config = editor.resolved(adapter)
    keys = compute_keys(adapter, requests, 0, config.key_position, [""])
    directions = memit_directions(keys, editor.covariance(adapter, 0), config.mom2_weight)
    delta, _ = optimise_values(adapter, requests, 0, config, [""], directions, coupled=True)
    probe = adapter.target_probe(requests, config.key_position, [""])
    module = toy.model.get_submodule(adapter.layout.ffn_out.format(0))
    with torch.no_grad(), add_through_key(module, delta, directions.float(), probe.owners, coupled=True):
        hooked = adapter.target_nll(probe, adapter.forward(probe.inputs))
    before = _state(toy.model)
    handle = apply_edit(editor, target, requests, check=False)
    with torch.no_grad():
        edited = adapter.target_nll(probe, adapter.forward(probe.inputs))
    handle.rollback()
    torch.testing.assert_close(edited, hooked, rtol=1e-3, atol=1e-4)
    assert _same(before, toy.model.state_dict())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["rome", "memit"])
def test_exact_value_installs_edits(method, family, toy, llama, tmp_path):
    model = toy.model if family == "gpt2" else llama
    options = {**_options(method, tmp_path), "exact_value": True}
    report = run_llm_edits(make_editor(method, options), _target(model, toy), _requests(toy.facts),
                           batch_size=1 if method == "rome" else 3, metrics=METRICS)
    assert report.metrics["reliability"] >= 0.99 and report.metrics["exact_match"] == 1.0


@pytest.mark.parametrize("method", ["rome", "memit", "grace"])
def test_sequential_edits_accumulate_and_roll_back_bit_exact(method, toy, tmp_path):
    target = _target(toy.model, toy)
    requests = _requests(toy.facts, 4)
    before = _state(toy.model)
    probe = toy.tokenizer([requests[0].prompt], return_tensors="pt")
    logits_before = toy.model(**probe).logits
    report = run_llm_edits(make_editor(method, _options(method, tmp_path)), target, requests, batch_size=2,
                           sequential=True, metrics=METRICS)
    assert report.metrics["reliability"] >= 0.75
    assert not torch.equal(toy.model(**probe).logits, logits_before)
    report.rollback()
    assert _same(before, toy.model.state_dict())
    assert torch.equal(toy.model(**probe).logits, logits_before)  # GRACE: its codebook entries are gone too


def test_memit_preserved_keys_make_a_sequence_of_batches_one_batch():
    """Recursive least squares: two updates, the second with the first's keys preserved, equal one batch update."""
    from deltakg.editing.locate.memit import memit_update

    gen = torch.Generator().manual_seed(0)
    d_in, d_out = 12, 5
    basis = torch.randn(40, d_in, generator=gen, dtype=torch.float64)
    mom2 = basis.T @ basis / 40
    w0 = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
    k1, k2 = (torch.randn(3, d_in, generator=gen, dtype=torch.float64) for _ in range(2))
    v1, v2 = (torch.randn(3, d_out, generator=gen, dtype=torch.float64) for _ in range(2))
    w1 = w0 + memit_update(k1, v1 - k1 @ w0.T, mom2, 7.0)
    w2 = w1 + memit_update(k2, v2 - k2 @ w1.T, mom2, 7.0, preserved=k1.T @ k1)
    both = w0 + memit_update(torch.cat([k1, k2]), torch.cat([v1 - k1 @ w0.T, v2 - k2 @ w0.T]), mom2, 7.0)
    torch.testing.assert_close(w2, both)
    forgetful = w1 + memit_update(k2, v2 - k2 @ w1.T, mom2, 7.0)
    assert (forgetful @ k1.T - v1.T).norm() > (w2 @ k1.T - v1.T).norm()  # without P the first batch drifts


def test_memit_preserved_keys_are_remembered_and_rolled_back(toy, tmp_path):
    """preserve_weight: each edit adds p K^T K to the editor's memory; rolling an edit back restores it exactly."""
    target = _target(toy.model, toy)
    requests = target.encode(_requests(toy.facts, 4))
    editor = make_editor("memit", {**_options("memit", tmp_path), "layers": [0], "preserve_weight": 2.0})
    editor.prepare(target)
    where = (id(toy.model), 0)
    before = _state(toy.model)
    first = apply_edit(editor, target, requests[:2], check=False)
    keys = _layer0_keys(editor, target, requests[:2])
    torch.testing.assert_close(editor._edited.preserved(where), 2.0 * keys.T @ keys)
    saved = editor._edited.preserved(where).clone()
    second = apply_edit(editor, target, requests[2:], check=False)
    assert not torch.equal(editor._edited.preserved(where), saved)
    second.rollback()
    assert torch.equal(editor._edited.preserved(where), saved)
    first.rollback()
    assert editor._edited.preserved(where) is None and _same(before, toy.model.state_dict())


def _layer0_keys(editor, target, requests):
    from deltakg.editing.locate.rome import compute_keys

    adapter = editor.adapter(target)
    return compute_keys(adapter, requests, 0, editor.resolved(adapter).key_position, [""]).double()


def test_grace_keeps_unrelated_prompts_and_its_codebook_is_the_rollback(toy):
    target = _target(toy.model, toy)
    editor = make_editor("grace", _options("grace", None))
    requests = _requests(toy.facts, 4)
    report = run_llm_edits(editor, target, requests, sequential=True, metrics=METRICS)
    assert report.metrics["locality"] == 1.0 and report.metrics["reliability"] == 1.0
    assert len(editor.codebook(target)) == 4 and editor.touched(target) == []
    report.rollback()
    assert len(editor.codebook(target)) == 0


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_conv1d_and_linear_weights_are_read_as_out_by_in(family, toy, llama):
    model = toy.model if family == "gpt2" else llama
    target = _target(model, toy)
    assert target.layout.transposed is (family == "gpt2")
    module = model.get_submodule(target.layout.ffn_out.format(0))
    x = torch.randn(3, weight_matrix(target, 0).shape[1])
    bias = getattr(module, "bias", None)
    expected = x @ weight_matrix(target, 0).T + (0 if bias is None else bias)
    assert torch.allclose(module(x), expected, atol=1e-5)


def test_key_statistics_are_cached_on_disk(toy, tmp_path):
    target = _target(toy.model, toy)
    first = second_moment(target, 0, target.corpus, cache_dir=tmp_path, progress=False)
    second = second_moment(target, 0, target.corpus, cache_dir=tmp_path, progress=False)
    assert not first.from_cache and second.from_cache
    assert torch.equal(first.mom2, second.mom2) and first.count == second.count > 0
    other = second_moment(target, 0, target.corpus[:5], cache_dir=tmp_path, progress=False)
    assert not other.from_cache  # another corpus, another entry
    assert len(list(tmp_path.rglob("*.pt"))) == 2
    assert model_fingerprint(toy.model) == model_fingerprint(toy.model)


def test_both_key_positions_differ_and_are_read_where_asked(toy):
    target = _target(toy.model, toy)
    request = _requests(toy.facts, 1)
    subject = target.key_probe(request, "subject_last", [""]).positions
    prompt = target.key_probe(request, "prompt_last", [""]).positions
    ids = toy.tokenizer(request[0].prompt)["input_ids"]
    assert int(prompt) == len(ids) - 1 and int(subject) < int(prompt)
    upto = toy.tokenizer(request[0].prompt[: request[0].prompt.index(request[0].subject) + len(request[0].subject)])
    assert int(subject) == len(upto["input_ids"]) - 1


def test_bad_input_gives_one_clear_error(toy, tmp_path):
    with pytest.raises(KGDataError, match="no option 'layr'"):
        make_editor("rome", {"layr": 1})
    with pytest.raises(KGDataError, match="unknown causal-LM edit method"):
        make_editor("kgeditor")
    with pytest.raises(KGDataError, match="key_position"):
        make_editor("rome", {"key_position": "middle"})
    with pytest.raises(KGDataError, match="empty edit batch"):
        _target(toy.model, toy).encode([])
    with pytest.raises(ValueError, match="out of range"):
        apply_edit(make_editor("rome", {"layer": 7}), _target(toy.model, toy), _requests(toy.facts, 1), check=False)
    from transformers import BertConfig, BertModel

    with pytest.raises(KGDataError, match="no module layout known for model_type 'bert'"):
        layout_for(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64)))
    assert set(CAUSAL_LM_LAYOUTS) >= {"gpt2", "llama"}
    without_corpus = CausalLMTarget(toy.model, toy.tokenizer)
    with pytest.raises(ValueError, match="statistics corpus"):
        apply_edit(make_editor("rome", {"stats_dir": str(tmp_path)}), without_corpus, _requests(toy.facts, 1),
                   check=False)


def test_failed_edit_leaves_the_model_unchanged(toy, tmp_path, monkeypatch):
    import deltakg.editing.locate.memit as memit

    real, calls = memit.memit_update, []

    def second_layer_fails(*args):
        calls.append(1)
        update = real(*args)
        return update if len(calls) == 1 else update * float("nan")

    monkeypatch.setattr(memit, "memit_update", second_layer_fails)
    before = _state(toy.model)
    with pytest.raises(FloatingPointError, match="NaN"):
        # exact_value off: both layers then go through memit_update, the second one failing
        apply_edit(make_editor("memit", {**_options("memit", tmp_path), "exact_value": False}),
                   _target(toy.model, toy), _requests(toy.facts, 3), check=False)
    assert len(calls) == 2  # layer 0 was written before layer 1 failed; the snapshot put it back
    assert _same(before, toy.model.state_dict())


def test_cli_llm_edit_json(toy, tmp_path, capsys):
    from llm_editing.toy import save_toy_model

    folder = save_toy_model(toy, tmp_path / "toy")
    edits = tmp_path / "edits.jsonl"
    edits.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in _requests(toy.facts, 2)))
    code = main(["llm-edit", "--model", str(folder), "--edits", str(edits), "--method", "rome", "--json",
                 "--no-progress", "--set", "layer=0", "--set", f"stats_dir={tmp_path / 'stats'}",
                 "--key-position", "prompt_last"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("reliability", "generalization", "locality", "portability", "exact_match", "success", "fluency",
                "time_per_edit_s"):
        assert key in out and key in out["pre"] or key == "time_per_edit_s"
    assert out["reliability"] >= out["pre"]["reliability"]
    code = main(["llm-edit", "--model", str(folder), "--edits", str(edits), "--method", "rome", "--set", "layr=0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "layr" in err  # refused before the model loads


def _stories():
    if not (STORIES / "stories260K.bin").is_file():
        pytest.skip(f"stories260K is absent ({STORIES}); it ships in the shared models folder")
    stories = pytest.importorskip("llm_editing.stories", reason="the stories260K loader is not in this checkout")
    return stories


@pytest.mark.parametrize("method", ["rome", "memit"])
def test_rome_and_memit_on_stories260k(method, tmp_path):
    stories = _stories()
    model, tokenizer = stories.load_stories(STORIES)
    requests = [EditRequest(prompt="Lily liked to play with her", target_new="dog", subject="Lily"),
                EditRequest(prompt="Tom went to the park with his", target_new="cat", subject="Tom")]
    corpus = ["Once upon a time, there was a little girl named Lily.", "Tom had a big red ball.",
              "They played in the park all day.", "The sun was warm and the sky was blue."] * 8
    target = CausalLMTarget(model, tokenizer, corpus)
    options = {"stats_dir": str(tmp_path), "progress": False, "n_prefixes": 2, "key_position": "prompt_last"}
    options.update({"layer": 2} if method == "rome" else {"layers": [1, 2], "mom2_weight": 10.0})
    before = _state(model)
    report = run_llm_edits(make_editor(method, options), target, requests, batch_size=1 if method == "rome" else 2,
                           metrics=METRICS)
    assert report.metrics["reliability"] > report.pre["reliability"]
    assert _same(before, model.state_dict())


# ------------------------------------------------------------------------------------------ the KG model
def _kg_options(name, tmp_path):
    stats = {"stats_dir": str(tmp_path), "progress": False}
    return {"rome": {"layer": -1, "v_steps": 40, **stats}, "memit": {"layers": [-1], "mom2_weight": 1.0, **stats},
            "ft-l": {"lr": 1e-2, "eps": 0.5, "steps": 40}, "grace": {"eps_init": 0.5}}[name]


@pytest.mark.parametrize("method", ["ft-l", "rome", "memit", "grace"])
def test_same_method_edits_the_kg_model_through_run_edits(method, nations_base, tmp_path):
    from deltakg.editing import run_edits
    from deltakg.kge.model import MaskedEntityModel

    folder, _, cases, stable = nations_base
    model = MaskedEntityModel.from_pretrained(folder)
    before = _state(model)
    editor = make_editor(method, _kg_options(method, tmp_path))
    assert "kge" in type(editor).families
    report = run_edits(editor, model, cases[:4], stable[:40], batch_size=1 if method != "memit" else 4)
    # every case starts wrong at rank 1 (succ@1 = 0 before); the tiny 2-layer Nations model is hard to steer
    # from its last FFN alone, so the bar is "some edits land", not a quality goal
    assert report.metrics["succ@1"] >= (0.25 if method != "ft-l" else 0.0)
    assert report.metrics["succ@3"] >= report.metrics["succ@1"]
    assert _same(before, model.state_dict())


def test_one_triple_edits_the_kg_model_and_the_toy_gpt2_from_one_call_sequence(toy, tmp_path):
    """The same (h, r, t) edit through the same ROME and apply_edit: as a KG query and as a prompt."""
    from deltakg.editing import KGETarget
    from deltakg.kge.model import MaskedEntityModel
    from deltakg.kge.training import TrainConfig, train_model
    from kg_data import EditCase, KnowledgeGraph
    from llm_editing.requests import requests_from_triples

    # a KG model trained on the toy GPT-2's own facts, so both models know the fact being changed
    kg = KnowledgeGraph.from_labeled({"train": [tuple(f.triple) for f in toy.facts]})
    train_model(kg, tmp_path / "kg", encoder="tiny", use_text=False,
                config=TrainConfig(epochs=2, batch_size=16, progress=False, patience=None, seed=0))
    kg_model = MaskedEntityModel.from_pretrained(tmp_path / "kg")
    names = {f.triple.head: f.subject for f in toy.facts} | {f.triple.tail: f.answer for f in toy.facts}
    fact = next(f for f in toy.facts if f.triple.relation == "/people/person/nationality")
    new_tail = next(f.triple.tail for f in toy.facts if f.triple.relation == fact.triple.relation
                    and f.answer != fact.answer)
    triple = Triple(fact.triple.head, fact.triple.relation, new_tail)

    editor = make_editor("rome", {**_options("rome", tmp_path), "layer": 0})
    kg_target, lm_target = KGETarget(kg_model), _target(toy.model, toy)
    for target, batch in ((kg_target, kg_target.encode([EditCase(triple, "tail")])),
                          (lm_target, requests_from_triples([triple], FB15K237_TEMPLATES, names=names))):
        handle = apply_edit(editor, target, batch, check=False)
        assert handle.snapshot.changed()  # the one ROME wrote an FFN output projection of each model
        handle.rollback()
        assert not handle.snapshot.changed()
    assert int(kg_target.ranks(kg_target.encode([EditCase(triple, "tail")]))[0]) >= 1


# ------------------------------------------------------------------------------------------ MEND and KE (trained)
@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["mend", "ke"])
def test_trained_editor_learns_on_some_edits_and_installs_others(method, family, toy, llama, tmp_path):
    """The one MEND / KE (deltakg.editing.locate) on GPT-2's Conv1D and Llama's Linear: trained on 16 edits,
    judged on 4 others; the trained editor reloads to identical edits; per-batch runs roll back bit-exact."""
    from deltakg.editing.locate import train_network_editor

    model = toy.model if family == "gpt2" else llama
    target = _target(model, toy)
    requests = edit_requests(toy.facts, 20, seed=3, n_locality=1)
    train, held = requests[:16], requests[16:]
    locality = [f.prompt + " " + f.answer for f in toy.facts]
    before = _state(model)
    editor = make_editor(method, {"epochs": 6, "progress": False, "seed": 0})
    metrics = train_network_editor(editor, target, train, locality, dev=(held[:2], locality[:8]))
    assert metrics["history"][-1]["edit_nll"] < metrics["history"][1]["edit_nll"]
    assert _same(before, model.state_dict())  # training swaps weights in functionally, never writes them
    report = run_llm_edits(editor, target, held, batch_size=1, metrics=METRICS)
    assert report.metrics["success"] > report.pre["success"]
    assert _same(before, model.state_dict())
    editor.save_pretrained(str(tmp_path / method))
    again = make_editor(method, {"pretrained": str(tmp_path / method), "progress": False})
    edited = []
    for ed in (editor, again):
        handle = apply_edit(ed, target, target.encode(held[:1]), check=False)
        edited.append(_state(model))
        handle.rollback()
    assert _same(*edited) and not _same(edited[0], before)


def test_cli_llm_train_editor_then_llm_edit_with_mend(toy, tmp_path, capsys):
    from llm_editing.toy import save_toy_model

    folder = save_toy_model(toy, tmp_path / "toy")
    edits = tmp_path / "edits.jsonl"
    edits.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in _requests(toy.facts, 2)))
    capsys.readouterr()  # the save's progress bar
    code = main(["llm-edit", "--model", str(folder), "--edits", str(edits), "--method", "mend", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "llm-train-editor" in err  # an untrained MEND is refused
    code = main(["llm-train-editor", "--model", str(folder), "--method", "mend", "--out", str(tmp_path / "mend"),
                 "--train-fraction", "0.5", "--dev-fraction", "0.25", "--n-dev", "3", "--set", "epochs=2",
                 "--no-progress", "--json"])
    trained = json.loads(capsys.readouterr().out)
    assert code == 0 and trained["train_edits"] >= 8 and trained["dev_edits"] >= 2
    assert [r["epoch"] for r in trained["history"]][:2] == [0, 1]
    code = main(["llm-edit", "--model", str(folder), "--edits", str(edits), "--method", "mend", "--json",
                 "--no-progress", "--set", f"pretrained={tmp_path / 'mend'}"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["method"] == "mend" and out["edits"] == 2
    assert main(["llm-train-editor", "--model", str(folder), "--method", "mend", "--out",
                 str(tmp_path / "mend")]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err


def test_rome_exact_value_edits_the_kg_model(nations_base, tmp_path):
    from deltakg.editing import run_edits
    from deltakg.kge.model import MaskedEntityModel

    folder, _, cases, stable = nations_base
    model = MaskedEntityModel.from_pretrained(folder)
    before = _state(model)
    plain = run_edits(make_editor("rome", _kg_options("rome", tmp_path)), model, cases[:4], stable[:40])
    exact = run_edits(make_editor("rome", {**_kg_options("rome", tmp_path), "exact_value": True}), model, cases[:4],
                      stable[:40])
    assert exact.metrics["succ@1"] >= plain.metrics["succ@1"] >= 0.25
    assert _same(before, model.state_dict())
