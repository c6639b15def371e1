"""The one error type the data layer raises for bad input."""

from __future__ import annotations

from os import PathLike

__all__ = ["KGDataError"]


class KGDataError(ValueError):
    """Bad input data: says which file, line and field, and what was expected.

    Subclasses :class:`ValueError` so that callers that already catch it keep working.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | PathLike | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = self.path or ("<input>" if line is not None else "")
        if line is not None:
            where = f"{where}:{line}"
        text = f"{where}: " if where else ""
        if field is not None:
            text += f"field '{field}': " if where else f"{field}: "
        super().__init__(text + message)
