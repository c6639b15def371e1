"""k-NN calibrated text classification (Revisit-KNN): training through Lightning and the three rows of a run.

Per seed, on one task and setting:

- ``plain``: the classifier alone (few-shot/full: trained with cross-entropy; zero-shot: the untrained prompt model).
- ``knn_infer``: the same model, its test distribution mixed with the k-NN distribution of a datastore of its
  training representations, ``p = lambda p_knn + (1 - lambda) p_model``.
- ``knn_train_infer``: a second model trained with the calibrated loss ``CE * (1 + alpha * -log p_knn(y))``
  (the datastore rebuilt from the current model in eval mode at the start of every epoch, each training example
  left out of its own neighbours), then mixed like ``knn_infer``.

k, T and lambda of the mixture are chosen on dev (few-shot, full); zero-shot reads no label at all, so it uses
the paper's fixed zero-shot values (k=64, lambda=0.8) and its training labels are pseudo-labels: the current
prompt model's predictions on the unlabeled pool, regenerated at the start of every epoch. Temperatures are
multiples of a label-free scale recomputed with each datastore: the median squared L2 distance from a stored
entry to its nearest other entries (distances scale with the encoder, so absolute temperatures do not carry).
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kg_data.errors import KGDataError

from .calibration import LAMBDA_GRID, accuracy, calibrated_loss, choose_lambda, interpolate
from .datastore import Datastore
from .text_model import HEADS, Features, TextClassifier, collate, encode
from .text_tasks import SETTINGS, Splits, TaskSpec, get_task, load_splits

__all__ = ["ClassifyConfig", "KNNTextModule", "METRICS", "micro_f1", "embed", "distance_scale", "choose_mixture",
           "run_classification", "ROWS", "K_GRID", "TEMPERATURE_GRID"]

log = logging.getLogger("deltakg")

ROWS = ("plain", "knn_infer", "knn_train_infer")
K_GRID = (4, 16, 64)
"""The dev grid for k (values above the store size are skipped)."""
TEMPERATURE_GRID = (0.1, 0.3, 1.0, 3.0)
"""The dev grid for T, in units of :func:`distance_scale`."""


def micro_f1(probs: Tensor, labels: Tensor, negative: int) -> float:
    """Micro-F1 over every class but ``negative`` (SemEval's official score leaves ``Other`` out)."""
    pred = probs.argmax(dim=1)
    hit = ((pred == labels) & (labels != negative)).sum().item()
    predicted, gold = (pred != negative).sum().item(), (labels != negative).sum().item()
    precision = hit / predicted if predicted else 0.0
    recall = hit / gold if gold else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


METRICS: dict[str, Callable[[TaskSpec], Callable[[Tensor, Tensor], float]]] = {
    "accuracy": lambda spec: accuracy,
    "micro_f1": lambda spec: lambda probs, labels: micro_f1(probs, labels, spec.labels.index(spec.negative)),
}
"""Metric name -> the task's ``metric(probs, labels)`` (higher is better)."""


def _check(condition: bool, field_name: str, expected: str, value: Any) -> None:
    if not condition:
        raise KGDataError(f"expected {expected}, got {value!r}", field=field_name)


@dataclass
class ClassifyConfig:
    """One ``knn-classify`` run: task, setting, seeds, model and training, k-NN settings."""

    task: str
    setting: str = "few-shot"
    seeds: tuple[int, ...] = (13, 42, 100)
    head: str | None = None
    """``cls``, ``prompt`` or ``sentence`` (default: prompt for few-shot and zero-shot, cls for full)."""
    encoder: str = "minilm"
    epochs: int | None = None
    """Training epochs (default: 20 few-shot, 3 zero-shot, 2 full)."""
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.01
    max_length: int | None = None
    """Tokens per input (default: the task's)."""
    k: int | None = None
    """Neighbours of the calibrated loss and of the zero-shot mixture (default: the paper's 16 few-shot/full,
    64 zero-shot; few-shot/full choose the mixture's k on dev)."""
    temperature: float = 1.0
    """T of the calibrated loss (and of the zero-shot mixture), in units of the distance scale."""
    lam: float = 0.8
    """Zero-shot mixture weight of p_knn (few-shot/full choose it on dev)."""
    alpha: float = 1e-4
    loss: str = "ce"
    gamma: float = 2.0
    max_test: int | None = None
    """Evaluate on a fixed random subset (seed 0) of this many test examples (default: all)."""
    unlabeled: int = 1024
    """Zero-shot: texts of the unlabeled pool used (seeded subsample)."""
    precision: str = "32-true"
    progress: bool = True

    def __post_init__(self) -> None:
        self.spec = get_task(self.task)
        _check(self.setting in SETTINGS, "setting", f"one of {', '.join(SETTINGS)}", self.setting)
        self.seeds = tuple(self.seeds)
        _check(bool(self.seeds) and all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds),
               "seeds", "a non-empty list of integers", self.seeds)
        _check(len(set(self.seeds)) == len(self.seeds), "seeds", "distinct seeds", self.seeds)
        if self.head is None:
            self.head = "cls" if self.setting == "full" else "prompt"
        _check(self.head in HEADS, "head", f"one of {', '.join(HEADS)}", self.head)
        if self.setting == "zero-shot" and self.head == "cls":
            raise KGDataError("zero-shot needs the prompt or sentence head (a new [CLS] classifier knows no class)",
                              field="head")
        if self.epochs is None:
            self.epochs = {"few-shot": 20, "zero-shot": 3, "full": 2}[self.setting]
        if self.k is None:
            self.k = 64 if self.setting == "zero-shot" else 16
        for name in ("epochs", "batch_size", "k", "unlabeled"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, "an integer >= 1",
                   value)
        for name in ("max_length", "max_test"):
            value = getattr(self, name)
            _check(value is None or isinstance(value, int) and value >= 1, name, "an integer >= 1", value)
        if self.max_length is None:
            self.max_length = self.spec.max_length
        _check(self.max_length >= 16, "max_length", "an integer >= 16", self.max_length)
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, name, "a number > 0", value)
        for name in ("alpha", "gamma", "weight_decay"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, name, "a number >= 0",
                   value)
        _check(isinstance(self.lam, (int, float)) and 0 <= self.lam <= 1, "lam", "a number in [0, 1]", self.lam)
        _check(self.loss in ("ce", "focal"), "loss", "ce or focal", self.loss)
        _check(self.precision in ("32-true", "bf16-mixed"), "precision", "32-true or bf16-mixed", self.precision)

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values."""
        out = {k: v for k, v in asdict(self).items() if k != "progress"}
        out["seeds"] = list(self.seeds)
        return out


# ------------------------------------------------------------------------------------------ representations
def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


@torch.no_grad()
def embed(model: TextClassifier, features: Features, batch_size: int = 64,
          precision: str = "32-true") -> tuple[Tensor, Tensor]:
    """Representations (n, d) and class probabilities (n, C) of every example, in eval mode, float32 on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(features)), key=lambda r: len(features.input_ids[r]))  # little padding per batch
    reps, probs = [None] * len(order), [None] * len(order)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate(features, rows).items()}
            with _autocast(precision):
                rep, logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                    batch["mask_pos"])
            for j, r in enumerate(rows):
                reps[r], probs[r] = rep[j].float().cpu(), logits[j].float().softmax(dim=0).cpu()
    finally:
        model.train(was_training)
    if not order:
        raise KGDataError("no examples to embed", field="examples")
    return torch.stack(reps), torch.stack(probs)


