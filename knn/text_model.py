"""Text classifiers over a BERT-family encoder whose representation feeds the k-NN datastore.

Three heads, found by name in :data:`HEADS`:

- ``cls`` (fine-tuning setting): the representation is the final-layer ``[CLS]`` state; a new linear layer maps it
  to class logits (dropout before it in training).
- ``prompt`` (prompt setting): the input is the task's template with one ``[MASK]``; the representation is the
  final-layer hidden state at the mask. The pretrained all-MiniLM-L6-v2 ships without an MLM head (no transform,
  no output bias), so there is no vocabulary distribution to read; instead a class's logit is the dot product of
  the mask state with its answer word's input embedding, ``logit_c = h_mask . E[w_c]`` (the word-embedding matrix
  used as a tied output layer, no bias). An answer of several word pieces uses the mean of their embeddings.
  Fine-tuning updates that same embedding matrix, so the classifier stays tied. Zero-shot, this head is the
  pretrained model untouched.
- ``sentence`` (zero-shot by similarity, for sentence-embedding encoders such as all-MiniLM-L6-v2): the input is
  the [CLS] text (pair) of ``cls``; the representation is the attention-masked mean of the final hidden states,
  L2-normalised (the pooling the encoder was trained with); a class's logit is ``SCALE * cos(rep, e_c)``, where
  ``e_c`` is the same pooled embedding of the class's label word, computed by the encoder in every forward pass
  so that training keeps it tied. ``SCALE`` is 20, the similarity scale sentence-transformers trains with. No
  new parameter: zero-shot it is the pretrained encoder untouched, and it knows a class from the start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from kg_data.errors import KGDataError

from .text_tasks import TaskSpec, TextExample

__all__ = ["Features", "encode", "TextClassifier", "HEADS", "TEXT_INPUT_HEADS", "SENTENCE_SCALE", "collate"]

_PIECE = re.compile(r"(\{\w+\}|\[MASK\])")


@dataclass
class Features:
    """Token ids of a list of examples (unpadded), the mask position per example (-1 for ``cls``), labels."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    mask_pos: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def _fit(lengths: dict[str, int], budget: int, order: Sequence[str]) -> dict[str, int]:
    """Shorten the fields of ``order`` (the longest first, ties to the earlier) until the total fits ``budget``."""
    lengths = dict(lengths)
    over = sum(lengths.values()) - budget
    while over > 0:
        name = max(order, key=lambda n: (lengths[n], -order.index(n)))
        if lengths[name] == 0:
            raise KGDataError(f"the fixed tokens alone exceed the maximum length ({budget} left for the text)",
                              field="max_length")
        second = max((lengths[n] for n in order if n != name), default=0)
        cut = min(over, max(1, lengths[name] - second))
        lengths[name] -= cut
        over -= cut
    return lengths


def encode(spec: TaskSpec, head: str, examples: Sequence[TextExample], tokenizer, max_length: int) -> Features:
    """Token ids of ``examples`` for ``head``: the [CLS] text (pair) or the filled prompt, truncated to fit."""
    if head not in HEADS:
        raise KGDataError(f"expected one of {', '.join(HEADS)}, got {head!r}", field="head")
    cls_id, sep_id, mask_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
    text_input = head in TEXT_INPUT_HEADS
    names = spec.pair if text_input else tuple(p[1:-1] for p in _PIECE.findall(spec.template) if p[0] == "{")
    texts = {name: tokenizer([e.fields[name] for e in examples], add_special_tokens=False)["input_ids"]
             for name in dict.fromkeys(names)} if examples else {}
    out = Features([], [], [], [e.label for e in examples])
    if text_input:
        budget = max_length - 1 - len(names)
        for i in range(len(examples)):
            keep = _fit({n: len(texts[n][i]) for n in names}, budget, [n for n in spec.truncate if n in names]
                        or list(names))
            ids, types = [cls_id], [0]
            for segment, n in enumerate(names):
                ids += texts[n][i][:keep[n]] + [sep_id]
                types += [segment] * (keep[n] + 1)
            out.input_ids.append(ids)
            out.token_type_ids.append(types)
            out.mask_pos.append(-1)
        return out
    pieces = [p for p in _PIECE.split(spec.template) if p.strip()]
    fixed = {p: tokenizer(p, add_special_tokens=False)["input_ids"] for p in pieces if not _PIECE.fullmatch(p)}
    n_fixed = sum(len(fixed[p]) for p in pieces if p in fixed) + 3  # [CLS], [MASK], [SEP]
    order = [n for n in spec.truncate if n in names] + [n for n in names if n not in spec.truncate]
    for i in range(len(examples)):
        keep = _fit({n: len(texts[n][i]) for n in dict.fromkeys(names)}, max_length - n_fixed, order)
        ids, mask_pos = [cls_id], -1
        for p in pieces:
            if p == "[MASK]":
                mask_pos = len(ids)
                ids.append(mask_id)
            elif p in fixed:
                ids += fixed[p]
            else:
                ids += texts[p[1:-1]][i][:keep[p[1:-1]]]
        ids.append(sep_id)
        out.input_ids.append(ids)
        out.token_type_ids.append([0] * len(ids))
        out.mask_pos.append(mask_pos)
    return out


