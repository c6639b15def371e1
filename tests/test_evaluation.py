"""Rank-based link-prediction evaluation (deltakg.kge.evaluation) against PyKEEN's RankBasedEvaluator.

The reference is PyKEEN itself, driven on identical score matrices: the filtered protocol goes through
``RankBasedEvaluator.evaluate`` with a mock model that serves the same score rows (PyKEEN builds and applies its own
filter); the raw protocol feeds ``process_scores_`` directly, because PyKEEN 1.11's ``evaluate`` with
``filtered=False`` raises "RankBasedEvaluator needs the true scores!". Scores are small integers so ties are common
and the three rank types really differ.
"""

from __future__ import annotations

import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYSTOW_HOME", tempfile.mkdtemp(prefix="deltakg-test-eval-pystow-"))

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from deltakg.kge.evaluation import (  # noqa: E402
    RANK_TYPES,
    FilterIndex,
    LinkPredictionResult,
    batch_size_for_budget,
    compute_ranks,
    evaluate_ranking,
    evaluate_scores,
)

# PyKEEN is a dependency: a broken install must fail these tests, not skip them
from pykeen.evaluation import RankBasedEvaluator  # noqa: E402
from pykeen.evaluation.ranks import Ranks  # noqa: E402
from pykeen.models.mocks import FixedModel  # noqa: E402
from pykeen.triples import CoreTriplesFactory  # noqa: E402