def distance_scale(store: Datastore, k: int = 16) -> float:
    """Median over stored entries of the mean squared distance to their ``k`` nearest other entries (label-free)."""
    k = min(k, len(store) - 1)
    if k < 1:
        return 1.0
    dist, _ = store.search(store.keys, k, exclude=store.ids)
    scale = float(dist.mean(dim=1).median())
    return scale if scale > 0 and math.isfinite(scale) else 1.0


# ------------------------------------------------------------------------------------------ training
def _module_class():
    import pytorch_lightning as pl

    class KNNTextModule(pl.LightningModule):
        """Lightning shell around a :class:`TextClassifier`: CE or the k-NN calibrated loss, gold or pseudo labels.

        With ``calibrate``, the datastore of all training representations (eval mode, no gradient) is rebuilt at
        the start of every epoch and each example is left out of its own neighbours. With ``pseudo``, the labels
        are the current model's predictions on the training texts, regenerated at the start of every epoch.
        """

        def __init__(self, model: TextClassifier, features: Features, config: ClassifyConfig, n_classes: int,
                     calibrate: bool, pseudo: bool, total_steps: int) -> None:
            super().__init__()
            self.model, self.features, self.config = model, features, config
            self.n_classes, self.calibrate, self.pseudo, self.total_steps = n_classes, calibrate, pseudo, total_steps
            self.train_labels = torch.tensor(features.labels)
            self.store: Datastore | None = None
            self.scale = 1.0
            self.pseudo_history: list[list[int]] = []

        def on_train_epoch_start(self) -> None:
            if not (self.calibrate or self.pseudo):
                return
            reps, probs = embed(self.model, self.features, precision=self.config.precision)
            if self.pseudo:
                self.train_labels = probs.argmax(dim=1)
                self.pseudo_history.append(torch.bincount(self.train_labels, minlength=self.n_classes).tolist())
            if self.calibrate:
                self.store = Datastore.build(reps, self.train_labels, self.n_classes)
                self.scale = distance_scale(self.store, self.config.k)

        def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
            rep, logits = self.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                     batch["mask_pos"])
            labels = self.train_labels[batch["index"].cpu()].to(logits.device)
            if self.calibrate:
                k = min(self.config.k, len(self.store) - 1)
                p_knn = self.store.knn_probs(rep.detach().float().cpu(), k, self.config.temperature * self.scale,
                                             exclude=batch["index"].cpu())
                loss = calibrated_loss(logits.float(), labels, p_knn.to(logits.device), self.config.alpha,
                                       self.config.loss, self.config.gamma)
            else:
                loss = F.cross_entropy(logits.float(), labels)
            self.log("loss", loss, prog_bar=True, batch_size=labels.shape[0])
            return loss

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.config.lr,
                                          weight_decay=self.config.weight_decay, fused=True)
            decay = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: max(0.0, 1.0 - step / max(1, self.total_steps)))  # linear to 0, as LM-BFF
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "step"}}

    return KNNTextModule


