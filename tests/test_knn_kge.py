"""kNN-KGE (knn/link_prediction.py) and the k-NN memory edit method on the session's small Nations model."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from deltakg.cli import main
from deltakg.editing import EDITORS, KGETarget, apply_edit, get_editor, run_edits
from deltakg.editing.methods.knn_memory import KNNMemoryConfig
from deltakg.kge.evaluation import FilterIndex, evaluate_model
from deltakg.kge.model import MaskedEntityModel
from kg_data import EditCase, EditSet
from kg_data.errors import KGDataError
from knn.link_prediction import (KNNKGEConfig, KNNLinkPredictor, choose_hyperparameters, evaluate_knn,
                                 mixture_scores, query_states)


@pytest.fixture(scope="module")
def base(nations_base):
    out, kg, cases, stable = nations_base
    return MaskedEntityModel.from_pretrained(out), out, kg, cases, stable


@pytest.fixture(scope="module")
def predictor(base):
    model, _, kg, _, _ = base
    return KNNLinkPredictor.build(model, kg.train, KNNKGEConfig(k=8, temperature=0.5, lam=0.3))


def _brute_states(model, triples, side):
    with torch.no_grad():
        return model.mask_states(**model.inputs(triples, side)).float()


def test_store_holds_both_queries_of_every_training_triple(base, predictor):
    model, _, kg, _, _ = base
    train = torch.unique(kg.train, dim=0)
    assert len(predictor.store) == 2 * train.shape[0]
    for side, column in (("tail", 2), ("head", 0)):
        ids = predictor.own_ids(train, side)
        assert (ids >= 0).all()
        assert torch.equal(predictor.store.labels_of(ids), train[:, column])
        rows = torch.searchsorted(predictor.store.ids, ids)
        assert torch.allclose(predictor.store.keys[rows], _brute_states(model, train, side), atol=1e-5)
    assert (predictor.own_ids(kg.splits["test"], "tail") == -1).all()  # not training triples


@pytest.mark.parametrize("split", ["test", "train"])
def test_scores_equal_brute_force_with_leave_one_out(base, predictor, split):
    model, _, kg, _, _ = base
    cfg = predictor.config
    train = torch.unique(kg.train, dim=0)
    keys = torch.cat([_brute_states(model, train, "tail"), _brute_states(model, train, "head")]).double()
    labels = torch.cat([train[:, 2], train[:, 0]])
    triples = kg.splits[split][:200]
    for side in ("head", "tail"):
        states = _brute_states(model, triples, side)
        dist = torch.cdist(states.double(), keys).pow(2)
        if split == "train":  # leave-one-out: a training query never sees its own entry
            own = predictor.own_ids(triples, side)
            assert (dist[torch.arange(len(own)), own] < 1e-8).all()  # it would be its own nearest neighbour
            dist[torch.arange(len(own)), own] = math.inf
        top, index = dist.topk(cfg.k + 1, dim=1, largest=False)
        clear = top[:, cfg.k] - top[:, cfg.k - 1] > 1e-4  # rows whose k-th neighbour is not tied with the next
        weights = torch.softmax(-top[:, :cfg.k] / cfg.temperature, dim=1)
        p_knn = torch.zeros(len(triples), kg.num_entities, dtype=torch.float64)
        p_knn.scatter_add_(1, labels[index[:, :cfg.k]], weights)
        p_model = torch.softmax(model.decode(states).double(), dim=1)
        expected = torch.log(cfg.lam * p_knn + (1 - cfg.lam) * p_model)
        got = predictor.score(triples, side)
        assert got.shape == (len(triples), kg.num_entities) and clear.sum() >= 20
        torch.testing.assert_close(got[clear].double(), expected[clear], atol=1e-4, rtol=1e-4)


def test_mixture_is_a_proper_distribution_and_validated():
    scores = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    p_knn = torch.softmax(torch.randn(5, 7, generator=torch.Generator().manual_seed(1)), dim=1)
    p_knn[0] = 0.0
    p_knn[0, 3] = 1.0
    for lam in (0.0, 0.3, 1.0):
        mixed = mixture_scores(scores, p_knn, lam).exp()
        torch.testing.assert_close(mixed.sum(dim=1), torch.ones(5))
        torch.testing.assert_close(mixed, lam * p_knn + (1 - lam) * torch.softmax(scores, dim=1))
    with pytest.raises(KGDataError, match="lam"):
        mixture_scores(scores, p_knn, 1.5)
    for bad in (dict(k=0), dict(temperature=0.0), dict(lam=-0.1), dict(metric="dot"), dict(backend="gpu")):
        with pytest.raises(KGDataError):
            KNNKGEConfig(**bad)


def test_choice_on_valid_and_model_alone_equals_evaluate_model(base, predictor):
    model, _, kg, _, _ = base
    filter_index = FilterIndex.from_kg(kg)
    chosen = choose_hyperparameters(predictor, kg.splits["valid"], filter_index, ks=(4, 16),
                                    temperatures=(0.3, 1.0), lambdas=(0.1, 0.5))
    assert len(chosen["grid"]) == 8
    assert chosen["valid_mrr"] == max(g["mrr"] for g in chosen["grid"])
    assert (predictor.config.k, predictor.config.lam) == (chosen["k"], chosen["lambda"])
    result = evaluate_knn(predictor, kg.splits["test"], filter_index)
    alone = evaluate_model(model, kg, "test", precision="fp32")
    assert result["model"]["mrr"] == pytest.approx(alone["mrr"], abs=1e-6)
    assert 0.0 < result["knn"]["mrr"] <= 1.0 and result["knn"]["mrr"] != result["model"]["mrr"]


def test_evaluate_knn_cli_json(base, capsys):
    _, out, *_ = base
    code = main(["evaluate", "--model", str(out), "--dataset", "nations", "--knn", "--json", "--no-progress"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert {"mrr", "hits@10", "head", "tail", "dataset", "split", "knn"} <= set(payload)
    knn = payload["knn"]
    assert {"mrr", "mr", "hits@1", "hits@3", "hits@10", "head", "tail", "k", "lambda", "temperature",
            "set_by", "valid", "mrr_minus_model", "store_entries"} <= set(knn)
    assert set(knn["set_by"].values()) == {"chosen on valid"}
    assert knn["mrr_minus_model"] == pytest.approx(knn["mrr"] - payload["mrr"])
    code = main(["evaluate", "--model", str(out), "--dataset", "nations", "--knn", "--knn-k", "8", "--knn-lambda",
                 "0.2", "--knn-temperature", "0.5", "--json", "--no-progress"])
    assert code == 0
    given = json.loads(capsys.readouterr().out)["knn"]
    assert (given["k"], given["lambda"], given["temperature"]) == (8, 0.2, 0.5) and "valid" not in given
    with pytest.raises(SystemExit) as exit_info:  # argparse: one usage line naming the argument
        main(["evaluate", "--model", str(out), "--dataset", "nations", "--knn", "--knn-lambda", "2"])
    assert exit_info.value.code == 2 and "--knn-lambda" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ edit method
def test_registered_in_the_kg_family():
    assert "knn" in EDITORS and "kge" in EDITORS["knn"].families
    for bad in (dict(k=0), dict(lam=0.0), dict(radius=-1.0), dict(radius_scale=0), dict(temperature=math.nan)):
        with pytest.raises(KGDataError):
            KNNMemoryConfig(**bad)


def test_edit_changes_the_edited_query_keeps_far_queries_and_rolls_back_bit_exactly(base):
    _, out, kg, cases, stable = base
    model = MaskedEntityModel.from_pretrained(out)
    editor = get_editor("knn")
    target = KGETarget(model)
    editor.prepare(target)
    facts = target.encode(cases[:6])
    queries = kg.train
    with torch.no_grad():
        before = model.score(queries, "tail")
    handle = apply_edit(editor, target, facts)
    memory = editor.memory(target)
    assert len(memory.store) == 6 and memory.radius > 0
    assert (target.ranks(facts) == 1).all()
    with torch.no_grad():
        after = model.score(queries, "tail")
        states = query_states(model, queries, "tail")
    far = torch.cdist(states, memory.store.keys).min(dim=1).values > memory.radius
    assert far.sum() > 0.5 * len(queries)
    assert torch.equal(after[far], before[far])  # outside every entry's radius: bit-identical scores
    handle.rollback()
    assert len(memory.store) == 0
    with torch.no_grad():
        assert torch.equal(model.score(queries, "tail"), before)
    report = run_edits(editor, model, cases[:20], stable[:60])  # per-batch protocol through the registry
    assert report.metrics["succ@1"] == 1.0 and report.metrics["rk@3"] >= 0.9
    editor.detach(target)
    with torch.no_grad():
        assert torch.equal(model.score(queries, "tail"), before)


def test_1000_sequential_edits_quick_and_rolled_back(base):
    _, out, kg, cases, stable = base
    model = MaskedEntityModel.from_pretrained(out)
    edits = list(cases)
    for triple in kg.triples("train"):  # head-side edits fill up to 1000 when the model errs on fewer tails
        if len(edits) >= 1000:
            break
        edits.append(EditCase(triple, "head"))
    edits = edits[:1000]
    with torch.no_grad():
        before = model.score(kg.train, "tail")
    editor = get_editor("knn")
    started = time.perf_counter()
    report = run_edits(editor, model, edits, stable[:100], batch_size=1, sequential=True, check=False)
    seconds = time.perf_counter() - started
    assert report.metrics["edits"] == 1000 and len(editor.memory(KGETarget(model)).store) == 1000
    assert seconds < 60
    # a query edited again to another target answers with the newest one: the last edit of each query ranks first
    last: dict[tuple, int] = {}
    for i, case in enumerate(edits):
        h, r, t = case.triple
        last[(case.masked, r, t if case.masked == "head" else h)] = i
    final = torch.tensor(sorted(last.values()))
    assert len(final) > 200 and (report.edit_ranks_after[final] == 1).float().mean() > 0.97
    report.rollback()
    assert len(editor.memory(KGETarget(model)).store) == 0
    with torch.no_grad():
        assert torch.equal(model.score(kg.train, "tail"), before)


def test_edit_cli_runs_the_method(base, tmp_path, capsys):
    _, out, _, cases, stable = base
    EditSet.with_pools({"test": cases[:8]}, {"test": stable[:30]}).save(tmp_path / "set")
    code = main(["edit", "--model", str(out), "--editset", str(tmp_path / "set"), "--method", "knn", "--json"])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["method"] == "knn" and metrics["succ@1"] == 1.0
