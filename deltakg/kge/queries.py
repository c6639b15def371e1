"""Training queries with all their answers, for KvsAll training (LibKGE's name; PyKEEN's LCWA).

In 1vsAll training every triple is its own example: a head query ``(?, r, t)`` with ``k`` true heads appears ``k``
times per epoch, each time with one of them as the target and the other ``k - 1`` pushed down as negatives. In
KvsAll training each distinct query appears once per epoch, with all ``k`` training answers as one target
distribution (``1/k`` each). On UMLS the 10,432 triple-sides of an epoch are 1,560 distinct queries, 6.7 answers
each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .inputs import HEAD, TAIL

__all__ = ["QueryTable", "QueryBatch"]


@dataclass
class QueryBatch:
    """Queries as model inputs plus their answers as sparse, per-query normalised target weights."""

    triples: torch.Tensor  # (b, 3); the hidden side holds one of the answers (the input builder ignores it)
    sides: torch.Tensor  # (b,) HEAD or TAIL
    rows: torch.Tensor  # (nnz,) query of each answer
    cols: torch.Tensor  # (nnz,) answer entity
    weights: torch.Tensor  # (nnz,) 1 / number of answers of its query

    @property
    def targets(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``(rows, cols, weights)`` targets that ``decoder_cross_entropy`` takes."""
        return self.rows, self.cols, self.weights


@dataclass
class QueryTable:
    """Every distinct (known entity, relation, hidden side) of a triple set, with its answers in CSR form."""

    queries: torch.Tensor  # (m, 3)
    sides: torch.Tensor  # (m,)
    offsets: torch.Tensor  # (m + 1,)
    answers: torch.Tensor  # (nnz,)

    @classmethod
    def from_triples(cls, triples: torch.Tensor) -> "QueryTable":
        """Group ``(n, 3)`` id triples into tail queries ``(h, r, ?)`` and head queries ``(?, r, t)``."""
        parts = []
        for side, known, hidden in ((TAIL, 0, 2), (HEAD, 2, 0)):
            keys, inverse = torch.unique(triples[:, [known, 1]], dim=0, return_inverse=True)
            order = torch.argsort(inverse, stable=True)
            counts = torch.bincount(inverse, minlength=keys.shape[0])
            answers = triples[order, hidden]
            first = torch.cumsum(counts, 0) - counts
            queries = torch.empty(keys.shape[0], 3, dtype=torch.long)
            queries[:, known], queries[:, 1], queries[:, hidden] = keys[:, 0], keys[:, 1], answers[first]
            parts.append((queries, torch.full((keys.shape[0],), side), counts, answers))
        counts = torch.cat([p[2] for p in parts])
        return cls(
            queries=torch.cat([p[0] for p in parts]),
            sides=torch.cat([p[1] for p in parts]),
            offsets=torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)]),
            answers=torch.cat([p[3] for p in parts]),
        )

    def __len__(self) -> int:
        return self.queries.shape[0]

    def batch(self, index: torch.Tensor | list[int]) -> QueryBatch:
        """The queries at ``index`` with their answers."""
        index = torch.as_tensor(index, dtype=torch.long)
        starts, ends = self.offsets[index], self.offsets[index + 1]
        counts = ends - starts
        rows = torch.repeat_interleave(torch.arange(index.numel()), counts)
        within = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        cols = self.answers[starts[rows] + within]
        return QueryBatch(self.queries[index], self.sides[index], rows, cols, 1.0 / counts[rows].to(torch.float32))