def __getattr__(name: str) -> Any:
    if name == "KNNTextModule":  # Lightning loads on use
        return _module_class()
    raise AttributeError(name)


def _new_model(config: ClassifyConfig, seed: int) -> tuple[TextClassifier, Any]:
    from pytorch_lightning import seed_everything

    from deltakg.kge.encoders import load_encoder

    seed_everything(seed, verbose=False)
    loaded = load_encoder(config.encoder, max_length=config.max_length)
    tokenizer = loaded.tokenizer
    answers = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in config.spec.label_words]
    special = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id or 0)
    return TextClassifier(loaded.model, config.head, len(config.spec.labels), answers,
                          special_ids=special), tokenizer


def train(model: TextClassifier, features: Features, config: ClassifyConfig, seed: int, *, calibrate: bool,
          pseudo: bool, desc: str) -> dict[str, Any]:
    """Train ``model`` in place for ``config.epochs`` through a Lightning Trainer; returns what it did."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    if calibrate and len(features) < 2:
        raise KGDataError("the calibrated loss needs at least 2 training examples (one is left out)", field="train")
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(list(range(len(features))), batch_size=config.batch_size, shuffle=True, generator=generator,
                        collate_fn=lambda rows: collate(features, rows))
    steps = config.epochs * len(loader)
    module = _module_class()(model, features, config, len(config.spec.labels), calibrate, pseudo, steps)
    bar = [_Bar(desc)] if config.progress else []
    trainer = pl.Trainer(max_epochs=config.epochs, accelerator="cpu", devices=1, precision=config.precision,
                         logger=False, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=config.progress, callbacks=bar, num_sanity_val_steps=0,
                         deterministic=True)
    start = time.perf_counter()
    trainer.fit(module, loader)
    model.eval()
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 1), "pseudo_label_counts":
            module.pseudo_history or None}


def _bar_class():
    from pytorch_lightning.callbacks import TQDMProgressBar

    class Bar(TQDMProgressBar):
        """Lightning's bar, named after what it trains."""

        def __init__(self, desc: str) -> None:
            super().__init__(refresh_rate=5)
            self.desc = desc

        def init_train_tqdm(self):
            bar = super().init_train_tqdm()
            bar.set_description(self.desc)
            return bar

        def on_train_epoch_start(self, trainer, *args) -> None:
            super().on_train_epoch_start(trainer, *args)
            self.train_progress_bar.set_description(f"{self.desc} epoch {trainer.current_epoch + 1}/"
                                                    f"{trainer.max_epochs}")

    return Bar


