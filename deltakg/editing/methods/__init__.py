"""Edit methods; importing this package registers them with :data:`deltakg.editing.editor.EDITORS`."""

from .ft import FineTune

__all__ = ["FineTune"]
