"""The labelled triple, the unit every part of the package talks in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

__all__ = ["Triple"]


@dataclass(frozen=True, slots=True, order=True)
class Triple:
    """An immutable, hashable (head, relation, tail) fact with string labels."""

    head: str
    relation: str
    tail: str

    def __post_init__(self) -> None:
        for name in ("head", "relation", "tail"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise TypeError(f"Triple.{name} must be a non-empty string, got {value!r}")

    def __iter__(self) -> Iterator[str]:
        yield self.head
        yield self.relation
        yield self.tail

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> str:
        return (self.head, self.relation, self.tail)[index]

    def entity(self, side: str) -> str:
        """The entity on ``side`` ('head' or 'tail')."""
        if side == "head":
            return self.head
        if side == "tail":
            return self.tail
        raise ValueError(f"side must be 'head' or 'tail', got {side!r}")
