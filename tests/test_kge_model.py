"""The masked-entity KGE: query layout, save/load, training quality, resume, interrupts, DDP, CLI."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from deltakg.cli import main
from deltakg.kge.evaluation import FilterIndex, evaluate_ranking
from deltakg.kge.inputs import HEAD, TAIL, QueryBuilder, _fit
from deltakg.kge.loss import decoder_cross_entropy
from deltakg.kge.queries import QueryTable
from deltakg.kge.model import MaskedEntityModel
from deltakg.kge.training import TrainConfig, train_model
from kg_data import KGDataError, load_dataset


@pytest.fixture(scope="module")
def nations():
    return load_dataset("nations")


def _tiny(kg, **kwargs) -> MaskedEntityModel:
    torch.manual_seed(0)
    return MaskedEntityModel.for_graph(kg, "tiny", **kwargs).eval()


def _epoch_losses(out: Path) -> dict[int, float]:
    # a resumed run logs into a new version folder: read them in order
    losses = {}
    for path in sorted((out / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])):
        with open(path) as handle:
            losses.update({int(r["epoch"]): float(r["train_loss_epoch"]) for r in csv.DictReader(handle)
                           if r.get("train_loss_epoch")})
    return losses


# ------------------------------------------------------------------------------------------ inputs
def test_query_layouts():
    b = QueryBuilder(base_vocab_size=100, num_entities=5, cls_id=1, sep_id=2, mask_id=3, pad_id=0, max_length=16,
                     entity_tokens=[[10, 11]] * 5, relation_tokens=[[20]] * 2)
    triples = torch.tensor([[0, 1, 4]])
    tail = b.build(triples, TAIL)
    # [CLS] [ENT_0] text [SEP] words [REL_1] [SEP] [MASK] [SEP]
    assert tail["input_ids"][0].tolist() == [1, 100, 10, 11, 2, 20, 106, 2, 3, 2]
    assert tail["mask_positions"].tolist() == [8]
    head = b.build(triples, HEAD)
    # [CLS] [MASK] [SEP] words [REL_1] [SEP] [ENT_4] text [SEP]
    assert head["input_ids"][0].tolist() == [1, 3, 2, 20, 106, 2, 104, 10, 11, 2]
    assert head["mask_positions"].tolist() == [1]


def test_inverse_relation_tokens_and_entity_readout():
    b = QueryBuilder(base_vocab_size=100, num_entities=5, cls_id=1, sep_id=2, mask_id=3, pad_id=0, max_length=16,
                     entity_tokens=[[10, 11]] * 5, relation_tokens=[[20]] * 2, num_relations=2,
                     inverse_relations=True, readout="entity")
    triples = torch.tensor([[0, 1, 4]])
    tail = b.build(triples, TAIL)
    assert tail["input_ids"][0].tolist() == [1, 100, 10, 11, 2, 20, 106, 2, 3, 2]  # [REL_1] as before
    assert tail["mask_positions"].tolist() == [1]  # [ENT_0]
    head = b.build(triples, HEAD)
    # [REL_1^-1] follows the 2 relations' tokens: 100 + 5 + 2 + 1
    assert head["input_ids"][0].tolist() == [1, 3, 2, 20, 108, 2, 104, 10, 11, 2]
    assert head["mask_positions"].tolist() == [6]  # [ENT_4]
    mixed = b.build(torch.tensor([[0, 1, 4], [2, 0, 3]]), torch.tensor([HEAD, TAIL]))
    rows = torch.arange(2)
    assert mixed["input_ids"][rows, mixed["mask_positions"]].tolist() == [104, 102]
    with pytest.raises(ValueError, match="readout must be one of mask, entity"):
        QueryBuilder(base_vocab_size=100, num_entities=5, cls_id=1, sep_id=2, mask_id=3, pad_id=0, readout="cls")
    with pytest.raises(ValueError, match="num_relations"):
        QueryBuilder(base_vocab_size=100, num_entities=5, cls_id=1, sep_id=2, mask_id=3, pad_id=0,
                     inverse_relations=True)


def test_truncation_is_longest_first_and_bounded():
    assert _fit(3, 4, 10) == (3, 4)
    assert _fit(30, 2, 10) == (8, 2)
    assert _fit(2, 30, 10) == (2, 8)
    assert _fit(30, 30, 10) == (5, 5)
    b = QueryBuilder(base_vocab_size=100, num_entities=2, cls_id=1, sep_id=2, mask_id=3, pad_id=0, max_length=12,
                     entity_tokens=[list(range(10, 60))] * 2, relation_tokens=[list(range(60, 90))])
    out = b.build(torch.tensor([[0, 0, 1], [1, 0, 0]]), torch.tensor([HEAD, TAIL]))
    assert out["input_ids"].shape[1] == 12
    assert out["attention_mask"].sum(1).tolist() == [12, 12]


# ------------------------------------------------------------------------------------------ model
def test_scores_shape_and_both_sides(nations):
    model = _tiny(nations, use_text=True)
    with torch.no_grad():
        for side in ("head", "tail"):
            scores = model.score(nations.valid[:5], side)
            assert scores.shape == (5, nations.num_entities)
            assert torch.isfinite(scores).all()


def test_chunked_score_equals_one_forward_pass(nations):
    # score() encodes length-sorted chunks padded to their own longest query; the scores must not change
    model = _tiny(nations, use_text=True)
    lengths = model.inputs(nations.test, "tail")["attention_mask"].sum(dim=1)
    assert lengths.unique().numel() > 1  # texts of several lengths, so chunks are padded differently
    with torch.no_grad():
        for side in ("head", "tail"):
            whole = model(**model.inputs(nations.test, side))
            for chunk in (16, 50):
                torch.testing.assert_close(model.score(nations.test, side, chunk=chunk), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("smoothing,chunk", [(0.0, 7), (0.1, 7), (0.1, 4096), (0.3, 40)])
def test_decoder_cross_entropy_equals_unfused(smoothing, chunk):
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(9, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(50, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(50, dtype=torch.float64, generator=gen, requires_grad=True)
    targets = torch.tensor([0, 49, 6, 7, 13, 13, 21, 35, 48])  # chunk edges and a repeated target
    expected = F.cross_entropy(states @ weight.t() + bias, targets, label_smoothing=smoothing)
    expected_grads = torch.autograd.grad(expected, (states, weight, bias))
    loss = decoder_cross_entropy(states, weight, bias, targets, label_smoothing=smoothing, chunk=chunk)
    grads = torch.autograd.grad(loss, (states, weight, bias))
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="label_smoothing"):
        decoder_cross_entropy(states, weight, bias, targets, label_smoothing=1.0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_decoder_cross_entropy_bfloat16_products(smoothing):
    """bf16 decoder products: float32's loss and gradients up to bf16 rounding; float32 is the default, exactly."""
    gen = torch.Generator().manual_seed(2)
    states = torch.randn(16, 32, generator=gen, requires_grad=True)
    weight = (0.3 * torch.randn(300, 32, generator=gen)).requires_grad_()
    bias = torch.randn(300, generator=gen, requires_grad=True)
    targets = torch.randint(0, 300, (16,), generator=gen)
    args = (states, weight, bias, targets)
    default = decoder_cross_entropy(*args, label_smoothing=smoothing, chunk=64)
    as_float = decoder_cross_entropy(*args, label_smoothing=smoothing, chunk=64, matmul_dtype=torch.float32)
    assert torch.equal(default, as_float)
    exact = F.cross_entropy(states.double() @ weight.double().t() + bias.double(), targets, label_smoothing=smoothing)
    exact_grads = torch.autograd.grad(exact, (states, weight, bias))
    loss = decoder_cross_entropy(*args, label_smoothing=smoothing, chunk=64, matmul_dtype=torch.bfloat16)
    assert loss.dtype == torch.float32 and loss.item() != default.item()  # the products did run in bf16
    torch.testing.assert_close(loss.double(), exact, rtol=1e-2, atol=0)
    for got, want in zip(torch.autograd.grad(loss, (states, weight, bias)), exact_grads):
        assert got.dtype == torch.float32
        want = want.double()
        torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-2 * want.abs().max().item())
        cosine = F.cosine_similarity(got.double().flatten(), want.flatten(), dim=0)
        assert cosine > 0.999


