"""Training KGEditor's hypernetwork with Lightning: edit loss plus a KL Lagrangian on stable facts.

Each step takes ``edits_per_step`` edit cases and ``stable_per_step`` stable facts. The hypernetwork turns the
cases' slot gradients into slot updates; the loss is

    CE(edited model on the edits) + lambda * (KL(original || edited on the stable facts) - margin)

and lambda, a Lagrange multiplier, rises by gradient ascent while the KL exceeds the margin (clamped at 0).
Centred RMSprop on the hypernetwork only: the base model and the slots are never trained directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch.func import functional_call
from torch.nn import functional as F
from torch.utils.data import DataLoader

from deltakg.kge.lightning import EpochShuffleSampler, IndexDataset, _RngStateMixin
from deltakg.kge.model import MaskedEntityModel
from deltakg.serialization import load_checkpoint

from ..editor import apply_edit
from ..target import EncodedFacts, KGETarget
from .kgeditor import KGEditor, KGEditorConfig

__all__ = ["KGEditorModule", "train_kgeditor"]


class KGEditorModule(_RngStateMixin, pl.LightningModule):
    """The hypernetwork as a LightningModule; the frozen KGE is held by the editor's adapter."""

    def __init__(self, editor: KGEditor, target: KGETarget, train_cases: EncodedFacts, stable: EncodedFacts,
                 dev_cases: EncodedFacts | None = None, dev_stable: EncodedFacts | None = None) -> None:
        super().__init__()
        self.editor, self.target = editor, target
        self.config: KGEditorConfig = editor.config
        self.hypernet = editor.hypernet
        self.train_cases, self.stable, self.dev_cases = train_cases, stable, dev_cases
        # checkpoint selection measures locality on its own pool when the edit set has one (stable_dev)
        self.dev_stable = dev_stable if dev_stable is not None and len(dev_stable) else stable
        self.register_buffer("lagrange", torch.zeros(()))
        target.model.eval()  # dropout off: the updates must work on the deterministic model
        for name, param in target.model.named_parameters():
            param.requires_grad_(name in editor.edited_names)  # slot grads are inputs G; nothing else needs grads
        # the KGE is frozen: with a last-layer slot, one pass over the cases and stable facts serves every step
        self.case_cache = editor.slot_cache(target, train_cases)
        self.stable_cache = editor.slot_cache(target, stable) if self.case_cache is not None else None

    # the KGE is not a submodule (it is never trained), so Lightning neither saves nor moves it
    def train_dataloader(self) -> DataLoader:
        """Batches of edit-case indices."""
        n = len(self.train_cases)
        return DataLoader(IndexDataset(n), batch_size=self.config.edits_per_step,
                          sampler=EpochShuffleSampler(n, self.config.seed))

    def val_dataloader(self) -> DataLoader | None:
        """Batches of dev edit-case indices."""
        if self.dev_cases is None or not len(self.dev_cases):
            return None
        return DataLoader(IndexDataset(len(self.dev_cases)), batch_size=self.config.edits_per_step, shuffle=False)

    def _stable_pick(self, step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.config.seed * 7919 + step)
        return torch.randint(len(self.stable), (self.config.stable_per_step,), generator=generator)

    def _edited_losses(self, picked: torch.Tensor, stable_picked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.target.model
        cases, stable = self.train_cases.select(picked), self.stable.select(stable_picked)
        cache = self.case_cache.select(picked) if self.case_cache is not None else None
        stable_cache = self.stable_cache.select(stable_picked) if self.stable_cache is not None else None
        deltas = self.editor.updates(self.target, cases, cache)
        if self.config.calibrate:
            # train in the regime of use: the edit's length is calibrated, the hypernetwork learns its direction
            scale, _ = self.editor.calibrated_scale(self.target, cases, {k: v.detach() for k, v in deltas.items()},
                                                    cache)
            deltas = {name: scale * delta for name, delta in deltas.items()}
        named = dict(model.named_parameters())
        params = {name: named[name].detach() + delta for name, delta in deltas.items()}

        def scores(facts: EncodedFacts, facts_cache, weights=None) -> torch.Tensor:
            if facts_cache is not None:
                return facts_cache.scores(weights)
            return functional_call(model, weights, args=(), kwargs=self.target.inputs(facts)) if weights else \
                model(**self.target.inputs(facts))

        edit_scores = scores(cases, cache, params)
        ce = F.cross_entropy(edit_scores, cases.targets.to(edit_scores.device))
        with torch.no_grad():
            original = F.log_softmax(scores(stable, stable_cache), dim=-1)
        edited = F.log_softmax(scores(stable, stable_cache, params), dim=-1)
        kl = F.kl_div(edited, original, log_target=True, reduction="batchmean")  # KL(original || edited)
        return ce, kl

    def _validation_stable(self, size: int = 64) -> EncodedFacts:
        generator = torch.Generator().manual_seed(self.config.seed)
        return self.dev_stable.select(torch.randperm(len(self.dev_stable), generator=generator)[:size])

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Edit CE plus the Lagrangian KL term; lambda ascends on the constraint violation."""
        picked = batch.cpu()
        ce, kl = self._edited_losses(picked, self._stable_pick(self.global_step))
        violation = kl - self.config.margin
        loss = ce + self.lagrange.clone() * violation  # the in-place ascent below must not touch this graph
        with torch.no_grad():
            self.lagrange.add_(self.config.lambda_lr * violation.detach()).clamp_(min=0.0)
        self.log_dict({"train_ce": ce, "train_kl": kl, "lambda": self.lagrange}, prog_bar=True,
                      batch_size=len(picked))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._dev: list[torch.Tensor] = []

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        """Succ@1 of each dev batch edited alone (the editor's real edit), and the share of a fixed stable
        sample whose top entity it leaves unchanged."""
        cases = self.dev_cases.select(batch.cpu())
        model = self.target.model
        stable_inputs = self.target.inputs(self._validation_stable())
        with torch.no_grad():
            before = model(**stable_inputs).argmax(dim=1).cpu()
        with torch.enable_grad():
            handle = apply_edit(self.editor, self.target, cases, check=False)
        try:
            with torch.no_grad():
                hit = (self.target.scores(cases).argmax(dim=1).cpu() == cases.targets).double()
                kept = (model(**stable_inputs).argmax(dim=1).cpu() == before).double()
        finally:
            handle.rollback()
        self._dev.append(torch.stack([hit.sum(), torch.tensor(float(len(hit)), dtype=torch.float64),
                                      kept.mean()]))

    def on_validation_epoch_end(self) -> None:
        if not self._dev:
            return
        stats = torch.stack(self._dev)
        succ = stats[:, 0].sum() / stats[:, 1].sum()
        kept = stats[:, 2].mean()
        self.log_dict({"valid_succ@1": float(succ), "valid_kept": float(kept),
                       "valid_score": float((succ + kept) / 2)}, prog_bar=True)

    def configure_optimizers(self):
        """Centred RMSprop on the hypernetwork (as KE)."""
        params = [p for p in self.hypernet.parameters() if p.requires_grad]
        return torch.optim.RMSprop(params, lr=self.config.lr, centered=True)


def train_kgeditor(
    model: MaskedEntityModel,
    train_cases: list,
    stable: list,
    out: str | os.PathLike,
    *,
    config: KGEditorConfig,
    dev_cases: list | None = None,
    dev_stable: list | None = None,
    max_time_minutes: float | None = None,
    progress: bool = True,
    accelerator: str = "cpu",
) -> tuple[KGEditor, dict[str, Any]]:
    """Train a KGEditor for ``model`` on edit cases and stable facts; save it to ``out`` and return it.

    ``stable`` is the KL term's locality signal; ``dev_stable`` (default: ``stable``) what checkpoint selection
    measures locality on. Pass an edit set's ``stable_train`` and ``stable_dev`` pools, never ``stable_test``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(config.seed, verbose=False)
    target = KGETarget(model)
    editor = KGEditor(config)
    editor.prepare(target)
    train_facts, stable_facts = target.encode(train_cases), target.encode(stable)
    dev_facts = target.encode(dev_cases) if dev_cases else None
    dev_stable_facts = target.encode(dev_stable) if dev_stable else None
    module = KGEditorModule(editor, target, train_facts, stable_facts, dev_facts, dev_stable_facts)
    monitor = "valid_score" if dev_facts is not None else None
    checkpoint = ModelCheckpoint(dirpath=str(out / "checkpoints"), filename="best-{epoch}", monitor=monitor,
                                 mode="max", save_top_k=1, save_last=True, save_on_exception=True)
    callbacks: list = [checkpoint]
    if monitor and config.patience:
        callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=config.patience,
                                       check_on_train_epoch_end=False, strict=False))
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, max_epochs=config.epochs,
        max_time={"minutes": max_time_minutes} if max_time_minutes else None,
        callbacks=callbacks, logger=CSVLogger(str(out), name="logs"), enable_progress_bar=progress,
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=10, default_root_dir=str(out),
        limit_val_batches=1.0 if dev_facts is not None else 0,  # no dev cases: no validation loop at all
    )
    last = out / "checkpoints" / "last.ckpt"
    trainer.fit(module, ckpt_path=str(last) if last.exists() else None)
    best = checkpoint.best_model_path
    if best and Path(best).exists():
        module.load_state_dict(load_checkpoint(best)["state_dict"])
    editor.hypernet.eval()
    for param in model.parameters():
        param.requires_grad_(True)
    editor.save_pretrained(out)
    metrics = {
        "epochs_run": trainer.current_epoch,
        "global_step": trainer.global_step,
        "best_valid_score": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "params": editor.parameter_counts(target),
    }
    return editor, metrics
