"""Edit methods; importing this package registers them with :data:`deltakg.editing.editor.EDITORS`."""

from .ft import FineTune
from .kgeditor import KGEditor, KGEditorConfig
from .knn_memory import KNNMemory, KNNMemoryConfig

__all__ = ["FineTune", "KGEditor", "KGEditorConfig", "KNNMemory", "KNNMemoryConfig"]