def _Bar(desc: str):  # noqa: N802 - a class made on use (Lightning is imported lazily)
    return _bar_class()(desc)


# ------------------------------------------------------------------------------------------ mixture
@dataclass
class Mixture:
    """The k-NN mixture's settings and where they came from."""

    k: int
    temperature: float
    """Relative to the scale."""
    lam: float
    scale: float
    dev_score: float | None = None
    chosen_on: str = "dev"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"k": self.k, "temperature": self.temperature, "lambda": self.lam, "scale": round(self.scale, 6),
                "dev_score": self.dev_score, "chosen_on": self.chosen_on}


def choose_mixture(store: Datastore, dev_reps: Tensor, dev_probs: Tensor, dev_labels: Tensor,
                   metric: Callable[[Tensor, Tensor], float]) -> Mixture:
    """k (:data:`K_GRID`), T (:data:`TEMPERATURE_GRID`) and lambda (0.1..0.9) with the best dev score (ties: the
    first in grid order, the smaller lambda)."""
    scale = distance_scale(store)
    best: Mixture | None = None
    for k in [k for k in K_GRID if k <= len(store)] or [len(store)]:
        for t in TEMPERATURE_GRID:
            p_knn = store.knn_probs(dev_reps, k, t * scale)
            lam, scores = choose_lambda(dev_probs, p_knn, dev_labels, metric, LAMBDA_GRID)
            if best is None or scores[lam] > best.dev_score:
                best = Mixture(k, t, lam, scale, scores[lam])
    return best


def _mixed_score(store: Datastore, mix: Mixture, reps: Tensor, probs: Tensor, labels: Tensor,
                 metric: Callable[[Tensor, Tensor], float]) -> float:
    p_knn = store.knn_probs(reps, min(mix.k, len(store)), mix.temperature * mix.scale)
    return metric(interpolate(probs, p_knn, mix.lam), labels)


# ------------------------------------------------------------------------------------------ a run
def _subsample(examples: list, n: int | None, seed: int) -> list:
    if n is None or len(examples) <= n:
        return examples
    return [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), n))]


def _evaluate_rows(model: TextClassifier, feats: dict[str, Features], train_labels: Tensor, config: ClassifyConfig,
                   metric: Callable[[Tensor, Tensor], float]) -> tuple[float, float, Mixture]:
    """(model alone on test, mixture on test, the mixture's settings) for a trained (or zero-shot) model."""
    spec = config.spec
    train_reps, _ = embed(model, feats["train"], precision=config.precision)
    test_reps, test_probs = embed(model, feats["test"], precision=config.precision)
    test_labels = torch.tensor(feats["test"].labels)
    store = Datastore.build(train_reps, train_labels, len(spec.labels))
    if config.setting == "zero-shot":
        mix = Mixture(min(config.k, len(store)), config.temperature, config.lam, distance_scale(store),
                      chosen_on="fixed (zero-shot: the paper's k=64, lambda=0.8; no labels read)")
    else:
        dev_reps, dev_probs = embed(model, feats["dev"], precision=config.precision)
        mix = choose_mixture(store, dev_reps, dev_probs, torch.tensor(feats["dev"].labels), metric)
    return metric(test_probs, test_labels), _mixed_score(store, mix, test_reps, test_probs, test_labels, metric), mix


