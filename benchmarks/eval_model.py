"""Whole link-prediction evaluation of our model: FLOPs per query and the fraction of the GEMM rate reached.

Runs the filtered evaluation (encode every query, score all entities, filter, rank) of a masked-entity
model on FB15k-237 test (20,466 triples x 2 sides = 40,932 queries x 14,541 entities) and, in the same run,
measures this machine's fp32 GEMM rate with torch. FLOPs are counted with ``torch.utils.flop_counter`` on a
sample of queries, each encoded alone so that padding counts as waste (matmul/attention FLOPs; element-wise
work is not counted, so the fraction is a floor).

    python benchmarks/eval_model.py [--model DIR] [--encoder minilm] [--limit N] [--data-dir DIR]

Without ``--model`` a freshly initialised model with the default encoder is timed (weights do not change
the work). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent


def gemm_rate(size: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """Sustained GEMM rate of torch on this machine for ``dtype``, in FLOP/s (best of ``repeats``)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    with torch.autocast("cpu", enabled=False):  # measured in ``dtype`` even inside the bf16 evaluation
        torch.mm(a, b)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("DELTAKG_DATA", str(REPO.parent / "shared/data/kg")))
    parser.add_argument("--model", default=None, help="a trained model folder (default: a fresh model)")
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--no-text", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N test triples")
    parser.add_argument("--batch-size", type=int, default=None, help="queries per batch (default: by memory, as the CLI)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--flop-sample", type=int, default=256, help="queries per side whose FLOPs are counted")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: torch.autocast to bfloat16 (AMX/AVX512-BF16 CPUs); the rate is still compared "
                             "with the fp32 GEMM rate, and with the bf16 one")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from kg_data import KGDataError, load_dataset

    try:
        kg = load_dataset("fb15k237", args.data_dir)
    except KGDataError as err:
        print(json.dumps({"benchmark": "eval_model", "skipped": str(err)}))
        return
    from deltakg.kge.evaluation import FilterIndex, evaluate_ranking
    from deltakg.kge.model import MaskedEntityModel

    if args.model:
        model = MaskedEntityModel.from_pretrained(args.model)
    else:
        torch.manual_seed(0)
        model = MaskedEntityModel.for_graph(kg, args.encoder, layers=args.layers, use_text=not args.no_text).eval()
    triples = kg.test if args.limit is None else kg.test[: args.limit]
    filter_index = FilterIndex(kg.all_triples(), kg.num_entities)

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    with torch.inference_mode(), autocast:
        # useful work: FLOPs of each sample query encoded alone (no padding), so padding counts as waste
        sample = triples[: min(len(triples), args.flop_sample)]
        counter = FlopCounterMode(display=False)
        with counter:
            for side in ("head", "tail"):
                for i in range(len(sample)):
                    model.score(sample[i : i + 1], side)
        flops_per_query = counter.get_total_flops() / (2 * len(sample))

        rate = gemm_rate()
        evaluate_ranking(model.score, triples[:64], kg.num_entities, filter_index=filter_index)  # warm-up
        start = time.perf_counter()
        result = evaluate_ranking(
            model.score, triples, kg.num_entities, filter_index=filter_index, batch_size=args.batch_size
        )
        seconds = time.perf_counter() - start
        rate_after = gemm_rate()
    bf16_rate = gemm_rate(dtype=torch.bfloat16) if args.precision == "bf16" else None

    queries = 2 * len(triples)
    achieved = flops_per_query * queries / seconds
    gemm = max(rate, rate_after)
    print(json.dumps({
        "benchmark": "eval_model",
        "dataset": "fb15k237",
        "encoder": model.config.encoder,
        "use_text": model.config.use_text,
        "layers": model.encoder.config.num_hidden_layers,
        "queries": queries,
        "entities": kg.num_entities,
        "seconds": round(seconds, 3),
        "ms_per_query": round(1000 * seconds / queries, 4),
        "gflop_per_query": round(flops_per_query / 1e9, 4),
        "achieved_gflops": round(achieved / 1e9, 1),
        "gemm_gflops": round(gemm / 1e9, 1),
        "gemm_fraction": round(achieved / gemm, 3),
        "precision": args.precision,
        **({"bf16_gemm_gflops": round(bf16_rate / 1e9, 1), "bf16_gemm_fraction": round(achieved / bf16_rate, 3)}
           if bf16_rate else {}),
        "threads": torch.get_num_threads(),
        "mrr": round(result.to_dict()["mrr"], 4),
    }))


if __name__ == "__main__":
    sys.exit(main())
