"""Train a masked-entity KGE with the Lightning ``Trainer`` and write a loadable model folder.

Output folder layout (``out``): the model (``config.json``, ``model.safetensors``, ``tokenizer/``,
vocabularies) at the top so ``MaskedEntityModel.from_pretrained(out)`` loads it, ``checkpoints/``
(best by valid MRR and ``last.ckpt``, also written on SIGINT/SIGTERM), ``logs/`` (CSV) and ``metrics.json``.
A folder that already holds files is refused unless the run says what to do with it: ``resume`` continues
from ``checkpoints/last.ckpt`` (refused when the folder's run used other data or model options) and
``overwrite`` removes what an earlier run wrote (only those files) and starts afresh.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger

from kg_data import KnowledgeGraph
from deltakg.serialization import load_checkpoint, write_json
from kg_data.errors import KGDataError
from kg_data.formats import read_json_object

from . import DECODER_DTYPES, LR_SCHEDULES
from .allocator import bound_allocator_caching
from .lightning import DescriptionPretrainingModule, LinkPredictionModule, TripleDataModule
from .model import MaskedEntityModel

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainResult", "train_model"]


@dataclass
class TrainConfig:
    """Training options; ``None`` learning rates pick a default by encoder (pretrained or not)."""

    epochs: int = 20
    max_steps: int = -1
    max_time_minutes: float | None = None
    batch_size: int = 128
    fused_loss: bool = False  # chunked decoder + loss (1.26x faster on WN18RR; always on for kvsall)
    train_type: str = "1vsall"  # or "kvsall": each distinct query once per epoch with all its answers
    eval_batch_size: int = 256
    lr: float | None = None
    encoder_lr: float | None = None
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    warmup_steps: int = 0
    # decay of the learning rate over the run: "constant", "linear" or "cosine" to 0 at the run's end (its planned
    # steps, or its time budget with max_time_minutes, whichever comes first)
    lr_schedule: str = "constant"
    patience: int | None = 5
    val_every: int = 1
    val_subset: int | None = None
    pretrain_epochs: int = 0
    seed: int = 0
    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    # "auto": bf16-mixed where a probe of this run's FFN product finds bf16 clearly faster, else 32-true
    # (deltakg.kge.precision); any Lightning precision string is used as given
    precision: str = "auto"
    resume: bool = False  # continue from OUT/checkpoints/last.ckpt of a run with the same data and options
    overwrite: bool = False  # remove an earlier run's files from OUT and start afresh
    progress: bool = True
    # bound_allocator_caching(): RSS follows the live tensors (FB15k-237's 4 GiB goal); off, no page faults on
    # each new large tensor: 1.4x faster WN18RR text steps. False cannot undo an earlier call in the same process
    # (glibc has no way back to its dynamic threshold), so a process that mixes both runs bounded.
    bound_memory: bool = True
    gradient_checkpointing: bool = False
    # the last layer only at the decoded position: the same function, 1.5x faster steps, but another dropout
    # stream, so seeded runs (and the CI edit-set builds' KGEditor-vs-FT margins) differ; opt-in like fused_loss
    sparse_last_layer: bool = False
    # the training loss's decoder products (scores and their gradients); evaluation scores in float32 regardless;
    # "auto" probes the decoder's product shape like precision does
    decoder_dtype: str = "auto"
    fused_optimizer: bool = False  # AdamW(fused=True): 6x faster optimiser steps on CPU, other rounding

    def __post_init__(self) -> None:
        # torch checks only an optimiser's default rate, not its groups' (ours are groups): a negative --lr
        # would train by gradient ascent without a word
        for name, rate in (("lr", self.lr), ("encoder-lr", self.encoder_lr)):
            if rate is not None and not rate > 0:
                raise KGDataError(f"must be > 0, got {rate}", field=name)
        if not self.weight_decay >= 0:
            raise KGDataError(f"must be >= 0, got {self.weight_decay}", field="weight-decay")
        if not 0 <= self.label_smoothing < 1:
            raise KGDataError(f"must be in [0, 1), got {self.label_smoothing}", field="label-smoothing")
        for name, value in (("batch-size", self.batch_size), ("epochs", self.epochs), ("num-nodes", self.num_nodes),
                            ("eval-batch-size", self.eval_batch_size), ("val-every", self.val_every)):
            if not value >= 1:
                raise KGDataError(f"must be >= 1, got {value}", field=name)
        for name, value in (("max-time", self.max_time_minutes), ("val-subset", self.val_subset)):
            if value is not None and not value > 0:
                raise KGDataError(f"must be > 0, got {value}", field=name)
        if self.patience is not None and self.patience < 0:
            raise KGDataError(f"must be >= 0, got {self.patience}", field="patience")
        if self.pretrain_epochs < 0 or self.warmup_steps < 0:
            raise KGDataError("must be >= 0", field="pretrain-epochs" if self.pretrain_epochs < 0 else "warmup-steps")
        if self.resume and self.overwrite:
            raise KGDataError("resume and overwrite exclude each other: continue the run, or start afresh", field="out")
        if self.lr_schedule not in LR_SCHEDULES:
            raise KGDataError(f"must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}", field="lr-schedule")
        if self.decoder_dtype not in (*DECODER_DTYPES, "auto"):
            raise KGDataError(f"must be one of {', '.join(DECODER_DTYPES)} or auto, got {self.decoder_dtype!r}",
                              field="decoder-dtype")


@dataclass
class TrainResult:
    """What a training run produced."""

    model: MaskedEntityModel
    out: Path
    metrics: dict[str, Any]
    is_global_zero: bool = True


def _trainer(config: TrainConfig, out: Path, callbacks: list, *, max_epochs: int, logger: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        precision=config.precision,
        max_epochs=max_epochs,
        max_steps=config.max_steps,
        max_time={"minutes": config.max_time_minutes} if config.max_time_minutes else None,
        check_val_every_n_epoch=config.val_every,
        callbacks=callbacks + ([TQDMProgressBar(refresh_rate=10)] if config.progress else []),
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        logger=logger,
        default_root_dir=str(out),
        deterministic=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
    )


# what train_model writes into OUT: ``overwrite`` removes these and nothing else
TRAIN_OUTPUTS = ("config.json", "model.safetensors", "tokenizer", "entities.txt", "relations.txt", "entity2text.txt",
                 "relation2text.txt", "checkpoints", "logs", "logs_pretrain", "train_metrics.json", "run.json")
RUN_NAME = "run.json"  # the data and model options of the run in OUT, checked before a resume


def _prepare_out(out: Path, config: TrainConfig, run: dict[str, Any]) -> bool:
    """Apply the folder policy; returns whether to resume from ``checkpoints/last.ckpt``."""
    import shutil

    if out.exists() and not out.is_dir():
        raise KGDataError("exists and is not a folder", path=out, field="out")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not present:
        if config.resume:
            raise KGDataError("is empty or absent: nothing to resume (drop --resume to start a run)", path=out,
                              field="out")
        return False
    if config.overwrite:
        for name in TRAIN_OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return False
    if not config.resume:
        shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
        raise KGDataError(f"is not empty ({shown}); pass --overwrite to start afresh or --resume to continue its "
                          f"training (Python: TrainConfig(overwrite=True) / resume=True)", path=out, field="out")
    last = out / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise KGDataError("has no checkpoints/last.ckpt to resume from: not a deltakg train folder, or its run "
                          "saved no checkpoint; use --overwrite to start afresh", path=out, field="out")
    run_path = out / RUN_NAME
    if run_path.is_file():
        saved = read_json_object(run_path, written_by="deltakg train")
        for key, value in run.items():
            if saved.get(key) != value:
                raise KGDataError(f"the run in this folder used {key}={saved.get(key)!r}, this one {key}={value!r}: "
                                  f"resume with the same data and model options, or use --overwrite", path=run_path)
    return True


def _launched_worker() -> bool:
    # Lightning's launcher (and torchrun, SLURM) set these for every process but the first
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def _check_resumable(module: pl.LightningModule, last: Path) -> None:
    # a folder of another dataset or model fails here with one message instead of a size-mismatch traceback
    state = load_checkpoint(last)["state_dict"]
    own = module.state_dict()
    for name, tensor in own.items():
        theirs = state.get(name)
        if theirs is None or tuple(theirs.shape) != tuple(tensor.shape):
            found = "missing" if theirs is None else f"shape {tuple(theirs.shape)}"
            raise KGDataError(f"checkpoint does not fit this run's model ({name}: {found}, expected "
                              f"{tuple(tensor.shape)}): another dataset or model options? use --overwrite",
                              path=last)


def _quiet_lightning() -> None:
    # these hints (no GPU, few dataloader workers) are noise on CPU-only machines
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "pytorch_lightning.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")


def _workload_signature(model: MaskedEntityModel, extra: dict[str, Any]) -> str:
    import hashlib
    import json

    raw = json.dumps({"model": asdict(model.config), **extra}, sort_keys=True, default=str)
    cfg = model.config
    return (f"{cfg.encoder} h{model.encoder.config.hidden_size} E{cfg.num_entities} text {cfg.use_text} "
            f"#{hashlib.sha256(raw.encode()).hexdigest()[:10]}")


def resolve_auto_precision(config: TrainConfig, model: MaskedEntityModel,
                           kg: KnowledgeGraph) -> tuple[TrainConfig, dict[str, Any]]:
    """``config`` with ``auto`` precision and decoder dtype replaced by what timing this model's training step chose.

    The step (forward, loss, backward on the first ``batch_size`` training triples, both sides) is timed with and
    without bf16 autocast, then with the decoder products in bf16 and in fp32 under the chosen precision; see
    :mod:`deltakg.kge.precision`. Returns the resolved config and a report per resolved field (requested, chosen,
    reason, measured times). Random state and gradients are left as they were.
    """
    from .lightning import both_sides
    from .precision import best_seconds, choose_for_workload, device_of

    if "auto" not in (config.precision, config.decoder_dtype):
        return config, {}
    device = device_of(config.accelerator)
    home = model.entity_bias.device
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    triples, sides, targets = both_sides(kg.train[: config.batch_size])
    signature = _workload_signature(model, {"batch": int(triples.shape[0]), "fused_loss": config.fused_loss,
                                            "sparse_last_layer": config.sparse_last_layer})

    def step_seconds(autocast: bool, decoder: torch.dtype) -> float:
        inputs = model.inputs(triples, sides)

        def step() -> None:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                states = model.mask_states(**inputs)
                loss = model.decode_loss(states, targets.to(states.device), label_smoothing=config.label_smoothing,
                                         fused=config.fused_loss, matmul_dtype=decoder)
            loss.backward()

        try:
            return best_seconds(step, budget_s=0.5, sync=sync)
        finally:
            model.zero_grad(set_to_none=True)

    changes: dict[str, str] = {}
    report: dict[str, Any] = {}
    was_training, sparse = model.training, model.sparse_last_layer
    model.to(device).train()
    model.sparse_last_layer = config.sparse_last_layer
    try:
        autocast = config.precision.startswith("bf16")
        if config.precision == "auto":
            choice = choose_for_workload(f"train step {signature}", device,
                                         lambda bf16: step_seconds(bf16, torch.float32))
            changes["precision"] = "bf16-mixed" if choice.use_bf16 else "32-true"
            autocast = choice.use_bf16
            report["precision"] = {"requested": "auto", "chosen": changes["precision"], **choice.to_dict()}
        if config.decoder_dtype == "auto":
            choice = choose_for_workload(f"train decoder {signature} autocast {autocast}", device,
                                         lambda bf16: step_seconds(autocast, torch.bfloat16 if bf16 else torch.float32))
            changes["decoder_dtype"] = "bfloat16" if choice.use_bf16 else "float32"
            report["decoder_dtype"] = {"requested": "auto", "chosen": changes["decoder_dtype"], **choice.to_dict()}
    finally:
        model.to(home).train(was_training)
        model.sparse_last_layer = sparse
    return replace(config, **changes), report


def train_model(
    kg: KnowledgeGraph,
    out: str | os.PathLike,
    *,
    encoder: str = "minilm",
    layers: int | None = None,
    max_length: int = 64,
    use_text: bool = True,
    dropout: float | None = None,
    inverse_relations: bool = False,
    readout: str = "mask",
    compact: bool = False,
    init_from_text: bool | None = None,
    config: TrainConfig | None = None,
    callbacks: list[pl.Callback] | None = None,
) -> TrainResult:
    """Train on ``kg``'s train split with early stopping on valid MRR; save the best model to ``out``."""
    config = config or TrainConfig()
    out = Path(out)
    run = {"dataset": kg.name, "entities": kg.num_entities, "relations": kg.num_relations, "encoder": encoder,
           "layers": layers, "max_length": max_length, "use_text": use_text, "inverse_relations": inverse_relations,
           "readout": readout, "compact": compact, "train_type": config.train_type}
    if _launched_worker():
        # a DDP process that Lightning started: the first process applied the folder policy already
        resume = config.resume
    else:
        resume = _prepare_out(out, config, run)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / RUN_NAME, run)
    if config.bound_memory:
        bound_allocator_caching()
    _quiet_lightning()
    pl.seed_everything(config.seed, workers=True, verbose=False)
    model = MaskedEntityModel.for_graph(kg, encoder, layers=layers, max_length=max_length, use_text=use_text,
                                        dropout=dropout, inverse_relations=inverse_relations, readout=readout,
                                        compact=compact, init_from_text=init_from_text)
    config, precision_report = resolve_auto_precision(config, model, kg)
    for field_name, chosen in precision_report.items():
        log.info("%s: auto -> %s (%s)", field_name, chosen["chosen"], chosen["reason"])
    if config.gradient_checkpointing:
        model.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.sparse_last_layer = config.sparse_last_layer  # off again for the model we hand back
    pretrained = encoder != "tiny"
    lr = config.lr if config.lr is not None else (5e-4 if pretrained else 1e-3)
    encoder_lr = config.encoder_lr if config.encoder_lr is not None else (5e-5 if pretrained else lr)
    ckpt_dir = out / "checkpoints"
    started = time.perf_counter()

    if config.pretrain_epochs and not resume:
        stage = DescriptionPretrainingModule(model, lr=lr, batch_size=config.batch_size, seed=config.seed)
        _trainer(config, out, [], max_epochs=config.pretrain_epochs, logger=CSVLogger(str(out), name="logs_pretrain")).fit(stage)

    module = LinkPredictionModule(
        model,
        kg,
        lr=lr,
        encoder_lr=encoder_lr,
        weight_decay=config.weight_decay,
        label_smoothing=config.label_smoothing,
        warmup_steps=config.warmup_steps,
        lr_schedule=config.lr_schedule,
        fused_loss=config.fused_loss,
        decoder_dtype=config.decoder_dtype,
        fused_optimizer=config.fused_optimizer,
    )
    data = TripleDataModule(
        kg, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size, seed=config.seed,
        val_subset=config.val_subset, train_type=config.train_type,
    )
    has_valid = "valid" in kg.splits and kg.valid.numel() > 0
    checkpoint = ModelCheckpoint(
        dirpath=str(ckpt_dir),
        filename="best-{epoch}",
        monitor="valid_mrr" if has_valid else None,
        mode="max",
        save_top_k=1,
        save_last=True,
        save_on_exception=True,
    )
    callbacks = [checkpoint, *(callbacks or [])]
    if has_valid and config.patience:
        callbacks.append(EarlyStopping(monitor="valid_mrr", mode="max", patience=config.patience,
                                       check_on_train_epoch_end=False, strict=False))
    trainer = _trainer(config, out, callbacks, max_epochs=config.epochs, logger=CSVLogger(str(out), name="logs"))
    resume_from = ckpt_dir / "last.ckpt"
    if resume:
        _check_resumable(module, resume_from)
    trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume else None)

    best = checkpoint.best_model_path
    if best and Path(best).exists():
        module.load_state_dict(load_checkpoint(best)["state_dict"])
    metrics: dict[str, Any] = {
        "epochs_run": trainer.current_epoch,
        "global_step": trainer.global_step,
        "train_seconds": time.perf_counter() - started,
        "best_valid_mrr": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "best_checkpoint": best or None,
        "config": asdict(config),
        "precision_choice": precision_report,
        "encoder": encoder,
        "parameters": model.num_parameters(),
        "resumed": resume,
    }
    model.eval()
    model.sparse_last_layer = False
    if trainer.is_global_zero:
        model.save_pretrained(out)
        write_json(out / "train_metrics.json", metrics)
    return TrainResult(model=model, out=out, metrics=metrics, is_global_zero=trainer.is_global_zero)
