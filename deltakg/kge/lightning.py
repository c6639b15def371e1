"""Lightning shells around :class:`MaskedEntityModel`: link-prediction training and the PT-KGE stage.

The model stays a plain ``nn.Module``; these classes only add the loss, the optimiser, validation
metrics and the state a resume needs (RNG states, so that a resumed run repeats an uninterrupted one).
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Timer
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from kg_data import KnowledgeGraph

from . import LR_SCHEDULES
from .evaluation import FilterIndex, compute_ranks
from .inputs import HEAD, TAIL
from .model import MaskedEntityModel
from .queries import QueryBatch, QueryTable

# the decays of LR_SCHEDULES: none, linear to 0, half a cosine to 0
_DECAYS = {
    "constant": lambda fraction: 1.0,
    "linear": lambda fraction: 1.0 - fraction,
    "cosine": lambda fraction: 0.5 * (1.0 + math.cos(math.pi * fraction)),
}

__all__ = ["LinkPredictionModule", "DescriptionPretrainingModule", "TripleDataModule",
           "EpochShuffleSampler", "IndexDataset", "TRAIN_TYPES", "both_sides"]


class _Rows(Dataset):
    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.rows[index]


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch): a resumed run sees the same order."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


TRAIN_TYPES = ("1vsall", "kvsall")


class TripleDataModule(pl.LightningDataModule):
    """Training examples shuffled per epoch, validation triples in order (optionally a fixed subset).

    ``train_type`` "1vsall": batches of ``batch_size`` training triples (each gives a head and a tail query);
    "kvsall": batches of ``2 * batch_size`` distinct training queries with all their answers (:class:`QueryBatch`).
    """

    def __init__(
        self,
        kg: KnowledgeGraph,
        *,
        batch_size: int,
        eval_batch_size: int,
        seed: int = 0,
        val_subset: int | None = None,
        train_type: str = "1vsall",
    ) -> None:
        super().__init__()
        if train_type not in TRAIN_TYPES:
            raise ValueError(f"train_type must be one of {', '.join(TRAIN_TYPES)}, got {train_type!r}")
        self.kg, self.batch_size, self.eval_batch_size, self.seed = kg, batch_size, eval_batch_size, seed
        self.queries = QueryTable.from_triples(kg.train) if train_type == "kvsall" else None
        valid = kg.splits.get("valid", torch.empty(0, 3, dtype=torch.long))
        if val_subset is not None and val_subset < valid.shape[0]:
            pick = torch.randperm(valid.shape[0], generator=torch.Generator().manual_seed(seed))[:val_subset]
            valid = valid[pick.sort().values]
        self.valid = valid

    def train_dataloader(self) -> DataLoader:
        """Shuffled training triples, or shuffled training queries with their answers."""
        if self.queries is not None:
            return DataLoader(IndexDataset(len(self.queries)), batch_size=2 * self.batch_size,
                              sampler=EpochShuffleSampler(len(self.queries), self.seed), collate_fn=self._query_batch)
        rows = self.kg.train
        return DataLoader(_Rows(rows), batch_size=self.batch_size, sampler=EpochShuffleSampler(len(rows), self.seed))

    def _query_batch(self, items: list[torch.Tensor]) -> QueryBatch:
        return self.queries.batch(torch.stack(items))

    def val_dataloader(self) -> DataLoader:
        """Validation triples."""
        return DataLoader(_Rows(self.valid), batch_size=self.eval_batch_size, shuffle=False)


class _RngStateMixin:
    # checkpoints carry the RNG states so that dropout and sampling continue exactly after a resume;
    # stored as tensors and plain Python values so that weights-only loading accepts them
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            name, keys, pos, has_gauss, cached = states["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
            random.setstate(states["python"])


def both_sides(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head and the tail query of each ``(b, 3)`` triple: ``(triples (2b, 3), sides (2b,), targets (2b,))``."""
    n = batch.shape[0]
    sides = torch.cat([torch.full((n,), HEAD), torch.full((n,), TAIL)])
    return torch.cat([batch, batch]), sides, torch.cat([batch[:, 0], batch[:, 2]])


