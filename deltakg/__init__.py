"""deltakg: knowledge editing over triples.

LM-based KG embeddings and the editors that change them; the triple layer lives in :mod:`kg_data`.
The names a user needs are importable from here (loaded on first use, so that the CLI starts fast)::

    from deltakg import MaskedEntityModel, train_model, evaluate_model, KGETarget, get_editor, apply_edit, run_edits
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "MaskedEntityModel": "deltakg.kge.model", "KGEConfig": "deltakg.kge.model",
    "TrainConfig": "deltakg.kge.training", "TrainResult": "deltakg.kge.training", "train_model": "deltakg.kge.training",
    "evaluate_model": "deltakg.kge.evaluation", "evaluate_ranking": "deltakg.kge.evaluation",
    "FilterIndex": "deltakg.kge.evaluation",
    "build_editset": "deltakg.editsets",
    "KGETarget": "deltakg.editing", "EncodedFacts": "deltakg.editing", "Editor": "deltakg.editing",
    "EDITORS": "deltakg.editing", "get_editor": "deltakg.editing", "apply_edit": "deltakg.editing",
    "run_edits": "deltakg.editing", "EditHandle": "deltakg.editing", "EditReport": "deltakg.editing",
    "EditError": "deltakg.editing", "register_editor": "deltakg.editing.editor",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
