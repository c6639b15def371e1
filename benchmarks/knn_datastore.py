"""k-NN predict_proba speed: knn.Datastore (torch exact, faiss flat, IVF, HNSW) against scikit-learn's brute force.

Keys (n x d, float32) with labels in [0, classes) and queries from the same distribution: ``--data gaussian``
draws isotropic Gaussian keys (no structure: every key is about as far as any other, the worst case for an
approximate index), ``--data clusters`` draws keys around ``--clusters`` Gaussian centres (the kind of structure
encoder features have; noise std ``--noise`` per coordinate around centres of std 1). Every side computes the k-NN
class distribution of every query, on ``--threads`` threads (torch.set_num_threads, faiss.omp_set_num_threads,
threadpoolctl for scikit-learn's OpenMP/BLAS). The machine's fp32 matmul GFLOP/s is measured in the same run;
``fraction_of_matmul`` is the exact search's distance products (2 q n d flops) per second over it.

The approximate indexes' search knob (IVF ``nprobe``, HNSW ``ef_search``) is chosen on a separate draw of dev
queries: the smallest value on a doubling grid whose recall@k against exact search reaches ``--target-recall``
(or the largest tried); speed and recall are then reported on the benchmark's own queries. ``--nprobe`` /
``--ef-search`` fix the knob instead. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import numpy as np
import torch


def _timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


def _matmul_gflops(d: int) -> float:
    a, b = torch.randn(2048, d), torch.randn(d, 16384)
    median, _, _ = _timed(lambda: a @ b, 5)
    return 2 * 2048 * d * 16384 / median / 1e9


SIDES = ("torch_exact", "faiss_flat", "faiss_ivf", "faiss_hnsw")  # exact sides first: they give the reference
EXACT = ("torch_exact", "faiss_flat")
KNOBS = {"faiss_ivf": "nprobe", "faiss_hnsw": "ef_search"}


def _sampler(args, rng):
    """A function n -> (float32 keys, int labels) drawing from the ``--data`` distribution."""
    if args.data == "gaussian":
        return lambda n: (rng.standard_normal((n, args.dim), dtype=np.float32), rng.integers(0, args.classes, n))
    centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    centre_labels = rng.integers(0, args.classes, args.clusters)

    def draw(n):
        which = rng.integers(0, args.clusters, n)
        noise = rng.standard_normal((n, args.dim), dtype=np.float32) * np.float32(args.noise)
        return centres[which] + noise, centre_labels[which]
    return draw


def _recall(ids: torch.Tensor, exact: torch.Tensor) -> float:
    return round((ids[:, :, None] == exact[:, None, :]).any(2).float().mean().item(), 4)


def _choose_knob(store, knob: str, dev: torch.Tensor, exact_dev: torch.Tensor, args, nlist: int) -> list[dict]:
    """Doubling grid of the knob on dev queries; leaves the store at the smallest value reaching the target."""
    limit = nlist if knob == "nprobe" else 4096
    value, curve = (1 if knob == "nprobe" else args.k), []
    while True:
        setattr(store.index, knob, value)
        start = time.perf_counter()
        ids = store.search(dev, args.k)[1]
        curve.append({knob: value, "recall_at_k": _recall(ids, exact_dev), "s": round(time.perf_counter() - start, 4)})
        if curve[-1]["recall_at_k"] >= args.target_recall or value >= limit:
            return curve
        value = min(2 * value, limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default: 4 sqrt(keys))")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF cells probed (default: nlist / 32)")
    parser.add_argument("--ef-search", type=int, default=None, help="HNSW candidate list (default: chosen on dev)")
    parser.add_argument("--hnsw-m", type=int, default=32, help="HNSW neighbours per node")
    parser.add_argument("--ef-construction", type=int, default=80, help="HNSW candidate list while building")
    parser.add_argument("--target-recall", type=float, default=0.95, help="recall@k the dev-chosen knob must reach")
    parser.add_argument("--dev-queries", type=int, default=1000, help="queries the knob is chosen on")
    parser.add_argument("--data", choices=("gaussian", "clusters"), default="gaussian")
    parser.add_argument("--clusters", type=int, default=1000, help="--data clusters: number of centres")
    parser.add_argument("--noise", type=float, default=1.0, help="--data clusters: std around a centre")
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of " + ",".join(SIDES))
    parser.add_argument("--skip-sklearn", action="store_true", help="for the scaling runs (1,000,000 keys)")
    args = parser.parse_args()
    sides_wanted = [side for side in args.sides.split(",") if side]
    unknown = sorted(set(sides_wanted) - set(SIDES))
    if unknown or not sides_wanted:
        parser.error(f"--sides: unknown side(s) {', '.join(unknown) or '(none given)'}; expected {', '.join(SIDES)}")
    if not set(sides_wanted) & set(EXACT):
        parser.error(f"--sides: name an exact side ({' or '.join(EXACT)}): recall is measured against it")

    import faiss
    from sklearn.neighbors import KNeighborsClassifier
    from threadpoolctl import threadpool_limits

    from knn import Datastore, IndexConfig

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    draw = _sampler(args, rng)
    keys, labels = draw(args.keys)
    queries, _ = draw(args.queries)
    dev_queries, _ = draw(args.dev_queries)
    q_t, dev_t = torch.from_numpy(queries), torch.from_numpy(dev_queries)
    result = {"benchmark": "knn_datastore", "keys": args.keys, "dim": args.dim, "classes": args.classes,
              "queries": args.queries, "k": args.k, "threads": args.threads, "repeats": args.repeats,
              "data": args.data}
    if args.data == "clusters":
        result.update(clusters=args.clusters, noise=args.noise)
    gflops = _matmul_gflops(args.dim)
    result["matmul_gflops"] = round(gflops, 1)

    with threadpool_limits(args.threads):
        if not args.skip_sklearn:
            sk = KNeighborsClassifier(args.k, algorithm="brute").fit(keys, labels)
            median, runs, _ = _timed(lambda: sk.predict_proba(queries), args.repeats)
            result["sklearn_s"], result["sklearn_runs_s"] = round(median, 4), [round(t, 4) for t in runs]
        nlist = args.nlist or max(1, int(4 * args.keys ** 0.5))
        configs = {"torch_exact": ("torch", IndexConfig()), "faiss_flat": ("faiss", IndexConfig()),
                   "faiss_ivf": ("faiss", IndexConfig("ivf", nlist=nlist, nprobe=args.nprobe or 1)),
                   "faiss_hnsw": ("faiss", IndexConfig("hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                                                       ef_search=args.ef_search or args.k))}
        exact_ids = exact_dev = None
        for name in SIDES:
            if name not in sides_wanted:
                continue
            backend, index = configs[name]
            store = Datastore.build(torch.from_numpy(keys), torch.from_numpy(labels), args.classes, backend=backend,
                                    index=index)
            start = time.perf_counter()
            store.rebuild()
            build_s = time.perf_counter() - start
            entry = {"build_s": round(build_s, 3)}
            if name in KNOBS:
                knob, fixed = KNOBS[name], getattr(args, KNOBS[name])
                if fixed is None:
                    entry["dev_curve"] = _choose_knob(store, knob, dev_t, exact_dev, args, nlist)
                    entry["chosen_on"] = f"{args.dev_queries} dev queries, target recall@{args.k} {args.target_recall}"
                else:
                    setattr(store.index, knob, fixed)
                entry[knob] = getattr(store.index, knob)
            median, runs, _ = _timed(lambda: store.knn_probs(q_t, args.k, temperature=1.0), args.repeats)
            entry.update(s=round(median, 4), runs_s=[round(t, 4) for t in runs])
            _, ids = store.search(q_t, args.k)
            if exact_ids is None:
                exact_ids, exact_dev = ids, store.search(dev_t, args.k)[1]
                entry["fraction_of_matmul"] = round(2 * args.queries * args.keys * args.dim / median / 1e9 / gflops, 3)
            else:
                entry["recall_at_k"] = _recall(ids, exact_ids)
            if "sklearn_s" in result:
                entry["speedup"] = round(result["sklearn_s"] / median, 2)
            if name == "faiss_ivf":
                entry["nlist"] = index.nlist
            if name == "faiss_hnsw":
                entry.update(hnsw_m=index.hnsw_m, ef_construction=index.ef_construction)
            result[name] = entry
            del store
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["torch"] = torch.__version__
    result["faiss"] = faiss.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
