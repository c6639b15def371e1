"""Benchmark: how fast a fresh masked-entity model memorises a fixed sample of training triples.

Edit sets of the EDIT kind need a base model that has learned its (corrupted) training facts at rank 1, so the
speed of memorisation, not only held-out MRR, decides whether a set can be built in a CPU budget. This trains a
fresh model on ``--facts`` random training triples of a dataset (both query sides, the full entity softmax, the
optimiser groups of ``deltakg train``: new parameters at ``--lr``, encoder at ``--encoder-lr``) and prints, every
``--every`` steps, the loss, Hits@1 and the geometric-mean rank of 1,024 of those triples' queries. One JSON line.

    python benchmarks/memorise.py --dataset wn18rr --data-dir ../shared/data/kg --lr 1e-3 --encoder-lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/quality.py

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from _fresh import add_model_args, load_or_skip  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Train on a fixed sample and print the memorisation trace as one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--facts", type=int, default=2048, help="training triples to memorise")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3, help="new parameters (entity/relation embeddings, head)")
    p.add_argument("--encoder-lr", type=float, default=None, help="encoder (default: --lr)")
    p.add_argument("--every", type=int, default=50)
    args = p.parse_args(argv)
    kg = load_or_skip("memorise", args)
    if kg is None:
        return 0

    from deltakg.kge.lightning import LinkPredictionModule, both_sides
    from deltakg.kge.model import MaskedEntityModel
    torch.manual_seed(args.seed)
    model = MaskedEntityModel.for_graph(kg, args.encoder, use_text=args.text)
    module = LinkPredictionModule(model, kg, lr=args.lr, encoder_lr=args.encoder_lr, label_smoothing=args.label_smoothing)
    optimizer = module.configure_optimizers()
    facts = kg.train[torch.randperm(kg.train.shape[0])[: args.facts]]
    probe = facts[:512]  # 1,024 queries

    def scores_of(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        triples, sides, targets = both_sides(batch)
        return model(**model.inputs(triples, sides)), targets

    trace, start = [], time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                scores, targets = scores_of(probe)
                ranks = (scores > scores.gather(1, targets[:, None])).sum(dim=1) + 1
                trace.append({"step": step, "loss": round(float(F.cross_entropy(scores, targets)), 3),
                              "hits@1": round(float((ranks == 1).double().mean()), 3),
                              "geomean_rank": round(float(ranks.double().log().mean().exp()), 1)})
            model.train()
            print(f"[memorise] {trace[-1]}", file=sys.stderr, flush=True)
        if step == args.steps:
            break
        scores, targets = scores_of(facts[torch.randint(args.facts, (args.batch_size,))])
        loss = F.cross_entropy(scores, targets, label_smoothing=args.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    print(json.dumps({"benchmark": "memorise", "dataset": args.dataset, "config": vars(args),
                      "exposures_per_fact": round(args.steps * args.batch_size / args.facts, 1),
                      "seconds": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads(),
                      "trace": trace}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
