"""Masked link-prediction queries as token ids.

Token ids ``< V`` are the base vocabulary; ``V + e`` is entity ``e``'s token and ``V + E + r`` relation
``r``'s token. Layouts (METHODS.md §1), text parts optional:

- tail query: ``[CLS] [ENT_h] <head text> [SEP] <relation words> [REL_r] [SEP] [MASK] [SEP]``
- head query: ``[CLS] [MASK] [SEP] <relation words> [REL_r] [SEP] [ENT_t] <tail text> [SEP]``

Options beyond the paper's layout:

- ``inverse_relations``: head queries carry their own token ``[REL_r^-1]`` (id ``V + E + R + r``), as
  KGEs that train on reciprocal triples do, instead of telling the direction only by where ``[MASK]`` stands.
- ``readout="entity"``: the decoded position (``mask_positions``) is the known entity's token instead of
  ``[MASK]``. Its residual stream starts from the entity itself and its attention query depends on the
  entity from the first layer on; on UMLS this generalised markedly better (docs/BENCHMARKS.md).
- ``compact``: no ``[CLS]`` / ``[SEP]``: ``[ENT_h] <head text> <relation words> [REL_r] [MASK]`` and
  ``[MASK] <relation words> [REL_r] [ENT_t] <tail text>``. Without texts a query is 3 tokens instead of 7,
  which more than halves the encoder's work per query.

Texts are tokenised once; a query is assembled from cached id lists and truncated longest-first.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["QueryBuilder", "HEAD", "TAIL", "READOUTS", "side_code"]

HEAD, TAIL = 0, 1
READOUTS = ("mask", "entity")


def side_code(side: str) -> int:
    """0 for 'head' (the head is hidden), 1 for 'tail'."""
    if side == "head":
        return HEAD
    if side == "tail":
        return TAIL
    raise ValueError(f"side must be 'head' or 'tail', got {side!r}")


def _fit(a: int, b: int, budget: int) -> tuple[int, int]:
    # longest-first truncation of two spans to a shared budget, in closed form
    if a + b <= budget:
        return a, b
    if min(a, b) <= budget // 2:
        return (a, budget - a) if a <= b else (budget - b, b)
    half = budget // 2
    return budget - half, half


class QueryBuilder:
    """Builds padded input tensors for head/tail queries over a fixed entity/relation vocabulary."""

    def __init__(
        self,
        *,
        base_vocab_size: int,
        num_entities: int,
        cls_id: int,
        sep_id: int,
        mask_id: int,
        pad_id: int,
        max_length: int = 64,
        entity_tokens: Sequence[Sequence[int]] | None = None,
        relation_tokens: Sequence[Sequence[int]] | None = None,
        num_relations: int = 0,
        inverse_relations: bool = False,
        readout: str = "mask",
        compact: bool = False,
    ) -> None:
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        if inverse_relations and num_relations <= 0:
            raise ValueError("inverse_relations needs num_relations (the offset of the inverse tokens)")
        self.base_vocab_size = base_vocab_size
        self.num_entities = num_entities
        self.num_relations = num_relations
        self.inverse_relations = inverse_relations
        self.readout = readout
        self.cls_id, self.sep_id, self.mask_id, self.pad_id = cls_id, sep_id, mask_id, pad_id
        self.max_length = max_length
        self.entity_tokens = [list(t) for t in entity_tokens] if entity_tokens is not None else None
        self.relation_tokens = [list(t) for t in relation_tokens] if relation_tokens is not None else None
        self.compact = compact
        self._fixed = 3 if compact else 7  # ENT, REL, MASK (+ CLS and three SEPs)
        if max_length < self._fixed:
            raise ValueError(f"max_length must be at least {self._fixed}, got {max_length}")

    def entity_id(self, entity: int) -> int:
        """Token id of an entity."""
        return self.base_vocab_size + entity

    def relation_id(self, relation: int, side: int = TAIL) -> int:
        """Token id of a relation in a query hiding ``side`` (the inverse relation's for head queries, if on)."""
        if self.inverse_relations and side == HEAD:
            relation += self.num_relations
        return self.base_vocab_size + self.num_entities + relation

    def _sequence(self, entity: int, relation: int, side: int) -> tuple[list[int], int]:
        text = self.entity_tokens[entity] if self.entity_tokens is not None else []
        words = self.relation_tokens[relation] if self.relation_tokens is not None else []
        n_text, n_words = _fit(len(text), len(words), self.max_length - self._fixed)
        rel_part = words[:n_words] + [self.relation_id(relation, side), self.sep_id]
        ent_part = [self.entity_id(entity)] + text[:n_text]
        entity_at = self.readout == "entity"
        if self.compact:
            if side == TAIL:
                ids = ent_part + rel_part[:-1] + [self.mask_id]
                return ids, 0 if entity_at else len(ids) - 1
            ids = [self.mask_id] + rel_part[:-1] + ent_part
            return ids, len(rel_part) if entity_at else 0
        if side == TAIL:
            ids = [self.cls_id] + ent_part + [self.sep_id] + rel_part + [self.mask_id, self.sep_id]
            return ids, 1 if entity_at else len(ids) - 2
        ids = [self.cls_id, self.mask_id, self.sep_id] + rel_part + ent_part + [self.sep_id]
        return ids, 3 + len(rel_part) if entity_at else 1

    def build(self, triples: torch.Tensor, sides: torch.Tensor | int) -> dict[str, torch.Tensor]:
        """Inputs for ``(b, 3)`` id triples; ``sides`` (per row or one for all) says which side is hidden.

        ``mask_positions`` is the decoded position of each row: its ``[MASK]``, or under ``readout="entity"``
        its known entity's token.
        """
        rows = triples.tolist()
        if isinstance(sides, int):
            side_list = [sides] * len(rows)
        else:
            side_list = sides.tolist()
        seqs, positions = [], []
        for (h, r, t), side in zip(rows, side_list):
            ids, pos = self._sequence(h if side == TAIL else t, r, side)
            seqs.append(ids)
            positions.append(pos)
        return self._pad(seqs, positions)

    def _pad(self, seqs: list[list[int]], positions: list[int]) -> dict[str, torch.Tensor]:
        width = max((len(s) for s in seqs), default=0)
        # one tensor from padded lists: a row-by-row copy cost two small tensor copies per query
        padded = [ids + [self.pad_id] * (width - len(ids)) for ids in seqs]
        masks = [[1] * len(ids) + [0] * (width - len(ids)) for ids in seqs]
        return {
            "input_ids": torch.tensor(padded, dtype=torch.long).view(len(seqs), width),
            "attention_mask": torch.tensor(masks, dtype=torch.long).view(len(seqs), width),
            "mask_positions": torch.tensor(positions, dtype=torch.long),
        }

    def description(self, entities: torch.Tensor, prefix: Sequence[int], suffix: Sequence[int]) -> dict[str, torch.Tensor]:
        """PT-KGE stage-1 inputs: ``[CLS] <prefix> [MASK] <suffix> <entity text> [SEP]`` per entity."""
        budget = self.max_length - 3 - len(prefix) - len(suffix)
        seqs = []
        for e in entities.tolist():
            text = (self.entity_tokens[e] if self.entity_tokens is not None else [])[: max(budget, 0)]
            seqs.append([self.cls_id, *prefix, self.mask_id, *suffix, *text, self.sep_id])
        return self._pad(seqs, [1 + len(prefix)] * len(seqs))