def run_seed(config: ClassifyConfig, splits: Splits, seed: int) -> dict[str, Any]:
    """The three rows for one seed (the splits already made for it)."""
    spec, metric = config.spec, METRICS[config.spec.metric](config.spec)
    zero = config.setting == "zero-shot"
    model, tokenizer = _new_model(config, seed)
    feats = {name: encode(spec, config.head, getattr(splits, name), tokenizer, config.max_length)
             for name in ("train", "dev", "test")}
    out: dict[str, Any] = {"train_size": len(feats["train"]), "dev_size": len(feats["dev"]),
                           "test_size": len(feats["test"])}
    if zero:
        _, probs = embed(model, feats["train"], precision=config.precision)
        out["plain_training"] = f"none (the zero-shot {config.head} model)"
        pseudo = probs.argmax(dim=1)
    else:
        out["plain_training"] = train(model, feats["train"], config, seed, calibrate=False, pseudo=False,
                                      desc=f"{spec.name} seed {seed} plain")
        pseudo = torch.tensor(feats["train"].labels)
    out["plain"], out["knn_infer"], mix = _evaluate_rows(model, feats, pseudo, config, metric)
    out["knn_infer_mixture"] = mix.as_dict()
    del model
    model, _ = _new_model(config, seed)
    out["knn_train_infer_training"] = train(model, feats["train"], config, seed, calibrate=True, pseudo=zero,
                                            desc=f"{spec.name} seed {seed} +kNN train")
    labels = embed(model, feats["train"], precision=config.precision)[1].argmax(dim=1) if zero else pseudo
    out["knn_train_infer_model_alone"], out["knn_train_infer"], mix = _evaluate_rows(model, feats, labels, config,
                                                                                     metric)
    out["knn_train_infer_mixture"] = mix.as_dict()
    return out


def run_classification(config: ClassifyConfig, data_dir: Any = None) -> dict[str, Any]:
    """Every seed of ``config``: the contract object ``{"task", "setting", "metric", "rows", "per_seed", ...}``."""
    start = time.perf_counter()
    per_seed: dict[str, Any] = {}
    notes: list[str] = []
    test_total = None
    for seed in config.seeds:
        splits = load_splits(config.spec, data_dir, config.setting, seed)
        test_total = len(splits.test)
        splits.test = _subsample(splits.test, config.max_test, 0)
        if config.setting == "zero-shot":
            splits.train = _subsample(splits.train, config.unlabeled, seed)
        for note in splits.notes:
            if note not in notes:
                notes.append(note)
        log.info("knn-classify %s %s seed %s: %d train, %d dev, %d test", config.spec.name, config.setting, seed,
                 len(splits.train), len(splits.dev), len(splits.test))
        per_seed[str(seed)] = run_seed(config, splits, seed)
    rows = {row: statistics.fmean(per_seed[s][row] for s in per_seed) for row in ROWS}
    sd = {row: statistics.stdev(per_seed[s][row] for s in per_seed) if len(per_seed) > 1 else 0.0 for row in ROWS}
    return {"task": config.spec.name, "setting": config.setting, "metric": config.spec.metric, "rows": rows,
            "sd": sd, "per_seed": per_seed, "head": config.head, "seeds": list(config.seeds),
            "max_test": config.max_test, "test_size": min(test_total, config.max_test or test_total),
            "test_size_total": test_total, "notes": notes, "config": config.as_dict(),
            "seconds": round(time.perf_counter() - start, 1)}
