"""The k-NN datastore: exact search against brute force, approximate indexes, ids, exclusion, save/load, errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from kg_data.errors import KGDataError
from knn import Datastore, IndexConfig, knn_distribution
from knn.search import TorchExactSearch

BACKENDS = ("torch", "faiss")
METRICS = ("l2", "cosine")


def _data(n=600, d=12, q=40, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g), torch.randn(q, d, generator=g)


def _brute(keys, queries, metric, k):
    if metric == "l2":
        full = ((queries[:, None, :].double() - keys[None, :, :].double()) ** 2).sum(-1)
    else:
        full = 1 - F.normalize(queries.double()) @ F.normalize(keys.double()).T
    return full.topk(k, dim=1, largest=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
def test_exact_search_matches_brute_force(backend, metric, monkeypatch):
    """Distances and neighbours equal a float64 brute force, also across several query and key blocks."""
    monkeypatch.setattr(TorchExactSearch, "query_block", 7)
    monkeypatch.setattr(TorchExactSearch, "key_block", 100)
    keys, labels, queries = _data()
    store = Datastore.build(keys, labels, 4, metric=metric, backend=backend)
    dist, ids = store.search(queries, 10)
    ref_d, ref_i = _brute(keys, queries, metric, 10)
    assert dist.shape == ids.shape == (40, 10)
    assert torch.equal(ids, ref_i)
    assert torch.allclose(dist.double(), ref_d, atol=1e-4)
    assert (dist[:, 1:] >= dist[:, :-1]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_cosine_normalises_keys_and_queries_alike(backend):
    """Scaling keys or queries changes nothing under cosine; a query equal to a key (scaled) is at distance 0."""
    keys, labels, queries = _data()
    scale = torch.rand(keys.shape[0], 1, generator=torch.Generator().manual_seed(3)) * 10 + 0.1
    plain = Datastore.build(keys, labels, 4, metric="cosine", backend=backend)
    scaled = Datastore.build(keys * scale, labels, 4, metric="cosine", backend=backend)
    d1, i1 = plain.search(queries, 5)
    d2, i2 = scaled.search(queries * 7.0, 5)
    assert torch.equal(i1, i2) and torch.allclose(d1, d2, atol=1e-5)
    d, i = plain.search(keys[:5] * 3.0, 1)
    assert torch.equal(i[:, 0], torch.arange(5)) and torch.allclose(d[:, 0], torch.zeros(5), atol=1e-5)
    assert torch.allclose(plain.keys.norm(dim=1), torch.ones(len(plain)), atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leave_one_out_excludes_the_query_itself(backend):
    """Searching the keys themselves with exclude=own id returns the exact neighbours among the others."""
    keys, labels, _ = _data(n=300)
    store = Datastore.build(keys, labels, 4, backend=backend)
    dist, ids = store.search(keys, 5, exclude=torch.arange(300))
    assert not (ids == torch.arange(300)[:, None]).any()
    full = torch.cdist(keys.double(), keys.double()).pow(2)
    full.fill_diagonal_(float("inf"))
    ref_d, ref_i = full.topk(5, dim=1, largest=False)
    assert torch.equal(ids, ref_i) and torch.allclose(dist.double(), ref_d, atol=1e-4)
    # without exclusion each key finds itself first
    assert torch.equal(store.search(keys, 1)[1][:, 0], torch.arange(300))
    # several ids per query, padded with -1
    exclude = torch.stack([torch.arange(300), ref_i[:, 0], torch.full((300,), -1)], dim=1)
    _, ids2 = store.search(keys, 4, exclude=exclude)
    assert torch.equal(ids2, ref_i[:, 1:5])
    # the largest k the exclusion allows works, one more is refused
    assert store.search(keys[:3], 299, exclude=torch.arange(3))[1].shape == (3, 299)
    with pytest.raises(KGDataError, match="k=300 is larger than the store .300 entries, 1 excluded"):
        store.search(keys[:3], 300, exclude=torch.arange(3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_and_remove_keep_stable_ids(backend):
    """Ids from add() survive removals; removed ids are never returned; search equals a fresh store's."""
    keys, labels, queries = _data()
    store = Datastore(12, 4, backend=backend)
    first = store.add(keys[:400], labels[:400])
    store.search(queries, 3)  # build the index, so that later changes go through its incremental path
    second = store.add(keys[400:], labels[400:])
    assert torch.equal(first, torch.arange(400)) and torch.equal(second, torch.arange(400, 600))
    gone = torch.arange(0, 600, 3)
    store.remove(gone)
    assert len(store) == 400
    dist, ids = store.search(queries, 8)
    assert not torch.isin(ids, gone).any()
    kept = torch.ones(600, dtype=torch.bool)
    kept[gone] = False
    ref_d, ref_pos = _brute(keys[kept], queries, "l2", 8)
    assert torch.equal(ids, torch.arange(600)[kept][ref_pos])
    assert torch.equal(store.labels_of(ids), labels[ids])
    # a new entry gets a fresh id, never a removed one
    assert store.add(keys[:1], labels[:1]).tolist() == [600]
    with pytest.raises(KGDataError, match="id 0 is not in the store"):
        store.remove([0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
def test_save_load_round_trip(tmp_path, backend, metric):
    """Saved and loaded (no pickle: safetensors + json), a store answers identically and keeps its ids."""
    keys, labels, queries = _data()
    store = Datastore.build(keys, labels, 5, metric=metric, backend=backend)
    store.remove([3, 10])
    store.save(tmp_path / "ds")
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["datastore.json", "datastore.safetensors"]
    loaded = Datastore.load(tmp_path / "ds")
    assert (loaded.n_classes, loaded.metric, loaded.backend, len(loaded)) == (5, metric, backend, 598)
    d1, i1 = store.search(queries, 6)
    d2, i2 = loaded.search(queries, 6)
    assert torch.equal(i1, i2) and torch.allclose(d1, d2)
    assert loaded.add(keys[:1], labels[:1]).tolist() == [600]
    other = "faiss" if backend == "torch" else "torch"
    assert torch.equal(Datastore.load(tmp_path / "ds", backend=other).search(queries, 6)[1], i1)


def test_load_errors_name_the_file(tmp_path):
    keys, labels, _ = _data(n=20)
    Datastore.build(keys, labels, 4).save(tmp_path)
    settings = json.loads((tmp_path / "datastore.json").read_text())
    (tmp_path / "datastore.json").write_text(json.dumps({**settings, "format": 9}))
    with pytest.raises(KGDataError, match=r"datastore\.json: field 'format': unknown format 9"):
        Datastore.load(tmp_path)
    (tmp_path / "datastore.json").write_text("{")
    with pytest.raises(KGDataError, match=r"datastore\.json:1: not valid JSON"):
        Datastore.load(tmp_path)
    with pytest.raises(KGDataError, match="datastore file not found"):
        Datastore.load(tmp_path / "absent")


@pytest.mark.parametrize("kind,options", [("ivf", {"nlist": 16, "nprobe": 16}), ("hnsw", {"hnsw_m": 16})])
@pytest.mark.parametrize("metric", METRICS)
def test_approximate_indexes_recall(kind, options, metric):
    """IVF probing every cell is exact; HNSW on a small store finds nearly all true neighbours; both delete."""
    keys, labels, queries = _data(n=2000, d=16)
    store = Datastore.build(keys, labels, 4, metric=metric, backend="faiss", index=IndexConfig(kind, **options))
    _, ids = store.search(queries, 10)
    _, ref = _brute(keys, queries, metric, 10)
    recall = (ids[:, :, None] == ref[:, None, :]).any(dim=2).float().mean().item()
    assert recall >= (1.0 if kind == "ivf" else 0.95)
    store.remove(ref[:, 0].unique())
    _, ids = store.search(queries, 10)
    assert not torch.isin(ids, ref[:, 0]).any()


def test_ivf_needs_enough_keys_to_train():
    keys, labels, queries = _data(n=50)
    store = Datastore.build(keys, labels, 4, backend="faiss", index={"kind": "ivf", "nlist": 64})
    with pytest.raises(KGDataError, match="index.nlist.*needs at least that many keys"):
        store.search(queries, 3)


def test_knn_probs_is_the_weighted_label_distribution():
    keys, labels, queries = _data()
    store = Datastore.build(keys, labels, 4)
    probs = store.knn_probs(queries, 16, temperature=10.0)
    dist, ids = store.search(queries, 16)
    assert torch.allclose(probs, knn_distribution(dist, labels[ids], 4, 10.0))
    assert torch.allclose(probs.sum(1), torch.ones(40))


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call,field,message", [
    (lambda s, k, y, q: s.add(k[:, :5], y), "keys", "expected 12 columns"),
    (lambda s, k, y, q: s.search(q[:, :5], 3), "queries", "expected 12 columns"),
    (lambda s, k, y, q: s.add(k.index_fill(0, torch.tensor([4]), float("nan")), y), "keys", "row 4 holds NaN"),
    (lambda s, k, y, q: s.search(q.index_fill(0, torch.tensor([2]), float("inf")), 3), "queries",
     "row 2 holds NaN or inf"),
    (lambda s, k, y, q: s.search(q, 601), "k", "k=601 is larger than the store .600 entries"),
    (lambda s, k, y, q: s.search(q, 0), "k", "expected an integer >= 1"),
    (lambda s, k, y, q: s.add(k[:2], torch.tensor([0, 4])), "labels", r"labels must lie in \[0, 4\), got 4"),
    (lambda s, k, y, q: s.add(k[:2], torch.tensor([-1, 0])), "labels", r"labels must lie in \[0, 4\), got -1"),
    (lambda s, k, y, q: s.add(k[:2], torch.tensor([0.5, 1.0])), "labels", "expected integer labels"),
    (lambda s, k, y, q: s.add(k[:2], y[:3]), "labels", "expected one label per key"),
    (lambda s, k, y, q: s.search(q, 3, exclude=torch.arange(5)), "exclude", "expected ids of shape"),
    (lambda s, k, y, q: s.search(q, 3, exclude=torch.full((40,), 999)), "exclude", "id 999 is not in the store"),
    (lambda s, k, y, q: s.remove([700]), "ids", "id 700 is not in the store"),
    (lambda s, k, y, q: s.add(k[0], y[:1]), "keys", "expected a 2-d"),
])
def test_bad_input_gets_one_clear_error(call, field, message):
    keys, labels, queries = _data()
    store = Datastore.build(keys, labels, 4)
    with pytest.raises(KGDataError, match=message) as info:
        call(store, keys, labels, queries)
    assert info.value.field == field and str(info.value).startswith(f"{field}: ")
    assert len(store) == 600  # a refused add leaves the store as it was


