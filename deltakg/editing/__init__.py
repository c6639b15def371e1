"""Editing trained KG embeddings: the model-agnostic core (API, metrics, rollback) and the methods."""

from . import locate, methods  # noqa: F401  (register the editors)
from .editor import EDITORS, EditError, EditHandle, EditReport, Editor, apply_edit, get_editor, run_edits
from .metrics import edit_metrics
from .target import EncodedFacts, KGETarget
from .weights import WeightSnapshot

__all__ = ["EDITORS", "EditError", "EditHandle", "EditReport", "Editor", "EncodedFacts", "KGETarget",
           "WeightSnapshot", "apply_edit", "edit_metrics", "get_editor", "run_edits"]