def test_query_table_groups_answers_per_query():
    triples = torch.tensor([[0, 0, 1], [0, 0, 2], [3, 0, 1], [0, 1, 2], [4, 1, 2], [0, 0, 4]])
    table = QueryTable.from_triples(triples)
    answers = {}
    for i in range(len(table)):
        query, side = table.queries[i].tolist(), int(table.sides[i])
        key = (side, query[0] if side == TAIL else query[2], query[1])
        answers[key] = sorted(table.answers[table.offsets[i] : table.offsets[i + 1]].tolist())
        assert query[2 if side == TAIL else 0] in answers[key]  # the hidden slot holds one of the answers
    assert answers == {
        (TAIL, 0, 0): [1, 2, 4], (TAIL, 3, 0): [1], (TAIL, 0, 1): [2], (TAIL, 4, 1): [2],
        (HEAD, 1, 0): [0, 3], (HEAD, 2, 0): [0], (HEAD, 2, 1): [0, 4], (HEAD, 4, 0): [0],
    }
    assert int(table.offsets[-1]) == 2 * triples.shape[0]  # every triple answers one tail and one head query
    batch = table.batch(torch.tensor([0, 2]))
    assert batch.rows.tolist() == [0, 0, 0, 1] and batch.cols.tolist() == [1, 2, 4, 1]
    torch.testing.assert_close(batch.weights, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0]))


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_decoder_cross_entropy_with_answer_distributions(smoothing):
    gen = torch.Generator().manual_seed(1)
    states = torch.randn(3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True)
    rows, cols = torch.tensor([0, 0, 0, 1, 2, 2]), torch.tensor([1, 2, 4, 2, 0, 3])
    weights = torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0, 0.5, 0.5], dtype=torch.float64)
    dense = torch.zeros(3, 5, dtype=torch.float64).index_put_((rows, cols), weights)
    expected = F.cross_entropy(states @ weight.t() + bias, dense, label_smoothing=smoothing)
    expected_grads = torch.autograd.grad(expected, (states, weight, bias))
    loss = decoder_cross_entropy(states, weight, bias, (rows, cols, weights), label_smoothing=smoothing, chunk=2)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    for got, want in zip(torch.autograd.grad(loss, (states, weight, bias)), expected_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_training_loss_is_the_decoded_cross_entropy(nations):
    model = _tiny(nations).eval()
    inputs = model.inputs(nations.train[:5], "tail")
    scores = model(**inputs)
    loss = model.decode_loss(model.mask_states(**inputs), nations.train[:5, 2], label_smoothing=0.1)
    torch.testing.assert_close(loss, F.cross_entropy(scores, nations.train[:5, 2], label_smoothing=0.1))


@pytest.mark.parametrize("options", [{}, {"inverse_relations": True, "readout": "entity", "compact": True}])
def test_save_load_bit_identical(nations, tmp_path, options):
    model = _tiny(nations, use_text=True, **options)
    model.save_pretrained(tmp_path)
    loaded = MaskedEntityModel.from_pretrained(tmp_path)
    as_json = lambda config: json.loads(json.dumps(asdict(config)))  # noqa: E731
    assert as_json(loaded.config) == as_json(model.config)
    assert loaded.entities == model.entities and loaded.relations == model.relations
    with torch.no_grad():
        for side in ("head", "tail"):
            assert torch.equal(model.score(nations.test, side), loaded.score(nations.test, side))
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()


def test_inverse_relations_and_readout_options(nations, tmp_path):
    model = _tiny(nations, use_text=False, inverse_relations=True, readout="entity")
    assert model.relation_embeddings.num_embeddings == 2 * nations.num_relations
    with torch.no_grad():
        for side, known in (("tail", 0), ("head", 2)):
            inputs = model.inputs(nations.valid[:4], side)
            decoded = inputs["input_ids"][torch.arange(4), inputs["mask_positions"]]
            assert torch.equal(decoded, nations.valid[:4, known] + model.config.base_vocab_size)
            assert torch.isfinite(model.score(nations.valid[:4], side)).all()
    # the inverse tokens start from their relation's words, like the relation tokens
    texts = MaskedEntityModel.for_graph(nations, "minilm", layers=1, inverse_relations=True)
    r = nations.num_relations
    assert torch.equal(texts.relation_embeddings.weight[:r], texts.relation_embeddings.weight[r:])
    # models saved before the options existed load with the paper's layout
    _tiny(nations, use_text=False).save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["inverse_relations"], config["readout"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    old = MaskedEntityModel.from_pretrained(tmp_path / "old")
    assert (old.config.inverse_relations, old.config.readout) == (False, "mask")


@pytest.mark.parametrize("readout", ["mask", "entity"])
def test_compact_input_drops_cls_and_sep(nations, readout):
    model = _tiny(nations, use_text=False, inverse_relations=True, readout=readout, compact=True)
    b = model.builder
    triple = nations.valid[:1]
    h, r, t = triple[0].tolist()
    tail = model.inputs(triple, "tail")
    head = model.inputs(triple, "head")
    assert tail["input_ids"][0].tolist() == [b.entity_id(h), b.relation_id(r), b.mask_id]
    assert head["input_ids"][0].tolist() == [b.mask_id, b.relation_id(r, 0), b.entity_id(t)]
    assert (tail["mask_positions"].item(), head["mask_positions"].item()) == ((0, 2) if readout == "entity" else (2, 0))
    # with texts: the same parts as the paper's layout, less [CLS] and the [SEP]s
    texts = _tiny(nations, use_text=True, readout=readout, compact=True, max_length=16)
    paper = _tiny(nations, use_text=True, readout=readout, max_length=20)
    for side in ("tail", "head"):
        ids = texts.inputs(triple, side)
        full = paper.inputs(triple, side)
        special = {b.cls_id, b.sep_id, b.pad_id}
        assert ids["input_ids"][0].tolist() == [i for i in full["input_ids"][0].tolist() if i not in special]
        decoded = ids["input_ids"][0, ids["mask_positions"][0]]
        assert decoded == full["input_ids"][0, full["mask_positions"][0]]
        assert torch.isfinite(texts.score(triple, side)).all()


def test_init_from_text_without_texts_in_the_input(nations):
    """Entity tokens can start from their text's words while the input carries only the tokens."""
    with_texts = MaskedEntityModel.for_graph(nations, "minilm", layers=1)
    bare = MaskedEntityModel.for_graph(nations, "minilm", layers=1, use_text=False, init_from_text=True)
    assert bare.builder.entity_tokens is None  # no texts in the input
    assert torch.equal(bare.entity_embeddings.weight, with_texts.entity_embeddings.weight)
    assert torch.equal(bare.relation_embeddings.weight, with_texts.relation_embeddings.weight)
    default = MaskedEntityModel.for_graph(nations, "minilm", layers=1, use_text=False)
    assert not torch.equal(default.entity_embeddings.weight, bare.entity_embeddings.weight)
    with pytest.raises(ValueError, match="pretrained"):
        MaskedEntityModel.for_graph(nations, "tiny", use_text=False, init_from_text=True)


@pytest.mark.parametrize("encoder,options", [("tiny", {"use_text": False}),
                                             ("tiny", {"use_text": True, "readout": "entity", "layers": 1}),
                                             ("tiny", {"use_text": False, "readout": "entity", "compact": True}),
                                             ("minilm", {"layers": 2, "inverse_relations": True})])
def test_sparse_last_layer_gives_the_full_forward(nations, encoder, options):
    """Computing the last layer only at the decoded position changes neither states nor gradients."""
    model = _tiny(nations, **options) if encoder == "tiny" else MaskedEntityModel.for_graph(nations, encoder, **options)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.train()
    triples = nations.train[:24]
    sides = torch.arange(24) % 2
    inputs = model.inputs(triples, sides)
    results = []
    for sparse in (False, True):
        model.sparse_last_layer = sparse
        model.zero_grad()
        states = model.mask_states(**inputs)
        model.decode_loss(states, torch.where(sides == 1, triples[:, 2], triples[:, 0])).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((states.detach(), grads))
    (full, full_grads), (sparse, sparse_grads) = results
    torch.testing.assert_close(sparse, full, rtol=1e-5, atol=1e-5)
    assert full_grads.keys() == sparse_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(sparse_grads[name], full_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_layers_option_keeps_first_layers(nations):
    model = MaskedEntityModel.for_graph(nations, "minilm", layers=2)
    assert len(model.encoder.encoder.layer) == 2
    assert model.encoder.config.num_hidden_layers == 2
    with pytest.raises(KGDataError, match="layers"):
        MaskedEntityModel.for_graph(nations, "minilm", layers=99)


def test_dropout_option_reaches_the_encoder_and_survives_reload(nations, tmp_path):
    model = _tiny(nations, dropout=0.3)
    assert model.encoder.config.hidden_dropout_prob == 0.3
    assert model.encoder.config.attention_probs_dropout_prob == 0.3
    model.save_pretrained(tmp_path / "m")
    assert MaskedEntityModel.from_pretrained(tmp_path / "m").encoder.config.hidden_dropout_prob == 0.3
    with pytest.raises(KGDataError, match="dropout"):
        _tiny(nations, dropout=1.5)


def test_init_range_option_scales_fresh_weights(nations):
    default, wide = _tiny(nations, layers=2, use_text=False), _tiny(nations, layers=2, use_text=False, init_range=0.1)
    assert wide.encoder.config.initializer_range == 0.1
    query = wide.encoder.encoder.layer[0].attention.self.query.weight
    assert 0.09 < float(query.std()) < 0.11  # the encoder's own fresh weights
    ratio = wide.entity_embeddings.weight.std() / default.entity_embeddings.weight.std()
    assert 4.5 < float(ratio) < 5.5  # and the new KGE parameters, which follow the encoder's config
    with pytest.raises(KGDataError, match="init-range"):
        _tiny(nations, init_range=0.0)


def test_unknown_encoder_names_the_choices(nations):
    with pytest.raises(KGDataError, match="minilm, tiny"):
        MaskedEntityModel.for_graph(nations, "no-such-encoder")


def test_from_pretrained_missing_folder(tmp_path):
    with pytest.raises(KGDataError, match="config.json"):
        MaskedEntityModel.from_pretrained(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def trained_nations(nations, tmp_path_factory):
    out = tmp_path_factory.mktemp("nations")
    config = TrainConfig(epochs=12, batch_size=64, progress=False, patience=None, seed=0)
    return train_model(nations, out, encoder="tiny", use_text=False, config=config)


@pytest.mark.slow
def test_small_encoder_learns_nations(nations, trained_nations):
    model = MaskedEntityModel.from_pretrained(trained_nations.out)
    with torch.inference_mode():
        result = evaluate_ranking(model.score, nations.test, nations.num_entities,
                                  filter_index=FilterIndex(nations.all_triples(), nations.num_entities))
    metrics = result.to_dict()
    assert metrics["mrr"] > 0.5, metrics  # random ranking gives about 0.2 on 14 entities
    assert trained_nations.metrics["best_valid_mrr"] > 0.5


@pytest.mark.slow
def test_kvsall_training_learns_nations(nations, tmp_path):
    """KvsAll: each distinct query once per epoch with all its answers; learns as well as 1vsAll on Nations."""
    config = TrainConfig(epochs=12, batch_size=32, progress=False, patience=None, seed=0, train_type="kvsall")
    result = train_model(nations, tmp_path / "kvsall", encoder="tiny", use_text=False, config=config)
    queries = QueryTable.from_triples(nations.train)
    assert result.metrics["global_step"] == 12 * -(-len(queries) // 64)  # 2 x batch_size queries per step
    with torch.inference_mode():
        metrics = evaluate_ranking(result.model.score, nations.test, nations.num_entities,
                                   filter_index=FilterIndex(nations.all_triples(), nations.num_entities)).to_dict()
    assert metrics["mrr"] > 0.5, metrics


def test_outputs_written(nations_base):
    out = nations_base[0]
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert any((out / "checkpoints").glob("best-*.ckpt"))
    assert (out / "train_metrics.json").is_file()
    assert _epoch_losses(out)


def _config(**kw) -> TrainConfig:
    base = dict(batch_size=64, progress=False, patience=None, seed=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
@pytest.mark.parametrize("train_type", ["1vsall", "kvsall"])
def test_resume_matches_uninterrupted_run(nations, tmp_path, train_type):
    straight = tmp_path / "straight"
    train_model(nations, straight, encoder="tiny", use_text=False, config=_config(epochs=3, train_type=train_type))
    resumed = tmp_path / "resumed"
    train_model(nations, resumed, encoder="tiny", use_text=False, config=_config(epochs=2, train_type=train_type))
    train_model(nations, resumed, encoder="tiny", use_text=False,
                config=_config(epochs=3, train_type=train_type, resume=True))
    a, b = _epoch_losses(straight), _epoch_losses(resumed)
    assert set(a) == {0, 1, 2} and 2 in b
    assert b[2] == pytest.approx(a[2], rel=1e-6, abs=1e-7)
    m1 = MaskedEntityModel.from_pretrained(straight)
    m2 = MaskedEntityModel.from_pretrained(resumed)
    # the checkpoint carries the RNG states and the epoch order depends only on (seed, epoch): on one CPU the
    # resumed run computes the very same weights, bit for bit
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    assert [k for k in s1 if not torch.equal(s1[k], s2[k])] == []


@pytest.mark.slow  # two trainings (~7 s)
def test_gradient_checkpointing_trains_the_same_model(nations, tmp_path):
    plain = train_model(nations, tmp_path / "plain", encoder="tiny", use_text=False, config=_config(epochs=1))
    saved = train_model(nations, tmp_path / "ckpt", encoder="tiny", use_text=False,
                        config=_config(epochs=1, gradient_checkpointing=True))
    assert saved.model.encoder.is_gradient_checkpointing
    # recomputation replays the same dropout masks: the same losses and (up to float noise) the same weights
    assert _epoch_losses(saved.out)[0] == pytest.approx(_epoch_losses(plain.out)[0], rel=1e-5)
    with torch.no_grad():
        assert torch.allclose(plain.model.score(nations.test, "tail"), saved.model.score(nations.test, "tail"),
                              atol=1e-4)


class _SendSignal(pl.Callback):
    def __init__(self, signum: int, at_step: int) -> None:
        self.signum, self.at_step = signum, at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.slow  # a subprocess training (~19 s on a slow box); test_cli_robustness resumes in the fast suite
def test_sigterm_leaves_a_checkpoint_that_resumes(nations, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(BaseException):  # Lightning re-raises SIGTERMException after saving
        train_model(nations, out, encoder="tiny", use_text=False, config=_config(epochs=5),
                    callbacks=[_SendSignal(signal.SIGTERM, at_step=30)])
    last = out / "checkpoints" / "last.ckpt"
    assert last.is_file()
    step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert step >= 30
    result = train_model(nations, out, encoder="tiny", use_text=False, config=_config(epochs=5, resume=True))
    assert result.metrics["global_step"] == 5 * 25  # 1592 triples / 64 = 25 steps per epoch


# ------------------------------------------------------------------------------------------ CLI
def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_cli_train_and_evaluate(trained_nations, capsys):
    code, out, _ = _run_cli(["evaluate", "--model", str(trained_nations.out), "--dataset", "nations",
                             "--split", "test", "--json", "--no-progress"], capsys)
    assert code == 0
    payload = json.loads(out)
    for scope in (payload, payload["head"], payload["tail"]):
        assert {"mrr", "mr", "hits@1", "hits@3", "hits@10"} <= set(scope)
    assert payload["mrr"] > 0.5
    code, out, _ = _run_cli(["evaluate", "--model", str(trained_nations.out), "--dataset", "nations",
                             "--split", "valid", "--raw", "--json", "--no-progress"], capsys)
    raw = json.loads(out)
    assert code == 0 and raw["filtered"] is False and raw["mrr"] <= payload["mrr"] + 0.2
    code, out, _ = _run_cli(["evaluate", "--model", str(trained_nations.out), "--dataset", "nations",
                             "--split", "test", "--precision", "bf16", "--json", "--no-progress"], capsys)
    bf16 = json.loads(out)
    assert code == 0 and bf16["precision"] == "bf16" and bf16["mrr"] == pytest.approx(payload["mrr"], abs=0.03)


@pytest.mark.slow
def test_cli_train_layout_and_speed_options(nations, tmp_path, capsys):
    code, out, _ = _run_cli(["train", "--dataset", "nations", "--encoder", "tiny", "--no-text", "--inverse-relations",
                             "--readout", "entity", "--compact-input", "--sparse-last-layer", "--fused-loss",
                             "--decoder-dtype", "bfloat16", "--epochs", "12", "--batch-size", "64", "--patience", "0",
                             "--no-bound-memory", "--out", str(tmp_path / "m"), "--json", "--no-progress"], capsys)
    assert code == 0 and json.loads(out)["best_valid_mrr"] > 0.5
    saved = json.loads((tmp_path / "m" / "train_metrics.json").read_text())["config"]
    assert (saved["bound_memory"], saved["sparse_last_layer"], saved["decoder_dtype"]) == (False, True, "bfloat16")
    model = MaskedEntityModel.from_pretrained(tmp_path / "m")
    assert (model.config.inverse_relations, model.config.readout, model.config.compact) == (True, "entity", True)
    with torch.inference_mode():
        metrics = evaluate_ranking(model.score, nations.test, nations.num_entities,
                                   filter_index=FilterIndex(nations.all_triples(), nations.num_entities)).to_dict()
    assert metrics["mrr"] > 0.5, metrics


def test_cli_vocabulary_mismatch_exit_2(trained_nations, capsys):
    code, _, err = _run_cli(["evaluate", "--model", str(trained_nations.out), "--dataset", "umls"], capsys)
    assert code == 2 and "vocabulary" in err and "umls" in err


def test_cli_unknown_encoder_exit_2(tmp_path, capsys):
    code, _, err = _run_cli(["train", "--dataset", "nations", "--encoder", "nope", "--out", str(tmp_path)], capsys)
    assert code == 2 and "minilm" in err and "tiny" in err


@pytest.mark.parametrize("option,value,needle", [("--lr", "-1", "--lr: expected a number > 0"),
                                                  ("--encoder-lr", "0", "--encoder-lr: expected a number > 0"),
                                                  ("--weight-decay", "-0.1", "--weight-decay: expected a number >= 0"),
                                                  ("--label-smoothing", "1", "expected a number in [0, 1)"),
                                                  ("--batch-size", "0", "--batch-size: expected an integer > 0"),
                                                  ("--epochs", "-1", "--epochs: expected an integer > 0"),
                                                  ("--max-time", "nan", "--max-time: expected a number > 0"),
                                                  ("--patience", "-2", "--patience: expected an integer >= 0"),
                                                  ("--dropout", "1.5", "--dropout: expected a number in [0, 1)")])
def test_cli_bad_training_option_exit_2(tmp_path, capsys, option, value, needle):
    # refused at parse time; group learning rates are not checked by torch: a negative one would train by ascent
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", "nations", "--encoder", "tiny", option, value, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and needle in err, err


@pytest.mark.parametrize("field,value,needle", [("lr", -1.0, "lr: must be > 0"),
                                                 ("encoder_lr", 0.0, "encoder-lr: must be > 0"),
                                                 ("weight_decay", -0.1, "weight-decay: must be >= 0"),
                                                 ("label_smoothing", 1.0, "label-smoothing: must be in [0, 1)"),
                                                 ("batch_size", 0, "batch-size: must be >= 1"),
                                                 ("epochs", -1, "epochs: must be >= 1")])
def test_train_config_validates_values(field, value, needle):
    with pytest.raises(KGDataError, match=re.escape(needle)):
        TrainConfig(**{field: value})


def test_train_config_rejects_an_unknown_decoder_dtype():
    with pytest.raises(KGDataError, match="decoder-dtype: must be one of float32, bfloat16"):
        TrainConfig(decoder_dtype="float16")


def test_cli_init_from_text_needs_a_pretrained_encoder(tmp_path, capsys):
    code, _, err = _run_cli(["train", "--dataset", "nations", "--encoder", "tiny", "--no-text", "--init-from-text",
                             "--out", str(tmp_path)], capsys)
    assert code == 2 and "needs a pretrained encoder" in err, err


def test_cli_missing_data_dir_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DELTAKG_DATA", raising=False)
    code, _, err = _run_cli(["train", "--dataset", "wn18rr", "--encoder", "tiny", "--out", str(tmp_path)], capsys)
    assert code == 2 and "data" in err.lower()
    code, _, err = _run_cli(["train", "--dataset", "wn18rr", "--data-dir", str(tmp_path / "none"),
                             "--encoder", "tiny", "--out", str(tmp_path)], capsys)
    assert code == 2 and "train.tsv" in err


@pytest.mark.slow
def test_cli_ddp_two_processes_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "deltakg", "train", "--dataset", "nations", "--encoder", "tiny", "--no-text",
         "--epochs", "2", "--batch-size", "64", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
         "--no-progress", "--out", str(out), "--json"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    # each of the 2 processes sees half of the 1592 triples: 13 steps of 64 per epoch (one process: 25)
    assert payload["global_step"] == 2 * 13
    assert MaskedEntityModel.from_pretrained(out).config.num_entities == 14