@pytest.mark.parametrize("kwargs,field", [
    ({"metric": "dot"}, "metric"), ({"backend": "annoy"}, "backend"), ({"index": {"kind": "pq"}}, "index.kind"),
    ({"index": {"kind": "ivf", "nprobe": 0}}, "index.nprobe"), ({"backend": "torch", "index": {"kind": "hnsw"}},
                                                                "index.kind"),
])
def test_bad_settings_are_refused(kwargs, field):
    with pytest.raises(KGDataError) as info:
        Datastore(8, 3, **kwargs)
    assert info.value.field == field


def test_cosine_refuses_a_zero_vector():
    store = Datastore(3, 2, metric="cosine")
    with pytest.raises(KGDataError, match="keys: a zero vector"):
        store.add(torch.zeros(1, 3), [0])


def test_benchmark_smoke():
    """The speed benchmark runs at tiny sizes and reports every side, with recall of the approximate index."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "knn_datastore.py"
    result = subprocess.run([sys.executable, str(script), "--keys", "2000", "--queries", "100", "--dim", "32",
                             "--repeats", "1", "--threads", "1", "--nlist", "16", "--nprobe", "16"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.splitlines()[-1])
    assert payload["benchmark"] == "knn_datastore" and payload["matmul_gflops"] > 0
    assert payload["faiss_flat"]["recall_at_k"] == 1.0 and payload["faiss_ivf"]["recall_at_k"] == 1.0
    assert all(payload[side]["speedup"] > 0 for side in ("torch_exact", "faiss_flat", "faiss_ivf", "faiss_hnsw"))
    assert payload["faiss_ivf"]["nprobe"] == 16 and "dev_curve" not in payload["faiss_ivf"]  # fixed, not chosen

    # clustered keys, the knobs chosen on dev queries: the smallest grid value reaching the target recall
    result = subprocess.run([sys.executable, str(script), "--keys", "2000", "--queries", "100", "--dim", "32",
                             "--repeats", "1", "--threads", "1", "--nlist", "16", "--data", "clusters",
                             "--clusters", "50", "--dev-queries", "100", "--sides", "torch_exact,faiss_ivf,faiss_hnsw",
                             "--skip-sklearn"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.splitlines()[-1])
    assert payload["data"] == "clusters" and "faiss_flat" not in payload and "sklearn_s" not in payload
    for side, knob in (("faiss_ivf", "nprobe"), ("faiss_hnsw", "ef_search")):
        curve = payload[side]["dev_curve"]
        assert [p[knob] for p in curve] == sorted(p[knob] for p in curve) and curve[-1][knob] == payload[side][knob]
        assert all(p["recall_at_k"] < 0.95 for p in curve[:-1])
        assert curve[-1]["recall_at_k"] >= 0.95 or payload[side][knob] == (16 if knob == "nprobe" else 4096)
        assert 0 < payload[side]["recall_at_k"] <= 1

    bad = subprocess.run([sys.executable, str(script), "--sides", "faiss_flat,annoy"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "--sides: unknown side(s) annoy" in bad.stderr and "Traceback" not in bad.stderr
    no_exact = subprocess.run([sys.executable, str(script), "--sides", "faiss_ivf"], capture_output=True, text=True,
                              timeout=60, check=False)
    assert no_exact.returncode == 2 and "name an exact side" in no_exact.stderr