def collate(features: Features, rows: Sequence[int], pad_id: int = 0) -> dict[str, Tensor]:
    """A padded batch of ``rows`` (input_ids, attention_mask, token_type_ids, mask_pos, labels, index)."""
    width = max(len(features.input_ids[r]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    types = torch.zeros_like(ids)
    attention = torch.zeros_like(ids)
    for j, r in enumerate(rows):
        n = len(features.input_ids[r])
        ids[j, :n] = torch.tensor(features.input_ids[r])
        types[j, :n] = torch.tensor(features.token_type_ids[r])
        attention[j, :n] = 1
    return {"input_ids": ids, "attention_mask": attention, "token_type_ids": types,
            "mask_pos": torch.tensor([features.mask_pos[r] for r in rows]),
            "labels": torch.tensor([features.labels[r] for r in rows]), "index": torch.tensor(list(rows))}


def _cls_state(hidden: Tensor, mask_pos: Tensor, attention_mask: Tensor) -> Tensor:
    return hidden[:, 0]


def _mask_state(hidden: Tensor, mask_pos: Tensor, attention_mask: Tensor) -> Tensor:
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), mask_pos]


def _mean_state(hidden: Tensor, mask_pos: Tensor, attention_mask: Tensor) -> Tensor:
    weight = attention_mask.to(hidden.dtype)[..., None]
    pooled = (hidden * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)
    return nn.functional.normalize(pooled, dim=-1)


HEADS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {"cls": _cls_state, "prompt": _mask_state,
                                                               "sentence": _mean_state}
"""Where each head reads its representation from the final hidden states (batch, length, d) -> (batch, d)."""

TEXT_INPUT_HEADS = ("cls", "sentence")
"""Heads whose input is the plain text (pair) with [CLS] and [SEP]; the others read the filled prompt."""

SENTENCE_SCALE = 20.0
"""The ``sentence`` head's logit scale on cosine similarities (sentence-transformers' default)."""


class TextClassifier(nn.Module):
    """Encoder + head: ``forward`` returns the representation (batch, d) and the class logits (batch, C)."""

    def __init__(self, encoder: nn.Module, head: str, n_classes: int,
                 answer_ids: Sequence[Sequence[int]] | None = None, dropout: float = 0.1,
                 special_ids: tuple[int, int, int] | None = None) -> None:
        """``answer_ids``: each class's answer word pieces (``prompt`` and ``sentence``); ``special_ids``: the
        tokenizer's (cls, sep, pad) ids, which the ``sentence`` head wraps the label words in."""
        super().__init__()
        if head not in HEADS:
            raise KGDataError(f"expected one of {', '.join(HEADS)}, got {head!r}", field="head")
        self.encoder, self.head = encoder, head
        hidden = encoder.config.hidden_size
        if head == "cls":
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(hidden, n_classes)
            nn.init.normal_(self.classifier.weight, std=encoder.config.initializer_range)
            nn.init.zeros_(self.classifier.bias)
        else:
            if answer_ids is None or len(answer_ids) != n_classes or any(not ids for ids in answer_ids):
                raise KGDataError(f"the {head} head needs a non-empty answer token list per class",
                                  field="answer_ids")
            width = max(len(ids) for ids in answer_ids)
            table = torch.zeros(n_classes, width, dtype=torch.long)
            weight = torch.zeros(n_classes, width)
            for c, ids in enumerate(answer_ids):
                table[c, :len(ids)] = torch.tensor(list(ids))
                weight[c, :len(ids)] = 1.0 / len(ids)
            self.register_buffer("answer_table", table, persistent=False)
            self.register_buffer("answer_weight", weight, persistent=False)
        if head == "sentence":
            if special_ids is None:
                raise KGDataError("the sentence head needs the tokenizer's (cls, sep, pad) ids", field="special_ids")
            cls_id, sep_id, pad_id = special_ids
            rows = [[cls_id, *ids, sep_id] for ids in answer_ids]
            label_ids = torch.full((n_classes, width + 2), pad_id, dtype=torch.long)
            for c, row in enumerate(rows):
                label_ids[c, :len(row)] = torch.tensor(row)
            self.register_buffer("label_ids", label_ids, persistent=False)
            self.register_buffer("label_attention", (torch.arange(width + 2)[None, :] < torch.tensor(
                [len(r) for r in rows])[:, None]).long(), persistent=False)

    def answer_embeddings(self) -> Tensor:
        """(C, d): each class's answer as the mean input embedding of its word pieces (tied output layer)."""
        words = self.encoder.get_input_embeddings().weight[self.answer_table]  # (C, width, d)
        return (words * self.answer_weight[..., None]).sum(dim=1)

    def label_sentence_embeddings(self) -> Tensor:
        """(C, d): the ``sentence`` head's class vectors, each label word encoded as ``[CLS] word [SEP]`` and pooled."""
        hidden = self.encoder(input_ids=self.label_ids, attention_mask=self.label_attention,
                              token_type_ids=torch.zeros_like(self.label_ids)).last_hidden_state
        return _mean_state(hidden, self.label_ids.new_zeros(len(self.label_ids)), self.label_attention)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor,
                mask_pos: Tensor) -> tuple[Tensor, Tensor]:
        """(representation (batch, d), logits (batch, C))."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        rep = HEADS[self.head](hidden, mask_pos, attention_mask)
        if self.head == "cls":
            return rep, self.classifier(self.dropout(rep))
        if self.head == "sentence":
            return rep, SENTENCE_SCALE * rep @ self.label_sentence_embeddings().T
        return rep, rep @ self.answer_embeddings().T
