"""Benchmark: filtered rank-based evaluation, deltakg vs PyKEEN's RankBasedEvaluator, on FB15k-237's test set.

Both sides rank the same fixed random score matrices (seeded, one per side, 20,466 x 14,541 float32, held once) for
all 40,932 queries (head and tail of every test triple), filtered by train + valid + test.

- ours: ``FilterIndex`` build + ``evaluate_scores`` (ranks of every query) + ``to_dict()`` metrics; the median of
  ``--repeats`` runs (the machine may be shared: a run that overlaps other work is slower, for both sides).
- PyKEEN: the body of its ``Evaluator.evaluate`` loop: ``prepare_filter_triples``, then per batch and target
  ``_evaluate_batch`` (``create_sparse_positive_filter_`` with the shared relation filter, NaN filtering,
  ``RankBasedEvaluator.process_scores_``), then ``finalize()``. Its mock model hands out a fresh copy of the score
  rows (PyKEEN filters them in place); the copy time is measured and subtracted, so PyKEEN is not charged for it.
  PyKEEN's batch size is the fastest of ``--pykeen-batch-sizes`` on a probe subset.

With ``--pykeen-queries N`` PyKEEN is timed on the first N test triples' queries only and its time extrapolated
linearly (its cost is linear in the number of queries); the JSON then says so. The per-query ranks of both are
checked to be identical on the queries PyKEEN ranked.

Run from the repository root:  python benchmarks/eval_ranking.py [--data-dir DIR]
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYSTOW_HOME", tempfile.mkdtemp(prefix="deltakg-bench-pystow-"))

import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "kg"


def _data_dir(arg: str | None) -> Path | None:
    for candidate in (arg, os.environ.get("DELTAKG_DATA"), DEFAULT_DATA_DIR):
        if candidate:
            path = Path(candidate)
            return path if path.exists() else None
    return None


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _score_matrix(rows: int, cols: int, seed: int, chunk: int = 2048) -> torch.Tensor:
    """Seeded uniform scores, generated in row chunks straight into one preallocated matrix."""
    out = torch.empty(rows, cols)
    g = torch.Generator().manual_seed(seed)
    for i in range(0, rows, chunk):
        torch.rand(out[i : i + chunk].shape, generator=g, out=out[i : i + chunk])
    return out


class _MatrixModel:
    """The slice of PyKEEN's Model interface that ``_evaluate_batch`` uses: ``predict`` returns score rows."""

    def __init__(self, scores: dict[str, torch.Tensor]) -> None:
        self.scores = scores
        self.start = 0
        self.copy_s = 0.0

    def predict(self, hrt_batch: torch.Tensor, target: str, **_kwargs) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.scores[target][self.start : self.start + hrt_batch.shape[0]].clone()
        self.copy_s += time.perf_counter() - t0
        return out