PROPERTY = settings(
    max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
METRIC_KEYS = ["mrr", "mr", "hits@1", "hits@3", "hits@10"]
PYKEEN_NAMES = {
    "mrr": "inverse_harmonic_mean_rank",
    "mr": "arithmetic_mean_rank",
    "hits@1": "hits_at_1",
    "hits@3": "hits_at_3",
    "hits@10": "hits_at_10",
}
NUM_ENTITIES, NUM_RELATIONS = 30, 4


# ------------------------------------------------------------------------------------------ fixtures
def _random_kg(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small KG with hubs (few heads/tails), so most queries have several true answers; test has a duplicate."""
    g = torch.Generator().manual_seed(seed)
    n = 400
    h = torch.randint(0, 8, (n,), generator=g)
    r = torch.randint(0, NUM_RELATIONS, (n,), generator=g)
    t = torch.randint(0, NUM_ENTITIES, (n,), generator=g)
    # a second population whose tails are hubs: many heads per (r, t)
    h2 = torch.randint(0, NUM_ENTITIES, (n // 2,), generator=g)
    r2 = torch.randint(0, NUM_RELATIONS, (n // 2,), generator=g)
    t2 = torch.randint(25, NUM_ENTITIES, (n // 2,), generator=g)
    triples = torch.unique(torch.cat([torch.stack([h, r, t], 1), torch.stack([h2, r2, t2], 1)]), dim=0)
    triples = triples[torch.randperm(triples.shape[0], generator=g)]
    test = torch.cat([triples[:70], triples[:1]])
    return {"train": triples[100:], "valid": triples[70:100], "test": test, "all": triples}


def _score_tables(seed: int = 1, high: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer-valued scores per query key: tail table row h*R+r, head table row r*E+t."""
    g = torch.Generator().manual_seed(seed)
    tail = torch.randint(0, high, (NUM_ENTITIES * NUM_RELATIONS, NUM_ENTITIES), generator=g).float()
    head = torch.randint(0, high, (NUM_RELATIONS * NUM_ENTITIES, NUM_ENTITIES), generator=g).float()
    return head, tail


def _score_fn(head_table: torch.Tensor, tail_table: torch.Tensor):
    def score(batch: torch.Tensor, side: str) -> torch.Tensor:
        if side == "tail":
            return tail_table[batch[:, 0] * NUM_RELATIONS + batch[:, 1]]
        return head_table[batch[:, 1] * NUM_ENTITIES + batch[:, 2]]

    return score


class ScoreFnModel(FixedModel):
    """PyKEEN mock model whose 1:n scores come from ``score(batch, side)`` (copies: PyKEEN filters them in place)."""

    def __init__(self, *, triples_factory, score) -> None:
        super().__init__(triples_factory=triples_factory)
        self.score = score

    def score_t(self, hr_batch, tails=None, **kwargs):  # noqa: D102
        batch = torch.cat([hr_batch, torch.zeros_like(hr_batch[:, :1])], dim=1)
        return self.score(batch, "tail").clone()

    def score_h(self, rt_batch, heads=None, **kwargs):  # noqa: D102
        batch = torch.cat([torch.zeros_like(rt_batch[:, :1]), rt_batch], dim=1)
        return self.score(batch, "head").clone()


@pytest.fixture(scope="module")
def kg() -> dict[str, torch.Tensor]:
    return _random_kg()


@pytest.fixture(scope="module")
def tables() -> tuple[torch.Tensor, torch.Tensor]:
    return _score_tables()


def _pykeen_filtered(
    train, valid, test, score, num_entities=NUM_ENTITIES, num_relations=NUM_RELATIONS, batch_size=16
):
    """PyKEEN's own filtered evaluation loop (it filters by train + valid + the evaluated triples)."""
    factory = CoreTriplesFactory.create(train, num_entities=num_entities, num_relations=num_relations)
    model = ScoreFnModel(triples_factory=factory, score=score)
    evaluator = RankBasedEvaluator(filtered=True, clear_on_finalize=False)
    result = evaluator.evaluate(
        model, test, batch_size=batch_size, use_tqdm=False, additional_filter_triples=[train, valid]
    )
    return evaluator, result


def _pykeen_raw(kg, tables):
    head_table, tail_table = tables
    score = _score_fn(head_table, tail_table)
    evaluator = RankBasedEvaluator(filtered=False, clear_on_finalize=False)
    for batch in kg["test"].split(16):
        for side, column in (("head", 0), ("tail", 2)):
            scores = score(batch, side)
            true = scores.gather(1, batch[:, column : column + 1])
            evaluator.process_scores_(batch, side, scores, true_scores=true)
    return evaluator, evaluator.finalize()


def _assert_matches_pykeen(ours: LinkPredictionResult, evaluator, result) -> None:
    for side in ("head", "tail"):
        for rank_type in RANK_TYPES:
            expected = torch.as_tensor(
                [x for chunk in evaluator.ranks[side, rank_type] for x in chunk.tolist()], dtype=torch.float64
            )
            assert torch.equal(ours.ranks[side][rank_type], expected), (side, rank_type)
        expected_candidates = torch.cat([torch.as_tensor(c) for c in evaluator.num_candidates[side]]).long()
        assert torch.equal(ours.num_candidates[side], expected_candidates), side
    for rank_type in RANK_TYPES:
        metrics = ours.metrics(rank_type)
        for key in METRIC_KEYS:
            assert metrics[key] == pytest.approx(result.get_metric(f"both.{rank_type}.{PYKEEN_NAMES[key]}"), rel=1e-6)
            for side in ("head", "tail"):
                assert metrics[side][key] == pytest.approx(
                    result.get_metric(f"{side}.{rank_type}.{PYKEEN_NAMES[key]}"), rel=1e-6
                ), (rank_type, side, key)


# ------------------------------------------------------------------------------------------ vs PyKEEN
def test_kg_has_multi_answer_queries_and_ties(kg, tables):
    index = FilterIndex(kg["all"], NUM_ENTITIES, NUM_RELATIONS)
    assert index.dense_min_answers == 64 and index._head.dense_masks.shape[0] == 0
    for side in ("head", "tail"):
        rows, _ = index.answers(kg["test"], side)
        assert torch.bincount(rows, minlength=len(kg["test"])).max() >= 3
    ranks = compute_ranks(tables[1][:50], torch.zeros(50, dtype=torch.long))
    assert (ranks["pessimistic"] > ranks["optimistic"]).any()


# dense_min_answers: None keeps every key on the sparse (gather) path for this small KG; 1 puts every key on the
# dense-mask path; 4 mixes the two within a batch
@pytest.mark.parametrize("dense_min_answers", [None, 1, 4])
def test_filtered_matches_pykeen(kg, tables, dense_min_answers):
    evaluator, result = _pykeen_filtered(kg["train"], kg["valid"], kg["test"], _score_fn(*tables))
    index = FilterIndex(kg["all"], NUM_ENTITIES, NUM_RELATIONS, dense_min_answers=dense_min_answers)
    ours = evaluate_ranking(_score_fn(*tables), kg["test"], NUM_ENTITIES, filter_index=index, batch_size=16)
    assert ours.filtered
    _assert_matches_pykeen(ours, evaluator, result)


def test_dense_min_answers_4_mixes_both_filter_paths(kg):
    index = FilterIndex(kg["all"], NUM_ENTITIES, NUM_RELATIONS, dense_min_answers=4)
    assert 0 < index._head.dense_masks.shape[0] < index._head.keys.numel()


def test_comparison_fallback_matches_pykeen(kg, tables, monkeypatch):
    """The exact comparison path (GPU, flush-to-zero, NaN differences) gives the same ranks as the sign path."""
    import deltakg.kge.evaluation as evaluation

    monkeypatch.setattr(evaluation, "_exact_difference_signs", lambda: False)
    evaluator, result = _pykeen_filtered(kg["train"], kg["valid"], kg["test"], _score_fn(*tables))
    index = FilterIndex(kg["all"], NUM_ENTITIES, NUM_RELATIONS, dense_min_answers=4)
    ours = evaluate_ranking(_score_fn(*tables), kg["test"], NUM_ENTITIES, filter_index=index, batch_size=16)
    _assert_matches_pykeen(ours, evaluator, result)


def test_flush_denormal_keeps_close_scores_apart():
    # 1.5e-38 - 1.2e-38 is subnormal: flushed to 0 it would turn two distinct scores into a tie
    scores = torch.tensor([[1.5e-38, 1.2e-38, 0.0]])
    expected = {"optimistic": [2.0], "pessimistic": [2.0], "realistic": [2.0]}
    assert {k: v.tolist() for k, v in compute_ranks(scores, torch.tensor([1])).items()} == expected
    if not torch.set_flush_denormal(True):
        pytest.skip("flush-denormal mode is not supported on this CPU")
    try:
        ranks = compute_ranks(scores, torch.tensor([1]))
    finally:
        torch.set_flush_denormal(False)
    assert {k: v.tolist() for k, v in ranks.items()} == expected


def test_half_and_double_scores(kg, tables):
    index = FilterIndex(kg["all"], NUM_ENTITIES, NUM_RELATIONS, dense_min_answers=4)
    reference = evaluate_ranking(_score_fn(*tables), kg["test"], NUM_ENTITIES, filter_index=index)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        cast = tuple(t.to(dtype) for t in tables)  # small integers: exact in every dtype
        result = evaluate_ranking(_score_fn(*cast), kg["test"], NUM_ENTITIES, filter_index=index)
        assert result.to_dict() == reference.to_dict(), dtype


def test_raw_matches_pykeen(kg, tables):
    evaluator, result = _pykeen_raw(kg, tables)
    ours = evaluate_ranking(_score_fn(*tables), kg["test"], NUM_ENTITIES, batch_size=16)
    assert not ours.filtered
    _assert_matches_pykeen(ours, evaluator, result)


def _keyed_scores(num_entities: int, num_relations: int, high: int = 50):
    """Integer scores that depend only on the query (h, r) or (r, t), seeded by its key: ties are common."""

    def score(batch: torch.Tensor, side: str) -> torch.Tensor:
        keys = batch[:, 0] * num_relations + batch[:, 1] if side == "tail" else batch[:, 1] * num_entities + batch[:, 2]
        offset = 0 if side == "tail" else 10**9
        rows = [
            torch.randint(0, high, (num_entities,), generator=torch.Generator().manual_seed(offset + int(k)))
            for k in keys
        ]
        return torch.stack(rows).float()

    return score


def test_fb15k237_subset_matches_pykeen(fb15k237_kg):
    """Real FB15k-237 filter sets (hub keys such as gender take the dense-mask path) on 200 test triples."""
    kg = fb15k237_kg
    test = kg.test[:200]
    score = _keyed_scores(kg.num_entities, kg.num_relations)
    # PyKEEN filters by train + valid + the evaluated triples, so index exactly those
    index = FilterIndex(torch.cat([kg.train, kg.valid, test]), kg.num_entities, kg.num_relations)
    assert index._head.dense_masks.shape[0] > 0
    assert bool((index._lookup(test, "head")["slot"] >= 0).any())
    evaluator, result = _pykeen_filtered(kg.train, kg.valid, test, score, kg.num_entities, kg.num_relations, 100)
    ours = evaluate_ranking(score, test, kg.num_entities, filter_index=index, batch_size=64)
    _assert_matches_pykeen(ours, evaluator, result)


def test_filter_index_from_kg():
    from kg_data import load_dataset

    kg = load_dataset("nations")
    index = FilterIndex.from_kg(kg)
    assert index.num_triples == torch.unique(kg.all_triples(), dim=0).shape[0]
    assert (index.num_entities, index.num_relations) == (kg.num_entities, kg.num_relations)
    assert "FilterIndex(" in repr(index)


def test_filtering_changes_the_result(kg, tables):
    index = FilterIndex(kg["all"], NUM_ENTITIES, NUM_RELATIONS)
    raw = evaluate_ranking(_score_fn(*tables), kg["test"], NUM_ENTITIES)
    filtered = evaluate_ranking(_score_fn(*tables), kg["test"], NUM_ENTITIES, filter_index=index)
    for side in ("head", "tail"):
        for rank_type in RANK_TYPES:
            assert (filtered.ranks[side][rank_type] <= raw.ranks[side][rank_type]).all()
    assert filtered.to_dict()["mrr"] > raw.to_dict()["mrr"]


def test_evaluate_scores_equals_score_fn(kg, tables):
    score = _score_fn(*tables)
    index = FilterIndex(kg["all"], NUM_ENTITIES, NUM_RELATIONS)
    test = kg["test"]
    a = evaluate_ranking(score, test, NUM_ENTITIES, filter_index=index)
    b = evaluate_scores(
        test, head_scores=score(test, "head"), tail_scores=score(test, "tail"), filter_index=index, batch_size=5
    )
    assert a.to_dict() == b.to_dict()
    for side in ("head", "tail"):
        for rank_type in RANK_TYPES:
            assert torch.equal(a.ranks[side][rank_type], b.ranks[side][rank_type])


def test_compute_ranks_matches_pykeen_on_filtered_matrix(kg, tables):
    """compute_ranks on a matrix masked by filter_scores equals PyKEEN's Ranks on its NaN-filtered matrix."""
    index = FilterIndex(kg["all"], NUM_ENTITIES, NUM_RELATIONS)
    test = kg["test"]
    for side, column in (("head", 0), ("tail", 2)):
        scores = _score_fn(*tables)(test, side) + 1.0  # keep every score finite and above -inf
        targets = test[:, column]
        ours = compute_ranks(index.filter_scores(scores.clone(), test, side), targets)
        rows, entities = index.answers(test, side)
        nan_filtered = scores.clone()
        nan_filtered[rows, entities] = float("nan")
        expected = Ranks.from_scores(scores.gather(1, targets[:, None]), nan_filtered)
        for rank_type in RANK_TYPES:
            assert torch.equal(ours[rank_type], getattr(expected, rank_type).double()), (side, rank_type)


# ------------------------------------------------------------------------------------------ FilterIndex edges
@pytest.mark.parametrize("dense_min_answers", [None, 1])
def test_target_is_never_filtered(dense_min_answers):
    triples = torch.tensor([[0, 0, 1], [0, 0, 2], [0, 0, 3], [4, 0, 3]])
    index = FilterIndex(triples, 5, 1, dense_min_answers=dense_min_answers)
    queries = torch.tensor([[0, 0, 2]])
    # the target scores highest; if it were filtered it would lose its rank 1
    scores = torch.tensor([[0.0, 5.0, 9.0, 7.0, 1.0]])
    rows, entities = index.answers(queries, "tail")
    assert rows.tolist() == [0, 0] and sorted(entities.tolist()) == [1, 3]
    assert sorted(index.answers(queries, "tail", exclude_target=False)[1].tolist()) == [1, 2, 3]
    masked = index.filter_scores(scores.clone(), queries, "tail")
    assert masked.tolist() == [[0.0, float("-inf"), 9.0, float("-inf"), 1.0]]
    result = evaluate_ranking(lambda b, s: scores, queries, 5, filter_index=index, sides=("tail",))
    assert result.ranks["tail"]["realistic"].tolist() == [1.0]
    # the target in the middle: others above it are removed, so it moves up from 3 to 1
    low = torch.tensor([[0.0, 8.0, 2.0, 9.0, 1.0]])
    raw = evaluate_ranking(lambda b, s: low, queries, 5, sides=("tail",))
    filtered = evaluate_ranking(lambda b, s: low, queries, 5, filter_index=index, sides=("tail",))
    assert raw.ranks["tail"]["optimistic"].tolist() == [3.0]
    assert filtered.ranks["tail"]["optimistic"].tolist() == [1.0]
    assert filtered.num_candidates["tail"].tolist() == [3]


@pytest.mark.parametrize("dense_min_answers", [None, 1, 2])
def test_query_whose_only_answer_is_the_target(dense_min_answers):
    triples = torch.tensor([[0, 0, 1], [2, 1, 3], [2, 1, 4]])
    index = FilterIndex(triples, 5, 2, dense_min_answers=dense_min_answers)
    queries = torch.tensor([[0, 0, 1], [2, 1, 3]])
    rows, entities = index.answers(queries, "tail")
    assert rows.tolist() == [1] and entities.tolist() == [4]
    rows, entities = index.answers(queries, "head")
    assert rows.numel() == 0 and entities.numel() == 0
    scores = torch.tensor([[3.0, 3.0, 3.0, 3.0, 3.0], [1.0, 2.0, 2.0, 2.0, 5.0]])
    raw = evaluate_ranking(lambda b, s: scores, queries, 5, sides=("tail",))
    filtered = evaluate_ranking(lambda b, s: scores, queries, 5, filter_index=index, sides=("tail",))
    assert raw.ranks["tail"]["optimistic"].tolist() == [1.0, 2.0]
    assert raw.ranks["tail"]["pessimistic"].tolist() == [5.0, 4.0]
    assert filtered.ranks["tail"]["optimistic"].tolist() == [1.0, 1.0]
    assert filtered.ranks["tail"]["pessimistic"].tolist() == [5.0, 3.0]
    assert filtered.ranks["tail"]["realistic"].tolist() == [3.0, 2.0]


def test_unknown_queries_and_duplicates_in_the_index():
    triples = torch.tensor([[0, 0, 1], [0, 0, 1], [0, 0, 2]])
    index = FilterIndex(triples, 4, 3)
    assert index.num_triples == 2
    rows, entities = index.answers(torch.tensor([[0, 0, 3], [3, 2, 1], [0, 1, 1]]), "tail")
    assert rows.tolist() == [0, 0] and entities.tolist() == [1, 2]
    empty = FilterIndex(torch.empty(0, 3, dtype=torch.long), 4)
    assert empty.answers(torch.tensor([[0, 0, 1]]), "head")[0].numel() == 0


@pytest.mark.parametrize("dense_min_answers", [None, 3])
def test_batching_does_not_change_the_result(kg, tables, dense_min_answers):
    index = FilterIndex(kg["all"], NUM_ENTITIES, NUM_RELATIONS, dense_min_answers=dense_min_answers)
    score = _score_fn(*tables)
    reference = evaluate_ranking(score, kg["test"], NUM_ENTITIES, filter_index=index, batch_size=len(kg["test"]))
    calls: list[int] = []

    def counting(batch, side):
        calls.append(batch.shape[0])
        return score(batch, side)

    for batch_size in (1, 3, 7, None):
        result = evaluate_ranking(counting, kg["test"], NUM_ENTITIES, filter_index=index, batch_size=batch_size)
        for side in ("head", "tail"):
            for rank_type in RANK_TYPES:
                assert torch.equal(result.ranks[side][rank_type], reference.ranks[side][rank_type])
        assert result.to_dict() == reference.to_dict()
    assert max(calls) == len(kg["test"])  # default budget: the whole small test set in one batch
    assert batch_size_for_budget(40_000) == 256 * 2**20 // (40_000 * 4)
    assert batch_size_for_budget(10**12) == 1


def test_memory_budget_bounds_the_batch():
    sizes: list[int] = []
    triples = torch.randint(0, 100, (30, 3), generator=torch.Generator().manual_seed(3)) % torch.tensor([100, 1, 100])

    def score(batch, side):
        sizes.append(batch.shape[0])
        return torch.zeros(batch.shape[0], 100)

    evaluate_ranking(score, triples, 100, memory_budget=4 * 100 * 7)
    assert max(sizes) == 7 and len(sizes) == 2 * 5


def test_scores_are_not_modified(kg, tables):
    index = FilterIndex(kg["all"], NUM_ENTITIES, NUM_RELATIONS)
    head_table, tail_table = tables[0].clone(), tables[1].clone()
    test = kg["test"]
    heads, tails = _score_fn(head_table, tail_table)(test, "head"), _score_fn(head_table, tail_table)(test, "tail")
    before = heads.clone(), tails.clone()
    evaluate_scores(test, head_scores=heads, tail_scores=tails, filter_index=index)
    assert torch.equal(heads, before[0]) and torch.equal(tails, before[1])


# ------------------------------------------------------------------------------------------ API behaviour
def test_to_dict_layout_is_json(kg, tables):
    result = evaluate_ranking(_score_fn(*tables), kg["test"], NUM_ENTITIES)
    d = result.to_dict()
    assert list(d) == METRIC_KEYS + ["head", "tail"]
    for side in ("head", "tail"):
        assert list(d[side]) == METRIC_KEYS
        assert all(type(v) is float for v in d[side].values())
    assert all(type(d[k]) is float for k in METRIC_KEYS)
    assert json.loads(json.dumps(d)) == d
    assert d == result.metrics("realistic")
    both = result.all_ranks("realistic")
    assert d["mr"] == pytest.approx(both.mean().item())
    assert d["hits@10"] == pytest.approx((both <= 10).double().mean().item())
    assert "queries=142" in repr(result)


def test_hits_use_the_realistic_float_rank():
    # the target ties with one other entity at the top of 10 entities: realistic rank 1.5 is no hit@1
    scores = torch.tensor([[5.0, 5.0] + [0.0] * 8])
    result = evaluate_ranking(lambda b, s: scores, torch.tensor([[0, 0, 1]]), 10, sides=("tail",))
    assert result.ranks["tail"]["realistic"].tolist() == [1.5]
    assert result.metrics("realistic")["hits@1"] == 0.0
    assert result.metrics("optimistic")["hits@1"] == 1.0
    assert result.metrics("realistic")["mrr"] == pytest.approx(1 / 1.5)
    assert list(result.to_dict()) == METRIC_KEYS + ["tail"]


def test_nan_scores_raise():
    scores = torch.tensor([[1.0, float("nan"), 0.0], [1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="NaN"):
        compute_ranks(scores, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ranking(lambda b, s: scores, torch.tensor([[0, 0, 0], [1, 0, 1]]), 3, sides=("tail",))
    # one NaN deep inside a matrix processed in several cache-sized chunks
    big = torch.rand(100, 20_000, generator=torch.Generator().manual_seed(0))
    big[90, 12_345] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        compute_ranks(big, torch.zeros(100, dtype=torch.long))
    # +inf and -inf in one row, or a target tied at +inf (inf - inf is NaN): not NaN scores, ranked exactly
    infs = torch.tensor([[float("inf"), float("-inf"), 0.0], [float("inf"), float("inf"), 1.0]])
    ranks = compute_ranks(infs, torch.tensor([2, 1]))
    assert ranks["optimistic"].tolist() == [2.0, 1.0] and ranks["pessimistic"].tolist() == [2.0, 2.0]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="side"):
        evaluate_ranking(lambda b, s: torch.zeros(1, 3), torch.tensor([[0, 0, 1]]), 3, sides=("relation",))
    with pytest.raises(ValueError, match="shape"):
        evaluate_ranking(lambda b, s: torch.zeros(1, 4), torch.tensor([[0, 0, 1]]), 3)
    with pytest.raises(ValueError, match="entity ids"):
        evaluate_ranking(lambda b, s: torch.zeros(1, 3), torch.tensor([[0, 0, 3]]), 3)
    with pytest.raises(ValueError, match="no triples"):
        evaluate_ranking(lambda b, s: torch.zeros(0, 3), torch.empty(0, 3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="targets"):
        compute_ranks(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="rank_type"):
        evaluate_ranking(lambda b, s: torch.zeros(1, 3), torch.tensor([[0, 0, 1]]), 3).metrics("average")
    with pytest.raises(ValueError, match="head_scores"):
        evaluate_scores(torch.tensor([[0, 0, 1]]))
    other = FilterIndex(torch.tensor([[0, 0, 1]]), 4)
    with pytest.raises(ValueError, match="filter index"):
        evaluate_ranking(lambda b, s: torch.zeros(1, 3), torch.tensor([[0, 0, 1]]), 3, filter_index=other)


def test_progress_bar_runs(kg, tables, capsys):
    result = evaluate_ranking(_score_fn(*tables), kg["test"], NUM_ENTITIES, batch_size=20, progress=True)
    assert result.to_dict()["mr"] >= 1.0


# ------------------------------------------------------------------------------------------ property
@st.composite
def _problems(draw):
    num_entities = draw(st.integers(1, 12))
    num_relations = draw(st.integers(1, 3))
    entity = st.integers(0, num_entities - 1)
    # hub entities make queries with many known answers (and dense masks) common
    hub_or_entity = st.integers(0, min(1, num_entities - 1)) | entity
    relation = st.integers(0, num_relations - 1)
    triple = st.tuples(hub_or_entity, relation, hub_or_entity)
    known = draw(st.lists(triple, min_size=0, max_size=60))
    queries = draw(st.lists(triple, min_size=1, max_size=8))
    values = st.integers(-2, 2).map(float) | st.sampled_from([float("inf"), float("-inf")])
    row = st.lists(values, min_size=num_entities, max_size=num_entities)
    scores = {side: draw(st.lists(row, min_size=len(queries), max_size=len(queries))) for side in ("head", "tail")}
    batch_size = draw(st.integers(1, 9))
    dense_min_answers = draw(st.sampled_from([None, 1, 2, 3]))
    return num_entities, num_relations, known, queries, scores, batch_size, dense_min_answers


@PROPERTY
@given(_problems())
def test_property_filtered_ranks_equal_pykeen_nan_filter(problem):
    num_entities, num_relations, known, queries, scores, batch_size, dense_min_answers = problem
    queries_t = torch.tensor(queries, dtype=torch.long)
    # PyKEEN's evaluate always adds the evaluated triples to the filter set
    filter_triples = torch.tensor(known + queries, dtype=torch.long)
    index = FilterIndex(filter_triples, num_entities, num_relations, dense_min_answers=dense_min_answers)
    tables = {side: torch.tensor(v, dtype=torch.float32) for side, v in scores.items()}
    ours = evaluate_scores(
        queries_t, head_scores=tables["head"], tail_scores=tables["tail"], filter_index=index, batch_size=batch_size
    )
    known_set = set(known) | set(queries)
    for side, column in (("head", 0), ("tail", 2)):
        reference = tables[side].clone()
        for i, (h, r, t) in enumerate(queries):
            for e in range(num_entities):
                candidate = (e, r, t) if side == "head" else (h, r, e)
                if candidate in known_set and e != queries[i][column]:
                    reference[i, e] = float("nan")
        targets = queries_t[:, column : column + 1]
        expected = Ranks.from_scores(tables[side].gather(1, targets), reference)
        for rank_type in RANK_TYPES:
            assert torch.equal(ours.ranks[side][rank_type], getattr(expected, rank_type).double()), (side, rank_type)
        finite_rows = torch.isfinite(tables[side]).all(dim=1)
        assert torch.equal(ours.num_candidates[side][finite_rows], expected.number_of_options[finite_rows])
        raw = compute_ranks(tables[side], targets[:, 0])
        raw_expected = Ranks.from_scores(tables[side].gather(1, targets), tables[side])
        for rank_type in RANK_TYPES:
            assert torch.equal(raw[rank_type], getattr(raw_expected, rank_type).double())
