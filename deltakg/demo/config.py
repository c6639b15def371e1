"""The sizes of every ``deltakg demo`` stage: ``fast`` (3.1 minutes measured on 2 shared CPU cores) and ``full``
(18 minutes measured at load average 11; about 10 estimated on two free cores).

Every stage's settings are plain data; a stage's result in ``OUT/stages/NAME.json`` is reused only while
its settings (and those of the stages it builds on) are unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["KGStage", "EditSetStage", "EditsStage", "LLMStage", "KNNStage", "DemoConfig"]


@dataclass(frozen=True)
class KGStage:
    """The base KG model on UMLS (tiny encoder, no texts; the small-graph layout of benchmarks/quality.py)."""

    epochs: int = 10
    batch_size: int = 128
    layers: int = 1
    weight_decay: float = 0.3
    seed: int = 0


@dataclass(frozen=True)
class EditSetStage:
    """E-UMLS: corrupted single-answer facts the base model learnt (``deltakg editset build --kind edit``)."""

    size: int = 60
    candidates: int = 240
    stable_size: int = 120
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    layers: int = 2  # MEMIT edits the last two layers
    seed: int = 0


@dataclass(frozen=True)
class EditsStage:
    """Every KG editor of the registry on E-UMLS (:func:`deltakg.editing.benchmark.benchmark_edits`)."""

    batch_sizes: tuple[int, ...] = (1, 2)
    seeds: tuple[int, ...] = (0,)
    tune_budget: int = 2
    editor_epochs: int | None = 2
    sequential: int = 10


@dataclass(frozen=True)
class LLMStage:
    """A small GPT-2 trained on UMLS's single-answer facts, edited by every causal-LM method of the registry."""

    n_embd: int = 128
    n_layer: int = 2
    n_head: int = 4
    vocab_size: int = 1000
    epochs: int = 60
    batch_size: int = 32
    n_edits: int = 10
    seed: int = 0


@dataclass(frozen=True)
class KNNStage:
    """kNN-KGE over the base model's training queries; k, T and lambda chosen on (a subset of) valid."""

    valid_subset: int | None = 300


@dataclass(frozen=True)
class DemoConfig:
    """All stages' settings; :meth:`fast` and :meth:`full` are the two sizes ``deltakg demo`` offers."""

    fast: bool = True
    kg: KGStage = field(default_factory=KGStage)
    editset: EditSetStage = field(default_factory=EditSetStage)
    edits: EditsStage = field(default_factory=EditsStage)
    llm: LLMStage = field(default_factory=LLMStage)
    knn: KNNStage = field(default_factory=KNNStage)

    @classmethod
    def for_size(cls, fast: bool) -> "DemoConfig":
        """The ``--fast`` sizes, or the default (full) ones."""
        if fast:
            return cls()
        return cls(fast=False, kg=KGStage(epochs=40), editset=EditSetStage(size=200, candidates=600, stable_size=300),
                   edits=EditsStage(batch_sizes=(1, 2, 4, 8), seeds=(0,), tune_budget=3, editor_epochs=8,
                                    sequential=40),
                   llm=LLMStage(n_edits=30), knn=KNNStage(valid_subset=None))

    def settings(self, stage: str) -> dict[str, Any]:
        """One stage's settings as JSON-ready data."""
        return asdict(getattr(self, stage))
