"""Benchmark: time of one training step of the masked-entity model, each of two forms against the other.

A training step of ``deltakg train`` encodes the head and tail query of every triple in the batch and takes the
cross-entropy over all entities. ``--compare`` picks the pair:

- ``loss`` (default): the unfused loss, ``F.cross_entropy(model(...), targets)``, materialises the
  ``(queries, entities)`` score matrix and its log-softmax; ``MaskedEntityModel.decode_loss``
  (``deltakg/kge/loss.py``) walks the entities in chunks instead. Keys ``fused`` / ``unfused``.
- ``last-layer``: the full encoder against ``sparse_last_layer`` (what ``train_model`` uses), where the last layer
  computes its query, attention output and FFN only at the decoded position. Keys ``sparse`` / ``full``.
- ``decoder-dtype``: the fused loss with its decoder products in bfloat16 against float32 (both with the sparse
  last layer). Keys ``bfloat16`` / ``float32``.
- ``optimizer``: ``AdamW(fused=True)`` against torch's default AdamW (each with its own state; fused loss, sparse
  last layer). Keys ``fused_adamw`` / ``adamw``.

Both forms run on the same model, batches and optimiser (AdamW, the groups of ``deltakg train``), alternating, and
the script reports the median step time of each, split into forward+loss, backward and optimiser step, the
speed-up of the first over the second, and the loss difference of the first batch. One JSON line.

    python benchmarks/train_step.py --dataset wn18rr --data-dir ../shared/data/kg
    python benchmarks/train_step.py --dataset wn18rr --data-dir ../shared/data/kg --compare last-layer \
        --encoder minilm --layers 2 --text --max-length 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/quality.py

import torch  # noqa: E402

from _fresh import add_model_args, load_or_skip  # noqa: E402

from deltakg.kge.inputs import READOUTS  # noqa: E402

# --compare: the two forms timed, the first the candidate
PAIRS = {"loss": ("fused", "unfused"), "last-layer": ("sparse", "full"), "decoder-dtype": ("bfloat16", "float32"),
         "optimizer": ("fused_adamw", "adamw")}
# form: (sparse last layer, fused loss, decoder products' dtype, fused AdamW; None = --fused-optimizer)
FORMS = {
    "fused": (False, True, torch.float32, None), "unfused": (False, False, torch.float32, None),
    "sparse": (True, True, torch.float32, None), "full": (False, True, torch.float32, None),
    "bfloat16": (True, True, torch.bfloat16, None), "float32": (True, True, torch.float32, None),
    "fused_adamw": (True, True, torch.float32, True), "adamw": (True, True, torch.float32, False),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Time fused and unfused training steps and print one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--steps", type=int, default=20, help="timed steps of each kind (after 3 warm-up steps each)")
    p.add_argument("--compare", choices=tuple(PAIRS), default="loss", help="which two forms to time")
    p.add_argument("--layers", type=int, default=None, help="keep only the first N encoder layers")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--readout", choices=READOUTS, default="mask")
    p.add_argument("--compact", action="store_true", help="queries without [CLS]/[SEP]")
    p.add_argument("--inverse-relations", action="store_true")
    p.add_argument("--fused-optimizer", action="store_true", help="AdamW(fused=True) for both forms")
    p.add_argument("--bf16-autocast", action="store_true",
                   help="forward under torch.autocast(bfloat16), as Lightning's precision='bf16-mixed' runs it")
    p.add_argument("--bound-memory", action="store_true",
                   help="bound_allocator_caching() first, as train_model does by default (TrainConfig.bound_memory)")
    args = p.parse_args(argv)
    if args.bound_memory:
        from deltakg.kge.allocator import bound_allocator_caching
        bound_allocator_caching()
    kg = load_or_skip("train_step", args)
    if kg is None:
        return 0

    from deltakg.kge.lightning import LinkPredictionModule, both_sides
    from deltakg.kge.model import MaskedEntityModel
    torch.manual_seed(args.seed)
    model = MaskedEntityModel.for_graph(kg, args.encoder, use_text=args.text, layers=args.layers,
                                        max_length=args.max_length, readout=args.readout, compact=args.compact,
                                        inverse_relations=args.inverse_relations).train()
    module = LinkPredictionModule(model, kg, lr=1e-2, encoder_lr=1e-3)
    optimizers = {}
    for fused in (False, True):  # each with its own state, over the same parameters
        module.fused_optimizer = fused
        optimizers[fused] = module.configure_optimizers()
    order = torch.randperm(kg.train.shape[0], generator=torch.Generator().manual_seed(args.seed))

    def batch(i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        triples, sides, targets = both_sides(kg.train[order[(i * args.batch_size) % order.numel():][: args.batch_size]])
        return model.inputs(triples, sides), targets

    names = PAIRS[args.compare]

    def forward_loss(form: str, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        model.sparse_last_layer, fused_loss, dtype, _ = FORMS[form]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16_autocast):
            states = model.mask_states(**inputs)
            return model.decode_loss(states, targets, label_smoothing=args.label_smoothing, fused=fused_loss,
                                     matmul_dtype=dtype)

    def step(form: str, i: int) -> tuple[float, float, float, float]:
        inputs, targets = batch(i)
        t0 = time.perf_counter()
        loss = forward_loss(form, inputs, targets)
        t1 = time.perf_counter()
        model.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        fused_adamw = FORMS[form][3]
        optimizers[args.fused_optimizer if fused_adamw is None else fused_adamw].step()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, float(loss)

    model.eval()  # same weights, same batch, no dropout: the two losses must agree
    with torch.no_grad():
        inputs, targets = batch(0)
        loss_diff = abs(float(forward_loss(names[0], inputs, targets)) - float(forward_loss(names[1], inputs, targets)))
    model.train()
    times: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in names}
    for i in range(3):
        step(names[0], i), step(names[1], i)
    for i in range(args.steps):  # alternate so both see the same machine load
        for name in names:
            times[name].append(step(name, i))

    def summary(rows: list[tuple[float, float, float, float]]) -> dict[str, float]:
        parts = [statistics.median(r[k] for r in rows) * 1000 for k in range(3)]
        total = statistics.median(sum(r[:3]) for r in rows) * 1000
        return {"forward_loss_ms": round(parts[0], 1), "backward_ms": round(parts[1], 1),
                "optimizer_ms": round(parts[2], 1), "step_ms": round(total, 1),
                "queries_per_s": round(2 * args.batch_size / total * 1000, 1)}

    first, second = summary(times[names[0]]), summary(times[names[1]])
    print(json.dumps({
        "benchmark": "train_step", "dataset": kg.name, "entities": kg.num_entities,
        "config": vars(args), "threads": torch.get_num_threads(),
        names[0]: first, names[1]: second, "speedup": round(second["step_ms"] / first["step_ms"], 3),
        "first_loss_abs_diff": loss_diff,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
