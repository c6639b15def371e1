"""Edit methods; importing this package registers them with :data:`deltakg.editing.editor.EDITORS`."""

from .calinet import CaliNet, CaliNetConfig
from .ft import FineTune
from .kadapter import KAdapter, KAdapterConfig
from .kgeditor import KGEditor, KGEditorConfig
from .knn_memory import KNNMemory, KNNMemoryConfig

__all__ = ["CaliNet", "CaliNetConfig", "FineTune", "KAdapter", "KAdapterConfig", "KGEditor", "KGEditorConfig", "KNNMemory", "KNNMemoryConfig"]
