"""k-NN predict_proba speed: knn.Datastore (torch exact, faiss flat, faiss IVF) against scikit-learn's brute force.

Random Gaussian keys (n x d, float32) with labels in [0, classes), random queries; every side computes the
k-NN class distribution of every query. Both sides run on ``--threads`` threads (torch.set_num_threads,
faiss.omp_set_num_threads, threadpoolctl for scikit-learn's OpenMP/BLAS). The machine's fp32 matmul GFLOP/s is
measured in the same run; ``fraction_of_matmul`` is the exact search's distance products (2 q n d flops) per
second over it. Recall@k of the IVF index is measured against the exact neighbours. Prints one JSON line.
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
    parser.add_argument("--skip-sklearn", action="store_true", help="for the scaling runs (1,000,000 keys)")
    args = parser.parse_args()

    import faiss
    from sklearn.neighbors import KNeighborsClassifier
    from threadpoolctl import threadpool_limits

    from knn import Datastore, IndexConfig

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((args.keys, args.dim), dtype=np.float32)
    labels = rng.integers(0, args.classes, args.keys)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    q_t = torch.from_numpy(queries)
    result = {"benchmark": "knn_datastore", "keys": args.keys, "dim": args.dim, "classes": args.classes,
              "queries": args.queries, "k": args.k, "threads": args.threads, "repeats": args.repeats}
    gflops = _matmul_gflops(args.dim)
    result["matmul_gflops"] = round(gflops, 1)

    with threadpool_limits(args.threads):
        if not args.skip_sklearn:
            sk = KNeighborsClassifier(args.k, algorithm="brute").fit(keys, labels)
            median, runs, _ = _timed(lambda: sk.predict_proba(queries), args.repeats)
            result["sklearn_s"], result["sklearn_runs_s"] = round(median, 4), [round(t, 4) for t in runs]
        nlist = args.nlist or max(1, int(4 * args.keys ** 0.5))
        sides = {"torch_exact": ("torch", IndexConfig()), "faiss_flat": ("faiss", IndexConfig()),
                 "faiss_ivf": ("faiss", IndexConfig("ivf", nlist=nlist, nprobe=args.nprobe or max(1, nlist // 32)))}
        exact_ids = None
        for name, (backend, index) in sides.items():
            store = Datastore.build(torch.from_numpy(keys), torch.from_numpy(labels), args.classes, backend=backend,
                                    index=index)
            start = time.perf_counter()
            store.rebuild()
            build_s = time.perf_counter() - start
            median, runs, probs = _timed(lambda: store.knn_probs(q_t, args.k, temperature=1.0), args.repeats)
            entry = {"s": round(median, 4), "runs_s": [round(t, 4) for t in runs], "build_s": round(build_s, 3)}
            _, ids = store.search(q_t, args.k)
            if exact_ids is None:
                exact_ids = ids
                entry["fraction_of_matmul"] = round(2 * args.queries * args.keys * args.dim / median / 1e9 / gflops, 3)
            else:
                entry["recall_at_k"] = round((ids[:, :, None] == exact_ids[:, None, :]).any(2).float().mean().item(), 4)
            if "sklearn_s" in result:
                entry["speedup"] = round(result["sklearn_s"] / median, 2)
            if name == "faiss_ivf":
                entry.update(nlist=index.nlist, nprobe=index.nprobe)
            result[name] = entry
            del store
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["torch"] = torch.__version__
    result["faiss"] = faiss.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