class LinkPredictionModule(_RngStateMixin, pl.LightningModule):
    """Cross-entropy over all entities (with label smoothing) for head and tail queries of each triple."""

    def __init__(
        self,
        model: MaskedEntityModel,
        kg: KnowledgeGraph,
        *,
        lr: float = 1e-3,
        encoder_lr: float | None = None,
        weight_decay: float = 0.01,
        label_smoothing: float = 0.1,
        warmup_steps: int = 0,
        lr_schedule: str = "constant",
        fused_loss: bool = False,
        decoder_dtype: str = "float32",
        fused_optimizer: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.fused_loss = fused_loss
        self.decoder_dtype = getattr(torch, decoder_dtype)
        self.fused_optimizer = fused_optimizer
        self.lr, self.encoder_lr = lr, encoder_lr if encoder_lr is not None else lr
        self.weight_decay, self.label_smoothing, self.warmup_steps = weight_decay, label_smoothing, warmup_steps
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
        self.lr_schedule = lr_schedule
        self._run_length: tuple[float | None, Timer | None] | None = None  # (planned steps, time-limit timer)
        self.filter_index = FilterIndex(kg.all_triples(), kg.num_entities)
        self.save_hyperparameters(ignore=["model", "kg"])
        self._val = torch.zeros(5, dtype=torch.float64)

    def training_step(self, batch: torch.Tensor | QueryBatch, batch_idx: int) -> torch.Tensor:
        """Loss of the head and the tail query of every triple in the batch (or of every query, KvsAll)."""
        if isinstance(batch, QueryBatch):
            triples, sides, targets = batch.triples, batch.sides, batch.targets
        else:
            triples, sides, targets = both_sides(batch)
        states = self.model.mask_states(**self.model.inputs(triples, sides))
        # unfused by default: its rounding is what the edit-set builds were tuned on (KvsAll targets are always fused)
        loss = self.model.decode_loss(states, targets, label_smoothing=self.label_smoothing, fused=self.fused_loss,
                                      matmul_dtype=self.decoder_dtype)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=triples.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = torch.zeros(5, dtype=torch.float64)

    @torch.no_grad()
    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        """Filtered realistic ranks of the valid triples, both sides, accumulated for the epoch."""
        for side, column in (("head", 0), ("tail", 2)):
            scores = self.model.score(batch, side).float()
            targets = batch[:, column].to(scores.device)
            scores = self.filter_index.filter_scores(scores, batch.to(scores.device), side)
            ranks = compute_ranks(scores, targets)["realistic"].double().cpu()
            self._val += torch.stack(
                [(1.0 / ranks).sum(), (ranks <= 1).sum(), (ranks <= 3).sum(), (ranks <= 10).sum(),
                 torch.tensor(float(ranks.numel()), dtype=torch.float64)]
            )

    def on_validation_epoch_end(self) -> None:
        totals = self.trainer.strategy.reduce(self._val.to(self.device), reduce_op="sum").cpu()
        count = max(float(totals[4]), 1.0)
        metrics = {
            "valid_mrr": totals[0] / count,
            "valid_hits@1": totals[1] / count,
            "valid_hits@3": totals[2] / count,
            "valid_hits@10": totals[3] / count,
        }
        for name, value in metrics.items():
            self.log(name, float(value), prog_bar=name in ("valid_mrr", "valid_hits@10"), sync_dist=False)

    def configure_optimizers(self):
        """AdamW; the pretrained encoder may take a smaller learning rate than the new parameters."""
        encoder_params = [p for p in self.model.encoder.parameters() if p.requires_grad]
        if not self.model.config.use_text:
            # without texts only [CLS]/[SEP]/[MASK] of the word table are read: skip its dense Adam update
            words = self.model.encoder.get_input_embeddings().weight
            encoder_params = [p for p in encoder_params if p is not words]
        encoder_ids = {id(p) for p in self.model.encoder.parameters()}
        new_params = [p for p in self.model.parameters() if p.requires_grad and id(p) not in encoder_ids]
        groups = [{"params": new_params, "lr": self.lr}]
        if encoder_params:
            groups.append({"params": encoder_params, "lr": self.encoder_lr})
        # fused: one pass over each tensor instead of ~10 (6x faster on 20M parameters on CPU), but its rounding
        # differs from the default's in the last bit, so seeded runs change: opt-in
        optimizer = torch.optim.AdamW(groups, weight_decay=self.weight_decay, fused=self.fused_optimizer or None)
        if not self.warmup_steps and self.lr_schedule == "constant":
            return optimizer
        warmup, decay = self.warmup_steps, _DECAYS[self.lr_schedule]

        def factor(step: int) -> float:
            ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
            return ramp * decay(self.run_fraction(step))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def run_fraction(self, step: int) -> float:
        """How much of the run is done at optimiser ``step``, in [0, 1]: the larger of the step fraction (the
        run's planned steps) and, with a time limit, the fraction of the time budget spent.

        A time-limited run's decay depends on the machine's speed: it reaches zero when the budget ends, however
        many steps that is (Li et al. 2020, budgeted training: linear decay to the budget's end).
        """
        trainer = self._trainer
        if trainer is None:
            return 0.0
        if self._run_length is None:  # fixed once fitting starts: looked up once, not on every step
            total = trainer.estimated_stepping_batches
            timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
            self._run_length = (float(total) if total and total != float("inf") else None, timer)
        total, timer = self._run_length
        fraction = step / total if total else 0.0
        remaining = timer.time_remaining("train") if timer is not None else None
        if remaining is not None:
            elapsed = timer.time_elapsed("train")
            fraction = max(fraction, elapsed / max(elapsed + remaining, 1e-9))
        return min(max(fraction, 0.0), 1.0)


class IndexDataset(Dataset):
    """The integers ``0..n-1`` as a dataset (rows are looked up by the step that uses them)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(index)


class DescriptionPretrainingModule(_RngStateMixin, pl.LightningModule):
    """PT-KGE stage 1: only the entity embeddings learn, from "the description of [MASK] is <text>"."""

    def __init__(self, model: MaskedEntityModel, *, lr: float = 1e-3, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.model, self.lr, self.batch_size, self.seed = model, lr, batch_size, seed
        tok = model.tokenizer
        self.prefix = tok("the description of", add_special_tokens=False)["input_ids"]
        self.suffix = tok("is", add_special_tokens=False)["input_ids"]

    def on_fit_start(self) -> None:
        for name, param in self.model.named_parameters():
            param.requires_grad_(name == "entity_embeddings.weight")

    def on_fit_end(self) -> None:
        for param in self.model.parameters():
            param.requires_grad_(True)

    def train_dataloader(self) -> DataLoader:
        """Every entity once per epoch, shuffled."""
        n = self.model.config.num_entities
        return DataLoader(IndexDataset(n), batch_size=self.batch_size, sampler=EpochShuffleSampler(n, self.seed))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Cross-entropy of the entity behind its own description."""
        inputs = self.model.builder.description(batch.cpu(), self.prefix, self.suffix)
        scores = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        loss = F.cross_entropy(scores, batch.to(self.device))
        self.log("pretrain_loss", loss, prog_bar=True, batch_size=batch.shape[0])
        return loss

    def configure_optimizers(self):
        """Adam on the entity embeddings."""
        return torch.optim.Adam([self.model.entity_embeddings.weight], lr=self.lr)

