"""Benchmark: does our masked-entity transformer fit its training graph, and does it generalise like a plain MLP?

Trains one model for ``--minutes`` with the same plain loop for both kinds, so that only the query encoder differs:
1vsAll cross-entropy (label smoothing), head and tail query of every triple (``both_sides``), AdamW, batches of
``--batch-size`` triples, the entity decoder tied to the input entity embeddings.

- ``--model ours``: ``MaskedEntityModel`` (``--encoder``, default tiny, ``--text``, ``--layers``, ``--dropout``,
  ``--init-range``, ``--inverse-relations``, ``--readout``).
- ``--model mlp``: the reference. The mask state is ``MLP([e_h; r])`` (Linear 2d -> 2d, GELU, Linear 2d -> d) with
  separate relation embeddings for head queries, scored against the same tied entity table (``--dim``).

Every ``--every`` epochs it ranks (filtered, realistic, both sides) ``--train-subset`` training triples and the valid
split; at the end the test split. Prints ONE JSON line: the curve, the best valid MRR and the final test MRR.

    python benchmarks/fit_probe.py --dataset umls --model ours --minutes 3
    python benchmarks/fit_probe.py --dataset umls --model mlp --minutes 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from _fresh import add_model_args, load_or_skip  # noqa: E402
from deltakg.kge.evaluation import FilterIndex, evaluate_ranking  # noqa: E402
from deltakg.kge.inputs import HEAD, READOUTS, TAIL  # noqa: E402
from deltakg.kge.lightning import LinkPredictionModule, both_sides  # noqa: E402
from deltakg.kge.model import MaskedEntityModel  # noqa: E402


class MLPQueries(nn.Module):
    """The reference encoder: a two-layer MLP over the concatenated known-entity and relation embeddings."""

    def __init__(self, num_entities: int, num_relations: int, dim: int) -> None:
        super().__init__()
        self.entity_embeddings = nn.Embedding(num_entities, dim)
        self.relation_embeddings = nn.Embedding(2 * num_relations, dim)  # the second half: head queries
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.entity_bias = nn.Parameter(torch.zeros(num_entities))
        self.num_relations = num_relations
        for table in (self.entity_embeddings, self.relation_embeddings):
            nn.init.normal_(table.weight, std=0.1)

    def mask_states(self, triples: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
        """The query state of each row: the known entity and the (side-specific) relation through the MLP."""
        is_head = sides == HEAD
        known = torch.where(is_head, triples[:, 2], triples[:, 0])
        relation = triples[:, 1] + is_head.long() * self.num_relations
        return self.mlp(torch.cat([self.entity_embeddings(known), self.relation_embeddings(relation)], dim=-1))

    def decode(self, states: torch.Tensor) -> torch.Tensor:
        """Scores over all entities, tied to the input entity table."""
        return states @ self.entity_embeddings.weight.t() + self.entity_bias

    def score(self, triples: torch.Tensor, side: str) -> torch.Tensor:
        """Scores of every entity as the hidden ``side`` of each triple."""
        sides = torch.full((triples.shape[0],), HEAD if side == "head" else TAIL)
        return self.decode(self.mask_states(triples, sides))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p)
    p.set_defaults(dataset="umls")
    p.add_argument("--model", choices=("ours", "mlp"), default="ours")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--epochs", type=int, default=None, help="stop after this many epochs (default: the time only)")
    p.add_argument("--every", type=int, default=10, help="epochs between evaluations")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--init-range", type=float, default=None)
    p.add_argument("--inverse-relations", action="store_true", help="ours: a separate relation token for head queries")
    p.add_argument("--readout", choices=READOUTS, default="mask", help="ours: the decoded position")
    p.add_argument("--dim", type=int, default=400, help="embedding width of the MLP reference")
    p.add_argument("--train-subset", type=int, default=1000)
    args = p.parse_args()
    kg = load_or_skip("fit_probe", args)
    if kg is None:
        return
    torch.manual_seed(args.seed)
    if args.model == "ours":
        model = MaskedEntityModel.for_graph(kg, args.encoder, layers=args.layers, use_text=args.text,
                                            dropout=args.dropout, init_range=args.init_range,
                                            inverse_relations=args.inverse_relations, readout=args.readout)
        # the optimiser `deltakg train` builds (AdamW; without texts the word table gets no update)
        optimizer = LinkPredictionModule(model, kg, lr=args.lr, weight_decay=args.weight_decay).configure_optimizers()

        def states(triples: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
            return model.mask_states(**model.inputs(triples, sides))
    else:
        model = MLPQueries(kg.num_entities, kg.num_relations, args.dim)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        states = model.mask_states
    filter_index = FilterIndex(kg.all_triples(), kg.num_entities)
    generator = torch.Generator().manual_seed(args.seed)
    train_subset = kg.train[torch.randperm(kg.train.shape[0], generator=generator)[: args.train_subset]]

    def mrr(triples: torch.Tensor) -> float:
        model.eval()
        with torch.inference_mode():
            result = evaluate_ranking(model.score, triples, kg.num_entities, filter_index=filter_index,
                                      batch_size=512)
        model.train()
        return round(float(result.to_dict()["mrr"]), 4)

    curve, epoch, start = [], 0, time.perf_counter()
    while time.perf_counter() - start < args.minutes * 60 and (args.epochs is None or epoch < args.epochs):
        order = torch.randperm(kg.train.shape[0], generator=generator)
        for i in range(0, order.numel(), args.batch_size):
            triples, sides, targets = both_sides(kg.train[order[i : i + args.batch_size]])
            loss = F.cross_entropy(model.decode(states(triples, sides)), targets,
                                   label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epoch += 1
        if epoch % args.every == 0:
            point = {"epoch": epoch, "s": round(time.perf_counter() - start, 1), "loss": round(loss.item(), 4),
                     "train_mrr": mrr(train_subset), "valid_mrr": mrr(kg.valid)}
            curve.append(point)
            print(json.dumps(point), file=sys.stderr, flush=True)
    best = max(curve, key=lambda point: point["valid_mrr"], default=None)
    print(json.dumps({
        "benchmark": "fit_probe", "dataset": args.dataset, "model": args.model,
        "options": {k: v for k, v in vars(args).items() if k not in ("dataset", "data_dir", "model")},
        "threads": torch.get_num_threads(), "epochs": epoch, "train_s": round(time.perf_counter() - start, 1),
        "best_valid": best, "final_train_mrr": curve[-1]["train_mrr"] if curve else None,
        "test_mrr": mrr(kg.test), "curve": curve,
    }))


if __name__ == "__main__":
    main()
