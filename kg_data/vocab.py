"""Label <-> id vocabularies for entities and relations."""

from __future__ import annotations

import os
from typing import Iterable, Iterator, Mapping, Sequence

from .errors import KGDataError
from .formats import read_labels, write_labels

__all__ = ["Vocabulary"]


class Vocabulary:
    """An ordered, immutable mapping between labels and contiguous integer ids ``0..n-1``.

    ``Vocabulary.from_labels`` sorts, as PyKEEN does, so the same labels always give the same ids.
    """

    __slots__ = ("_labels", "_index", "kind")

    def __init__(self, labels: Sequence[str], *, kind: str = "label") -> None:
        self._labels = tuple(labels)
        self._index = {label: i for i, label in enumerate(self._labels)}
        self.kind = kind
        if len(self._index) != len(self._labels):
            seen: set[str] = set()
            repeated = next(label for label in self._labels if label in seen or seen.add(label))
            raise KGDataError(f"{kind} {repeated!r} appears twice in the vocabulary", field=kind)

    @classmethod
    def from_labels(cls, labels: Iterable[str], *, kind: str = "label") -> "Vocabulary":
        """Sorted unique labels -> ids (deterministic, PyKEEN's order)."""
        return cls(sorted(set(labels)), kind=kind)

    @classmethod
    def from_mapping(cls, label_to_id: Mapping[str, int], *, kind: str = "label") -> "Vocabulary":
        """From a ``label -> id`` dict whose ids are exactly ``0..n-1`` (e.g. PyKEEN's ``entity_to_id``)."""
        labels: list[str | None] = [None] * len(label_to_id)
        for label, index in label_to_id.items():
            if not 0 <= index < len(labels) or labels[index] is not None:
                raise KGDataError(f"ids must be exactly 0..{len(labels) - 1}; got {index} for {label!r}", field=kind)
            labels[index] = label
        return cls(labels, kind=kind)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | os.PathLike, *, kind: str = "label") -> "Vocabulary":
        """Read one label per line; the line order gives the ids."""
        return cls(read_labels(path, kind=kind), kind=kind)

    def save(self, path: str | os.PathLike) -> None:
        """Write one label per line in id order."""
        write_labels(path, self._labels)

    @property
    def labels(self) -> tuple[str, ...]:
        """Labels in id order."""
        return self._labels

    def to_dict(self) -> dict[str, int]:
        """A fresh ``label -> id`` dict."""
        return dict(self._index)

    def id(self, label: str) -> int:
        """The id of ``label``; a clear error when it is unknown."""
        try:
            return self._index[label]
        except KeyError:
            raise KGDataError(f"unknown {self.kind} {label!r}", field=self.kind) from None

    def ids(self, labels: Iterable[str]) -> list[int]:
        """Ids of several labels."""
        index = self._index
        try:
            return [index[label] for label in labels]
        except KeyError as err:
            raise KGDataError(f"unknown {self.kind} {err.args[0]!r}", field=self.kind) from None

    def label(self, index: int) -> str:
        """The label with id ``index``."""
        return self._labels[index]

    def __getitem__(self, label: str) -> int:
        return self._index[label]

    def __contains__(self, label: object) -> bool:
        return label in self._index

    def __len__(self) -> int:
        return len(self._labels)

    def __iter__(self) -> Iterator[str]:
        return iter(self._labels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._labels == other._labels

    def __hash__(self) -> int:
        return hash(self._labels)

    def __repr__(self) -> str:
        return f"Vocabulary({self.kind}, n={len(self)})"
