"""The edit API: one entry point for every method, exact rollback, per-batch and sequential protocols.

An :class:`Editor` changes a model in place for a batch of edit cases. :func:`apply_edit` wraps one call
with a snapshot of the parameters the editor writes, so that the returned :class:`EditHandle` rolls the
model back bit-exactly, and a failing edit leaves the model exactly as before. :func:`run_edits` runs a
whole edit set and measures the deltaKG metrics.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from kg_data.edits import EditCase, StableFact
from kg_data.errors import KGDataError

from .metrics import edit_metrics
from .target import EncodedFacts, KGETarget
from .weights import Restorable, WeightSnapshot, restoring

__all__ = ["Editor", "EDITORS", "register_editor", "get_editor", "EditHandle", "apply_edit", "run_edits",
           "EditReport", "EditError"]


class EditError(KGDataError):
    """An edit request that cannot be carried out (the model is left unchanged)."""


class Editor(ABC):
    """Base class of edit methods; subclasses register a ``name`` and implement :meth:`edit`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for listings (``deltakg edit --help``)
    trainable: ClassVar[bool] = False  # learns from an edit set's train cases (``deltakg train-editor``)
    # constructor keyword -> command-line option dest, for the options ``deltakg edit`` offers this method
    cli_options: ClassVar[dict[str, str]] = {}
    # the model families it edits: "kge" (deltakg edit) and/or "causal_lm" (deltakg llm-edit)
    families: ClassVar[tuple[str, ...]] = ("kge",)
    # replays stable facts beside its edits: the benchmark hands it the edit set's stable_train (set_replay)
    replays_stable_train: ClassVar[bool] = False

    @classmethod
    def from_options(cls, editor_dir: str | None = None, **options: Any) -> "Editor":
        """An editor from command-line options, or loaded from ``editor_dir`` for a trained one."""
        if cls.trainable:
            if editor_dir is None:
                raise EditError(f"method {cls.name!r} needs a trained editor: pass its folder (deltakg edit --editor "
                                f"DIR; train one with deltakg train-editor --method {cls.name})", field="editor")
            return cls.from_pretrained(editor_dir)
        if editor_dir is not None:
            raise EditError(f"method {cls.name!r} has no trained state to load; drop --editor", field="editor")
        return cls(**options)

    @classmethod
    def from_settings(cls, *, progress: bool = True, **settings: Any) -> "Editor":
        """An untrained editor with these settings (constructor keywords; locate editors: config fields).

        ``progress``: whether the editor's own long steps show a bar (e.g. ROME/MEMIT's key statistics).
        """
        return cls(**settings)

    @classmethod
    def from_pretrained(cls, directory: str) -> "Editor":
        """Load a trained editor (methods with state override this)."""
        raise EditError(f"method {cls.name!r} has no saved state", field="editor")

    @classmethod
    def train_pretrained(cls, model: nn.Module, cases: Sequence[EditCase], stable: Sequence[StableFact], out: str,
                         *, dev_cases: Sequence[EditCase] | None = None, **options: Any) -> dict[str, Any]:
        """Train an editor on edit cases and save it to ``out``; returns its training metrics (trainable methods)."""
        raise EditError(f"method {cls.name!r} needs no training", field="method")

    def set_replay(self, facts: Sequence[StableFact]) -> None:
        """Stable facts to replay beside edits (methods with ``replays_stable_train``; default: ignored)."""

    def prepare(self, target: KGETarget) -> None:
        """One-time set-up on a model before editing (e.g. adding slots); default: nothing."""

    @abstractmethod
    def touched(self, target: KGETarget) -> list[str]:
        """Names of the parameters :meth:`edit` may write (they are snapshotted for rollback)."""

    @abstractmethod
    def edit(self, target: KGETarget, cases: EncodedFacts) -> None:
        """Change the model in place so that it predicts the cases' targets."""

    def snapshot(self, target: KGETarget) -> Restorable:
        """The state :meth:`edit` may change, saved now (default: the :meth:`touched` weights)."""
        return WeightSnapshot(target.model, self.touched(target))

    def parameter_counts(self, target: KGETarget) -> dict[str, int]:
        """Parameters the method changes or adds (reported as ``params``)."""
        named = dict(target.model.named_parameters())
        return {"edited": sum(named[n].numel() for n in self.touched(target))}


EDITORS: dict[str, type[Editor]] = {}


