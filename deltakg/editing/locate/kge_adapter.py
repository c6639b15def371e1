"""The KG model's locate-and-edit adapter: the key of a KG query is the FFN input at its mask position.

:class:`KGELocateAdapter` wraps a :class:`deltakg.editing.target.KGETarget` so that the same FT-L, ROME,
MEMIT and GRACE that edit causal LMs edit the masked-entity model: a request is an encoded query
(:class:`EncodedFacts`), keys are read and values written at its decoded (mask) position, the target's
loss is the cross-entropy over entity scores, and there are no context prefixes or essence prompts.
Key statistics come from a corpus of queries: the ``corpus`` given (edit cases / stable facts) or, by
default, seeded random (entity, relation, side) queries, the KG analogue of ROME's generic text.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import torch
from torch.nn import functional as F

from ..target import EncodedFacts, KGETarget
from .adapter import ModuleLayout, Probe, register_adapter_factory

__all__ = ["KGE_LAYOUTS", "KGELocateAdapter", "random_queries"]

# module names inside MaskedEntityModel, by the encoder's exact model_type
KGE_LAYOUTS: dict[str, ModuleLayout] = {
    kind: ModuleLayout(ffn_out="encoder.encoder.layer.{}.output.dense", block="encoder.encoder.layer.{}",
                       transposed=False, num_layers="num_hidden_layers")
    for kind in ("bert", "roberta", "electra")
}


def random_queries(num_entities: int, num_relations: int, count: int = 4096, seed: int = 0) -> list[tuple[int, ...]]:
    """``count`` seeded random (head, relation, tail, hidden side) id queries."""
    generator = torch.Generator().manual_seed(seed)
    ents = torch.randint(num_entities, (count, 2), generator=generator)
    rels = torch.randint(num_relations, (count,), generator=generator)
    sides = torch.randint(2, (count,), generator=generator)
    return [(int(h), int(r), int(t), int(s)) for (h, t), r, s in zip(ents.tolist(), rels.tolist(), sides.tolist())]


class KGELocateAdapter:
    """What locate-and-edit methods need from a :class:`MaskedEntityModel`."""

    def __init__(self, target: KGETarget, corpus: Sequence[Any] | None = None) -> None:
        self.target = target
        self.model = target.model
        self.model_type: str = self.model.encoder.config.model_type
        if self.model_type not in KGE_LAYOUTS:
            raise ValueError(f"no FFN layout known for encoder model_type {self.model_type!r}; known: "
                             f"{', '.join(sorted(KGE_LAYOUTS))}")
        self.layout = KGE_LAYOUTS[self.model_type]
        self.corpus = list(corpus) if corpus is not None else random_queries(
            self.model.config.num_entities, self.model.config.num_relations)

    def num_layers(self) -> int:
        """Encoder layers."""
        return int(getattr(self.model.encoder.config, self.layout.num_layers))

    def requests_count(self, requests: EncodedFacts) -> int:
        """How many queries."""
        return len(requests)

    def select(self, requests: EncodedFacts, indices: Sequence[int]) -> EncodedFacts:
        """The queries at ``indices``."""
        return requests.select(torch.tensor(list(indices), dtype=torch.long))

    def labels(self, requests: EncodedFacts) -> list[str]:
        """The target entity of each query."""
        return [str(int(t)) for t in requests.targets]

    def context_prefixes(self, count: int, length: int, seed: int) -> list[str]:
        """A KG query has no text context: keys are the bare query's."""
        return [""]

    def _probe(self, facts: EncodedFacts, targets: Any = None) -> Probe:
        inputs = self.target.inputs(facts)
        positions = inputs["mask_positions"]
        return Probe(inputs, positions, torch.arange(len(facts), device=positions.device), targets)

    def key_probe(self, requests: EncodedFacts, key_position: str, prefixes: Sequence[str]) -> Probe:
        """The queries; the key sits at the mask position whatever ``key_position`` says."""
        return self._probe(requests)

    def target_probe(self, requests: EncodedFacts, key_position: str, prefixes: Sequence[str]) -> Probe:
        """The queries with their target entities."""
        return self._probe(requests, requests.targets.to(self.model.entity_bias.device))

    def essence_probe(self, requests: EncodedFacts, key_position: str) -> Probe | None:
        """None: a KG query has no "{subject} is a" prompt."""
        return None

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Entity scores (b, num_entities), with every encoder layer run at every position (hooks see (b, t, d))."""
        sparse = self.model.sparse_last_layer
        self.model.sparse_last_layer = False
        try:
            return self.model(**inputs)
        finally:
            self.model.sparse_last_layer = sparse

    def target_nll(self, probe: Probe, scores: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each query's target entity, (rows,)."""
        return F.cross_entropy(scores.float(), probe.targets, reduction="none")

    def essence_log_probs(self, probe: Probe, scores: torch.Tensor) -> torch.Tensor:
        """Log-softmax over entities."""
        return scores.float().log_softmax(dim=-1)

    def condition_inputs(self, requests: EncodedFacts, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``<wrong> >> <target> || <query text>`` in the base vocabulary."""
        encoded = self.model.tokenizer(self.target.condition_texts(requests), padding=True, truncation=True,
                                       max_length=max_length, return_tensors="pt")
        device = self.model.entity_bias.device
        return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)

    def condition_embedding(self) -> tuple[torch.Tensor, int]:
        """The encoder's word embeddings and its pad id."""
        return self.model.encoder.get_input_embeddings().weight, int(self.model.config.special_ids["pad"])

    def output_log_probs(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One entity distribution per query (the mask only marks where its key is)."""
        return scores.float().log_softmax(dim=-1)

    def _encode_corpus(self, items: Sequence[Any]) -> EncodedFacts:
        if hasattr(items[0], "triple"):  # EditCase / StableFact
            return self.target.encode(list(items))
        rows = torch.tensor([item[:3] for item in items], dtype=torch.long)
        sides = torch.tensor([item[3] for item in items], dtype=torch.long)
        return EncodedFacts(rows, sides, torch.zeros(len(items), dtype=torch.long))

    def stat_batches(self, corpus: Iterable[Any], batch_size: int) -> Iterator[tuple[dict[str, torch.Tensor],
                                                                                    torch.Tensor]]:
        """The corpus queries in batches; the key of each is the one at its mask position."""
        items = list(corpus)
        for start in range(0, len(items), batch_size):
            inputs = self.target.inputs(self._encode_corpus(items[start:start + batch_size]))
            mask = torch.zeros_like(inputs["attention_mask"], dtype=torch.bool)
            mask[torch.arange(mask.shape[0]), inputs["mask_positions"]] = True
            yield inputs, mask


register_adapter_factory(KGETarget, KGELocateAdapter)