def _run_pykeen(kg, scores: dict[str, torch.Tensor], num_triples: int, batch_size: int):
    from pykeen.evaluation import RankBasedEvaluator
    from pykeen.evaluation.evaluator import _evaluate_batch, prepare_filter_triples

    test = kg.test[:num_triples]
    model = _MatrixModel(scores)
    evaluator = RankBasedEvaluator(filtered=True, clear_on_finalize=False)
    t0 = time.perf_counter()
    # the rest of the test set stays in the filter when only a prefix is ranked, as in ours
    extra = [kg.train, kg.valid, kg.test[num_triples:]]
    all_pos = prepare_filter_triples(mapped_triples=test, additional_filter_triples=extra)
    evaluator.clear()
    for start in range(0, test.shape[0], batch_size):
        batch = test[start : start + batch_size]
        model.start = start
        relation_filter = None
        for target in ("head", "tail"):
            relation_filter = _evaluate_batch(
                batch=batch,
                model=model,
                target=target,
                evaluator=evaluator,
                slice_size=None,
                all_pos_triples=all_pos,
                relation_filter=relation_filter,
                restrict_entities_to=None,
                mode=None,
            )
    result = evaluator.finalize()
    elapsed = time.perf_counter() - t0 - model.copy_s
    ranks = {
        side: torch.cat([torch.as_tensor(x) for x in evaluator.ranks[side, "realistic"]]).double()
        for side in ("head", "tail")
    }
    return elapsed, model.copy_s, result.get_metric("both.realistic.inverse_harmonic_mean_rank"), ranks


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", default=None, help="folder holding FB15k237/ (default: $DELTAKG_DATA, else ../shared/data/kg)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None, help="ours; default: from the 256 MB memory budget")
    parser.add_argument("--pykeen-queries", type=int, default=None, help="time PyKEEN on this many queries only")
    parser.add_argument("--pykeen-batch-sizes", default="32,128,512", help="PyKEEN batch sizes to probe")
    parser.add_argument("--probe-triples", type=int, default=1024, help="test triples per PyKEEN batch-size probe")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours (the median is reported)")
    args = parser.parse_args(argv)

    data_dir = _data_dir(args.data_dir)
    if data_dir is None:
        print("eval_ranking: FB15k-237 data directory not found (pass --data-dir or set DELTAKG_DATA); skipped")
        return 0
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")

    sys.path.insert(0, str(REPO_ROOT))
    from kg_data import load_dataset

    from deltakg.kge.evaluation import FilterIndex, batch_size_for_budget, evaluate_scores

    load_start = _loadavg()
    kg = load_dataset("fb15k237", data_dir)
    test = kg.test
    n, num_entities = test.shape[0], kg.num_entities
    scores = {
        "head": _score_matrix(n, num_entities, args.seed),
        "tail": _score_matrix(n, num_entities, args.seed + 1),
    }

    with torch.inference_mode():
        # warm-up on a small slice (first-call allocator and kernel dispatch costs)
        warm = test[:64]
        evaluate_scores(warm, head_scores=scores["head"][:64], tail_scores=scores["tail"][:64])

        ours_times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            index = FilterIndex(kg.all_triples(), num_entities, kg.num_relations)
            result = evaluate_scores(
                test,
                head_scores=scores["head"],
                tail_scores=scores["tail"],
                filter_index=index,
                batch_size=args.batch_size,
            )
            metrics = result.to_dict()
            ours_times.append(time.perf_counter() - t0)
        ours_s = statistics.median(ours_times)

        probe = min(args.probe_triples, n)
        probes = {}
        for bs in (int(x) for x in args.pykeen_batch_sizes.split(",")):
            probes[bs] = _run_pykeen(kg, scores, probe, bs)[0]
        pykeen_bs = min(probes, key=probes.get)

        timed = n if args.pykeen_queries is None else max(1, min(n, args.pykeen_queries // 2))
        pykeen_elapsed, copy_s, mrr_pykeen, pykeen_ranks = _run_pykeen(kg, scores, timed, pykeen_bs)

    pykeen_s = pykeen_elapsed * n / timed
    for side in ("head", "tail"):
        if not torch.equal(result.ranks[side]["realistic"][:timed], pykeen_ranks[side]):
            raise SystemExit(f"rank mismatch with PyKEEN on {side} queries")
    ours_subset = torch.cat([result.ranks[s]["realistic"][:timed] for s in ("head", "tail")])
    mrr_ours_subset = ours_subset.reciprocal().mean().item()
    # PyKEEN averages float32 realistic ranks, so the two MRRs agree to float32 precision only
    if abs(mrr_ours_subset - mrr_pykeen) > 1e-6 * abs(mrr_pykeen):
        raise SystemExit(f"MRR mismatch: ours {mrr_ours_subset} vs PyKEEN {mrr_pykeen}")

    queries = 2 * n
    report = {
        "benchmark": "eval_ranking",
        "queries": queries,
        "entities": num_entities,
        "ours_s": round(ours_s, 4),
        "ours_s_min": round(min(ours_times), 4),
        "pykeen_s": round(pykeen_s, 4),
        "ratio": round(ours_s / pykeen_s, 5),
        "ours_ms_per_query": round(1e3 * ours_s / queries, 5),
        "pykeen_ms_per_query": round(1e3 * pykeen_s / queries, 5),
        "mrr_ours": metrics["mrr"],
        "mrr_pykeen": mrr_pykeen,
        "pykeen_queries_timed": 2 * timed,
        "pykeen_extrapolated": timed < n,
        "pykeen_batch_size": pykeen_bs,
        "pykeen_copy_s_excluded": round(copy_s, 4),
        "ours_batch_size": args.batch_size or batch_size_for_budget(num_entities),
        "threads": torch.get_num_threads(),
        # other work on the machine slows both sides (PyKEEN's long run more often): 1-minute load averages
        "loadavg_start_end": [load_start, _loadavg()],
    }
    if timed < n:
        report["mrr_ours_on_timed_subset"] = mrr_ours_subset
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