def register_editor(cls: type[Editor]) -> type[Editor]:
    """Class decorator: make an editor available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    EDITORS[cls.name] = cls
    return cls


def get_editor(name: str, **kwargs: Any) -> Editor:
    """An editor instance by registered name."""
    if name not in EDITORS:
        raise KGDataError(f"unknown edit method {name!r}; choose one of {', '.join(sorted(EDITORS))}", field="method")
    return EDITORS[name](**kwargs)


@dataclass
class EditHandle:
    """Rolls one applied edit back, restoring the touched weights bit-exactly."""

    snapshot: Restorable
    seconds: float
    rolled_back: bool = False

    def rollback(self) -> None:
        """Restore the weights as they were before the edit."""
        self.snapshot.restore()
        self.rolled_back = True


def _check_cases(target: KGETarget, cases: EncodedFacts, *, require_wrong_prediction: bool) -> None:
    if not len(cases):
        raise EditError("empty edit batch: nothing to edit", field="cases")
    if require_wrong_prediction:
        ranks = target.ranks(cases)
        done = (ranks == 1).nonzero().flatten().tolist()
        if done:
            i = done[0]
            triple = cases.triples[i].tolist()
            raise EditError(
                f"case {i} {triple}: the model already predicts the target entity "
                f"{target.model.entities.label(int(cases.targets[i]))!r}; an edit case must be one it gets wrong",
                field="cases",
            )


def apply_edit(editor: Editor, target: KGETarget, cases: EncodedFacts, *, check: bool = True) -> EditHandle:
    """Apply one batch of edits in place; the handle rolls it back. A failed edit changes nothing."""
    if check:
        _check_cases(target, cases, require_wrong_prediction=True)
    with restoring(editor.snapshot(target)) as snapshot:
        start = time.perf_counter()
        editor.edit(target, cases)
        seconds = time.perf_counter() - start
        for name, param in target.model.named_parameters():
            if name in snapshot.names and not torch.isfinite(param).all():
                raise EditError(f"the edit produced NaN/inf in {name}; the model was restored", field="method")
    return EditHandle(snapshot, seconds)


@dataclass
class EditReport:
    """Metrics of an edit run and the raw ranks behind them."""

    metrics: dict[str, Any]
    edit_ranks_before: torch.Tensor
    edit_ranks_after: torch.Tensor
    stable_ranks_before: torch.Tensor
    stable_ranks_after: torch.Tensor
    handles: list[EditHandle] = field(default_factory=list)

    def rollback(self) -> None:
        """Undo every edit still applied (sequential runs), newest first."""
        for handle in reversed(self.handles):
            if not handle.rolled_back:
                handle.rollback()


def run_edits(
    editor: Editor,
    model: nn.Module,
    cases: Sequence[EditCase],
    stable: Sequence[StableFact],
    *,
    batch_size: int = 2,
    sequential: bool = False,
    check: bool = True,
) -> EditReport:
    """Edit ``cases`` in batches and measure Succ@k, ER_roc, RK@k, RK_roc, time per edit and parameters.

    Per-batch mode (the paper's protocol): each batch is applied to the original model, measured, rolled
    back. Sequential mode: edits accumulate; Succ@k is measured on all cases after the last batch, so a
    later edit undoing an earlier one shows; call ``report.rollback()`` to restore the original model.
    """
    target = KGETarget(model)
    editor.prepare(target)
    edit_facts, stable_facts = target.encode(list(cases)), target.encode(list(stable))
    edit_before = target.ranks(edit_facts)
    stable_before = target.ranks(stable_facts)
    if check:
        already = (edit_before == 1).nonzero().flatten().tolist()
        if already:
            i = already[0]
            raise EditError(f"case {i} {tuple(cases[i].triple)}: the model already predicts the target "
                            f"{cases[i].target!r} ({len(already)} such case(s)); an edit case must be one it gets wrong",
                            field="cases")
    handles: list[EditHandle] = []
    after_parts, stable_after_parts = [], []
    for start in range(0, len(edit_facts), batch_size):
        batch = edit_facts.select(slice(start, start + batch_size))
        handle = apply_edit(editor, target, batch, check=False)
        handles.append(handle)
        if not sequential:
            after_parts.append(target.ranks(batch))
            stable_after_parts.append(target.ranks(stable_facts))
            handle.rollback()
    if sequential:
        edit_after = target.ranks(edit_facts)
        stable_after = target.ranks(stable_facts)
    else:
        edit_after = torch.cat(after_parts)
        # each batch is judged on the whole stable set; pool them for RK@k and the mean-rank ratio
        stable_after = torch.cat(stable_after_parts)
        stable_before = stable_before.repeat(len(stable_after_parts))
    metrics: dict[str, Any] = edit_metrics(edit_before, edit_after, stable_before, stable_after)
    metrics["time_per_edit_s"] = sum(h.seconds for h in handles) / len(edit_facts)
    metrics["params"] = editor.parameter_counts(target)
    metrics.update(method=editor.name, edits=len(edit_facts), stable=len(stable_facts), batch_size=batch_size,
                   sequential=sequential)
    return EditReport(metrics, edit_before, edit_after, stable_before, stable_after, handles if sequential else [])
