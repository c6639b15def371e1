"""LM-based KG embeddings: the masked-entity model, its Lightning shell, and rank-based evaluation.

Submodules are imported on first use of a name (they pull in torch/transformers/Lightning), so that the
command line starts fast: ``from deltakg.kge import MaskedEntityModel`` works and loads the model module then.
"""

from __future__ import annotations

import importlib
from typing import Any

ENCODER_CHOICES = ("minilm", "tiny")
DECODER_DTYPES = ("float32", "bfloat16")  # of the training loss's decoder products
LR_SCHEDULES = ("constant", "linear", "cosine")  # learning-rate decay to 0 at the run's end (after any warm-up)

# public name -> submodule that defines it
_LAZY = {
    "MaskedEntityModel": "model", "KGEConfig": "model",
    "TrainConfig": "training", "TrainResult": "training", "train_model": "training",
    "evaluate_model": "evaluation", "evaluate_ranking": "evaluation", "evaluate_scores": "evaluation",
    "FilterIndex": "evaluation", "LinkPredictionResult": "evaluation",
    "LinkPredictionModule": "lightning", "TripleDataModule": "lightning",
}

__all__ = ["ENCODER_CHOICES", "DECODER_DTYPES", "LR_SCHEDULES", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
