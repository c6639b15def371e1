"""The adapter between editors and the masked-entity KGE: cases to ids, scores, losses, condition texts.

Editors never touch the model's internals directly; they ask this adapter, so one editor can serve any
model family that provides the same few calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch.nn import functional as F

from deltakg.kge.inputs import HEAD, TAIL
from kg_data.edits import EditCase, StableFact
from kg_data.errors import KGDataError

if TYPE_CHECKING:  # the model module pulls in transformers; the editor registry must load without it
    from deltakg.kge.model import MaskedEntityModel

__all__ = ["EncodedFacts", "KGETarget"]


@dataclass
class EncodedFacts:
    """A batch of queries as ids: ``triples`` (b, 3), hidden ``sides`` (b,), ``targets`` (b,), optional ``wrong`` (b,)."""

    triples: torch.Tensor
    sides: torch.Tensor
    targets: torch.Tensor
    wrong: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def select(self, index: slice | torch.Tensor) -> "EncodedFacts":
        """A sub-batch."""
        return EncodedFacts(
            self.triples[index], self.sides[index], self.targets[index],
            None if self.wrong is None else self.wrong[index],
        )

    @staticmethod
    def cat(parts: Sequence["EncodedFacts"]) -> "EncodedFacts":
        """Concatenate batches."""
        wrong = None if any(p.wrong is None for p in parts) else torch.cat([p.wrong for p in parts])
        return EncodedFacts(torch.cat([p.triples for p in parts]), torch.cat([p.sides for p in parts]),
                            torch.cat([p.targets for p in parts]), wrong)


class KGETarget:
    """What editors need from a :class:`MaskedEntityModel`."""

    def __init__(self, model: "MaskedEntityModel") -> None:
        self.model = model

    # -------------------------------------------------------------------------------- encoding
    def _entity(self, label: str, where: str) -> int:
        if label not in self.model.entities:
            raise KGDataError(f"unknown entity {label!r}: the model's vocabulary does not hold it", field=where)
        return self.model.entities[label]

    def _triple_ids(self, triple, where: str) -> list[int]:
        h, r, t = triple
        if r not in self.model.relations:
            raise KGDataError(f"unknown relation {r!r}: the model's vocabulary does not hold it", field=where)
        return [self._entity(h, where), self.model.relations[r], self._entity(t, where)]

    def encode(self, facts: Sequence[EditCase | StableFact]) -> EncodedFacts:
        """Ids of edit cases or stable facts; an unknown label is a clear error naming the case."""
        if not facts:
            raise KGDataError("no facts to encode (an empty edit set?)", field="cases")
        rows, sides, targets, wrong = [], [], [], []
        for i, fact in enumerate(facts):
            where = f"case {i} {tuple(fact.triple)}"
            rows.append(self._triple_ids(fact.triple, where))
            sides.append(HEAD if fact.masked == "head" else TAIL)
            targets.append(rows[-1][0] if fact.masked == "head" else rows[-1][2])
            w = getattr(fact, "wrong", None)
            wrong.append(self._entity(w, where) if w is not None else -1)
        has_wrong = all(w >= 0 for w in wrong)
        return EncodedFacts(
            torch.tensor(rows, dtype=torch.long), torch.tensor(sides, dtype=torch.long),
            torch.tensor(targets, dtype=torch.long), torch.tensor(wrong, dtype=torch.long) if has_wrong else None,
        )

    # -------------------------------------------------------------------------------- model calls
    def inputs(self, facts: EncodedFacts) -> dict[str, torch.Tensor]:
        """Model inputs of the facts' queries."""
        return self.model.inputs(facts.triples, facts.sides)

    def scores(self, facts: EncodedFacts) -> torch.Tensor:
        """Scores over all entities for each query, (b, num_entities)."""
        return self.model(**self.inputs(facts))

    def loss(self, facts: EncodedFacts, scores: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy of the targets."""
        scores = self.scores(facts) if scores is None else scores
        return F.cross_entropy(scores, facts.targets.to(scores.device))

    @torch.no_grad()
    def ranks(self, facts: EncodedFacts, batch_size: int = 256) -> torch.Tensor:
        """Raw ranks (1 + #entities scored strictly higher) of the targets, float64 (b,)."""
        from .metrics import raw_ranks

        was_training = self.model.training
        self.model.eval()
        out = [raw_ranks(self.scores(facts.select(slice(i, i + batch_size))),
                         facts.targets[i:i + batch_size]) for i in range(0, len(facts), batch_size)]
        self.model.train(was_training)
        return torch.cat(out)

    def condition_texts(self, facts: EncodedFacts) -> list[str]:
        """KE's condition text per case: ``<wrong> >> <target> || <query text>``."""
        ent = self.model.entities.labels
        rel = self.model.relations.labels
        texts = self.model.entity_texts or {}
        rtexts = self.model.relation_texts or {}
        name = lambda e: texts.get(ent[e], ent[e])  # noqa: E731
        out = []
        for i, (h, r, t) in enumerate(facts.triples.tolist()):
            side = int(facts.sides[i])
            known = name(t) if side == HEAD else name(h)
            query = f"[MASK] {rtexts.get(rel[r], rel[r])} {known}" if side == HEAD else \
                f"{known} {rtexts.get(rel[r], rel[r])} [MASK]"
            wrong = name(int(facts.wrong[i])) if facts.wrong is not None else ""
            out.append(f"{wrong} >> {name(int(facts.targets[i]))} || {query}")
        return out
