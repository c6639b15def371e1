"""The masked-entity KG embedding model: an encoder LM with entity and relation tokens.

An entity's score for a query is ``transform(h_mask) . E[entity] + b[entity]`` where ``E`` is the entity
token embedding table itself (the decoder is tied to the input embeddings, METHODS.md §1).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from kg_data import KnowledgeGraph, Vocabulary
from kg_data.errors import KGDataError
from kg_data.formats import read_json_object, read_text_map, write_text_map

from deltakg.serialization import load_state_into, load_tensors, save_tensors, write_json

from .encoders import encoder_from_config, load_encoder
from .inputs import QueryBuilder, side_code
from .loss import decoder_cross_entropy

__all__ = ["KGEConfig", "MaskedEntityModel"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "deltakg-masked-entity-kge"


@dataclass
class KGEConfig:
    """Everything needed to rebuild a :class:`MaskedEntityModel` (saved as ``config.json``)."""

    encoder: str = "minilm"
    num_entities: int = 0
    num_relations: int = 0
    layers: int | None = None
    max_length: int = 64
    use_text: bool = True
    dataset: str = ""
    base_vocab_size: int = 0
    encoder_config: dict[str, Any] = field(default_factory=dict)
    special_ids: dict[str, int] = field(default_factory=dict)
    # the defaults are the paper's layout, which models saved before these options used
    inverse_relations: bool = False
    readout: str = "mask"
    compact: bool = False

    @property
    def num_relation_tokens(self) -> int:
        """Rows of the relation table: one per relation, twice that with inverse relations."""
        return self.num_relations * (2 if self.inverse_relations else 1)


def _supports_sparse_last_layer(encoder: nn.Module) -> bool:
    # the fast path rebuilds BERT's layer from its parts (transformers 5 layout); other encoders run in full
    try:
        from transformers.masking_utils import create_bidirectional_mask  # noqa: F401
    except ImportError:
        return False
    return type(encoder).__name__ == "BertModel" and not encoder.config.is_decoder


class MaskedEntityModel(nn.Module):
    """Encoder + MLM transform + entity decoder tied to the entity token embeddings."""

    def __init__(
        self,
        config: KGEConfig,
        encoder: nn.Module,
        tokenizer: Any,
        entities: Vocabulary,
        relations: Vocabulary,
        entity_texts: dict[str, str] | None = None,
        relation_texts: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.entities = entities
        self.relations = relations
        self.entity_texts = entity_texts
        self.relation_texts = relation_texts
        hidden = encoder.config.hidden_size
        self.entity_embeddings = nn.Embedding(config.num_entities, hidden)
        self.relation_embeddings = nn.Embedding(config.num_relation_tokens, hidden)
        self.transform = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=encoder.config.layer_norm_eps)
        )
        self.entity_bias = nn.Parameter(torch.zeros(config.num_entities))
        # runtime switch, not saved: compute the last layer only at the decoded position (training turns it on;
        # editors hook every position of a layer's FFN, so it is off by default)
        self.sparse_last_layer = False
        std = encoder.config.initializer_range
        for module in (self.entity_embeddings, self.relation_embeddings):
            nn.init.normal_(module.weight, std=std)
        nn.init.normal_(self.transform[0].weight, std=std)
        nn.init.zeros_(self.transform[0].bias)
        ids = config.special_ids
        self.builder = QueryBuilder(
            base_vocab_size=config.base_vocab_size,
            num_entities=config.num_entities,
            cls_id=ids["cls"],
            sep_id=ids["sep"],
            mask_id=ids["mask"],
            pad_id=ids["pad"],
            max_length=config.max_length,
            entity_tokens=self._tokenize(entities, entity_texts) if config.use_text else None,
            relation_tokens=self._tokenize(relations, relation_texts) if config.use_text else None,
            num_relations=config.num_relations,
            inverse_relations=config.inverse_relations,
            readout=config.readout,
            compact=config.compact,
        )

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def for_graph(
        cls,
        kg: KnowledgeGraph,
        encoder: str = "minilm",
        *,
        layers: int | None = None,
        max_length: int = 64,
        use_text: bool = True,
        dropout: float | None = None,
        init_range: float | None = None,
        inverse_relations: bool = False,
        readout: str = "mask",
        compact: bool = False,
        init_from_text: bool | None = None,
    ) -> "MaskedEntityModel":
        """A fresh model for ``kg``'s vocabularies on top of the named encoder.

        Encoder options: see ``load_encoder``; ``inverse_relations``, ``readout`` and ``compact``: see
        ``deltakg.kge.inputs``.
        ``init_from_text`` starts each entity/relation token at the mean of its text's word embeddings (default: with
        texts and a pretrained encoder); it needs a pretrained encoder, and also works without texts in the input.
        """
        spec = load_encoder(encoder, layers=layers, max_length=max_length, dropout=dropout, init_range=init_range)
        tok = spec.tokenizer
        config = KGEConfig(
            encoder=encoder,
            num_entities=kg.num_entities,
            num_relations=kg.num_relations,
            layers=layers,
            max_length=max_length,
            use_text=use_text,
            dataset=kg.name,
            inverse_relations=inverse_relations,
            readout=readout,
            compact=compact,
            base_vocab_size=spec.model.get_input_embeddings().num_embeddings,
            encoder_config=spec.model.config.to_dict(),
            special_ids={
                "cls": tok.cls_token_id,
                "sep": tok.sep_token_id,
                "mask": tok.mask_token_id,
                "pad": tok.pad_token_id,
            },
        )
        model = cls(config, spec.model, tok, kg.entities, kg.relations, kg.entity_texts, kg.relation_texts)
        if init_from_text is None:
            init_from_text = use_text and spec.pretrained
        if init_from_text:
            if not spec.pretrained:
                raise KGDataError(f"--init-from-text needs a pretrained encoder; {encoder!r} has no trained word "
                                  "embeddings", field="init_from_text")
            model._init_from_text()
        return model

    def _tokenize(self, vocab: Vocabulary, texts: dict[str, str] | None) -> list[list[int]]:
        texts = texts or {}
        strings = [texts.get(label, label) for label in vocab.labels]
        encoded = self.tokenizer(strings, add_special_tokens=False, truncation=True, max_length=self.config.max_length)
        return encoded["input_ids"]

    @torch.no_grad()
    def _init_from_text(self) -> None:
        # a pretrained encoder already knows the words: start each new token at the mean of its text's
        # word embeddings, which PT-KGE otherwise learns in its first stage
        words = self.encoder.get_input_embeddings().weight
        if self.config.use_text:
            entity_tokens, relation_tokens = self.builder.entity_tokens, self.builder.relation_tokens
        else:
            entity_tokens = self._tokenize(self.entities, self.entity_texts)
            relation_tokens = self._tokenize(self.relations, self.relation_texts)
        if self.config.inverse_relations:
            relation_tokens = relation_tokens * 2  # an inverse relation starts from its relation's words
        for table, tokens in ((self.entity_embeddings, entity_tokens),
                              (self.relation_embeddings, relation_tokens)):
            for i, ids in enumerate(tokens):
                if ids:
                    table.weight[i] = words[torch.tensor(ids)].mean(dim=0)

    # ------------------------------------------------------------------------------ forward
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings of mixed base / entity / relation ids."""
        vocab, n_ent = self.config.base_vocab_size, self.config.num_entities
        words = self.encoder.get_input_embeddings()
        out = words(input_ids.clamp(max=vocab - 1))
        is_ent = (input_ids >= vocab) & (input_ids < vocab + n_ent)
        is_rel = input_ids >= vocab + n_ent
        if is_ent.any():
            out = out.masked_scatter(is_ent.unsqueeze(-1), self.entity_embeddings(input_ids[is_ent] - vocab))
        if is_rel.any():
            out = out.masked_scatter(is_rel.unsqueeze(-1), self.relation_embeddings(input_ids[is_rel] - vocab - n_ent))
        return out

    def mask_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_positions: torch.Tensor
    ) -> torch.Tensor:
        """Transformed hidden states at the mask position, ``(b, d)`` (the input of the entity decoder)."""
        if self.sparse_last_layer and _supports_sparse_last_layer(self.encoder):
            return self.transform(self._states_at(input_ids, attention_mask, mask_positions))
        hidden = self.encoder(inputs_embeds=self.embed(input_ids), attention_mask=attention_mask).last_hidden_state
        at_mask = hidden[torch.arange(hidden.shape[0], device=hidden.device), mask_positions]
        return self.transform(at_mask)

    def _states_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # the decoder reads one position, so the last layer needs keys and values of every token but its
        # query, attention output and FFN only there (the FFN is two thirds of a layer's FLOPs)
        from transformers.masking_utils import create_bidirectional_mask

        encoder = self.encoder
        hidden = encoder.embeddings(inputs_embeds=self.embed(input_ids))
        mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=attention_mask)
        *body, last = encoder.encoder.layer
        for layer in body:
            hidden = layer(hidden, mask)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        at = hidden[rows, positions]
        attention = last.attention.self
        b, heads, size = hidden.shape[0], attention.num_attention_heads, attention.attention_head_size
        query = attention.query(at).view(b, heads, 1, size)
        key = attention.key(hidden).view(b, -1, heads, size).transpose(1, 2)
        value = attention.value(hidden).view(b, -1, heads, size).transpose(1, 2)
        context = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask[:, None, None, :].bool(),
            dropout_p=attention.dropout.p if self.training else 0.0, scale=attention.scaling,
        )
        attended = last.attention.output(context.reshape(b, heads * size), at)
        return last.output(last.intermediate(attended), attended)

    def decode(self, states: torch.Tensor) -> torch.Tensor:
        """Scores over all entities from mask states, ``(b, num_entities)``, always in float32."""
        # under bf16 autocast the encoder runs in bf16, but scores of 10^4-10^5 entities in bf16 (8 bits of
        # mantissa) tie far more often and would change ranks
        return self._scores(states, torch.float32)

    def _scores(self, states: torch.Tensor, matmul_dtype: torch.dtype) -> torch.Tensor:
        # float32 scores whose product runs in matmul_dtype (float32 for ranking; bf16 only inside a training loss)
        with torch.autocast(states.device.type, enabled=False):
            weight = self.entity_embeddings.weight.float().to(matmul_dtype)
            return (states.float().to(matmul_dtype) @ weight.t()).float() + self.entity_bias.float()

    def decode_loss(
        self,
        states: torch.Tensor,
        targets: torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        *,
        label_smoothing: float = 0.0,
        fused: bool = True,
        matmul_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Mean cross-entropy of ``decode(states)`` against ``targets`` (see ``decoder_cross_entropy``).

        ``fused=False`` takes ``F.cross_entropy`` over the full score matrix (one target per query only).
        ``matmul_dtype``: the dtype of the decoder's products; the loss itself is always float32.
        """
        if not fused and isinstance(targets, torch.Tensor):
            return F.cross_entropy(self._scores(states, matmul_dtype), targets.to(states.device),
                                   label_smoothing=label_smoothing)
        with torch.autocast(states.device.type, enabled=False):
            return decoder_cross_entropy(states.float(), self.entity_embeddings.weight.float(),
                                         self.entity_bias.float(), targets, label_smoothing=label_smoothing,
                                         matmul_dtype=matmul_dtype)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_positions: torch.Tensor
    ) -> torch.Tensor:
        """Scores over all entities for each masked query, ``(b, num_entities)``."""
        return self.decode(self.mask_states(input_ids, attention_mask, mask_positions))

    def inputs(self, triples: torch.Tensor, sides: torch.Tensor | int | str) -> dict[str, torch.Tensor]:
        """Model inputs for ``(b, 3)`` id triples, hiding ``sides`` ('head'/'tail', 0/1, or per row)."""
        if isinstance(sides, str):
            sides = side_code(sides)
        device = self.entity_bias.device
        return {k: v.to(device) for k, v in self.builder.build(triples.cpu(), sides).items()}

    def score(self, triples: torch.Tensor, side: str, *, chunk: int = 128) -> torch.Tensor:
        """Scores of every entity as the hidden ``side`` of each triple, ``(b, num_entities)``.

        Queries are encoded in chunks of ``chunk`` sorted by length, each padded only to its own longest
        query: with texts, padding a large batch to its longest query wasted a fifth of the encoder's work.
        """
        inputs = self.inputs(triples, side)
        if inputs["input_ids"].shape[0] <= chunk:
            return self(**inputs)
        lengths = inputs["attention_mask"].sum(dim=1)
        order = torch.argsort(lengths, descending=True, stable=True)
        out = None
        for start in range(0, order.numel(), chunk):
            index = order[start : start + chunk]
            width = int(lengths[index].max())
            part = self(inputs["input_ids"][index, :width], inputs["attention_mask"][index, :width],
                        inputs["mask_positions"][index])
            if out is None:
                out = part.new_empty((order.numel(), part.shape[1]))
            out[index] = part
        return out

    # ------------------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config, safetensors weights, tokenizer, vocabularies and texts to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = asdict(self.config)
        config["model_type"] = MODEL_TYPE
        # weights first, config last: a save killed in between leaves the old config, whose model the new
        # weights (same shapes in a training run) still load into
        save_tensors(self.state_dict(), directory / WEIGHTS_NAME, metadata={"format": "pt"})
        write_json(directory / CONFIG_NAME, config)
        self.tokenizer.save_pretrained(str(directory / "tokenizer"))
        self.entities.save(directory / "entities.txt")
        self.relations.save(directory / "relations.txt")
        for name, texts in (("entity2text.txt", self.entity_texts), ("relation2text.txt", self.relation_texts)):
            if texts:
                write_text_map(directory / name, texts)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, map_location: str = "cpu") -> "MaskedEntityModel":
        """Load a model written by :meth:`save_pretrained`; scores are bit-identical."""
        from transformers import AutoTokenizer

        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        raw = read_json_object(config_path, written_by="save_pretrained / deltakg train")
        if raw.pop("model_type", None) != MODEL_TYPE:
            raise KGDataError(f"not a deltakg KGE model (model_type must be {MODEL_TYPE!r})", path=config_path)
        try:
            config = KGEConfig(**raw)
        except TypeError as err:
            raise KGDataError(f"not a config of this deltakg version: {err}", path=config_path) from None
        optional = {n: directory / n for n in ("entity2text.txt", "relation2text.txt")}
        entities = Vocabulary.load(directory / "entities.txt", kind="entity")
        relations = Vocabulary.load(directory / "relations.txt", kind="relation")
        entity_texts = read_text_map(optional["entity2text.txt"], kind="entity") \
            if optional["entity2text.txt"].exists() else None
        relation_texts = read_text_map(optional["relation2text.txt"], kind="relation") \
            if optional["relation2text.txt"].exists() else None
        for vocab, count, name in ((entities, config.num_entities, "entities.txt"),
                                   (relations, config.num_relations, "relations.txt")):
            if len(vocab) != count:
                raise KGDataError(f"holds {len(vocab)} labels but config.json says {count}: files of two models?",
                                  path=directory / name)
        tokenizer_dir = directory / "tokenizer"
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        except Exception as err:  # transformers raises many types for a damaged folder; all mean the same here
            raise KGDataError(f"not a readable tokenizer folder: {str(err).splitlines()[0][:200]}",
                              path=tokenizer_dir) from None
        try:
            model = cls(config, encoder_from_config(config.encoder_config), tokenizer, entities, relations,
                        entity_texts, relation_texts)
        except (TypeError, ValueError, KeyError, RuntimeError) as err:
            if isinstance(err, KGDataError):
                raise
            raise KGDataError(f"the config does not describe a buildable model: {str(err).splitlines()[0][:200]}",
                              path=config_path) from None
        weights = directory / WEIGHTS_NAME
        load_state_into(model, load_tensors(weights, written_by="deltakg train", device=map_location), weights)
        return model.eval()

    def check_vocabulary(self, kg: KnowledgeGraph) -> None:
        """Raise a clear error when ``kg``'s vocabularies are not the ones this model was trained on."""
        for kind, mine, theirs in (("entity", self.entities, kg.entities), ("relation", self.relations, kg.relations)):
            if mine != theirs:
                missing = next((label for label in theirs if label not in mine), None)
                detail = f"e.g. {missing!r} is unknown to the model" if missing else "the id order differs"
                raise KGDataError(
                    f"the model's {kind} vocabulary ({len(mine)}) does not match dataset {kg.name!r} "
                    f"({len(theirs)}): {detail}",
                    field="model",
                )

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameter count."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
