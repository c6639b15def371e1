"""A small GPT-2 trained from a config on verbalised single-answer facts, so that it knows what we edit.

:func:`train_toy_model` takes facts (:mod:`llm_editing.facts`), trains a byte-level BPE tokenizer on their
sentences with the ``tokenizers`` library (GPT-2's byte-level pre-tokenizer without a prefix space, so a
word inside a sentence keeps its leading space and subject lookup finds it), wraps it as a
``PreTrainedTokenizerFast`` that prepends ``<|bos|>``, and trains a ``GPT2LMHeadModel`` built from a
``GPT2Config`` whose bos/eos/pad ids are the tokenizer's (GPT2Config's defaults, 50256, would point past a
small vocabulary) with a LightningModule + Trainer on every wording of every fact (:meth:`Fact.sentences`).

:func:`save_toy_model` writes a folder that ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` read, plus ``facts.jsonl`` (what it was trained on, with templates) and
``toy.json`` (the config, the greedy reproduction shares and the training time); :func:`load_toy_model`
reads it all back. The reproduction share is the fraction of facts whose greedy generation from the prompt
is exactly the answer (:func:`llm_editing.metrics.exact_match`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from kg_data.errors import KGDataError
from kg_data.files import write_text_atomic

from .facts import Fact, read_facts_jsonl, write_facts_jsonl
from .metrics import MetricsConfig, exact_match

__all__ = [
    "ToyConfig",
    "ToyModel",
    "SPECIAL_TOKENS",
    "train_tokenizer",
    "build_model",
    "train_toy_model",
    "reproduction",
    "save_toy_model",
    "load_toy_model",
    "FACTS_FILE",
    "META_FILE",
]

logger = logging.getLogger(__name__)

FACTS_FILE = "facts.jsonl"
META_FILE = "toy.json"
SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}


@dataclass(frozen=True)
class ToyConfig:
    """Size and training of the toy GPT-2 (defaults: ~3 min on 2 CPU cores for 2,000 facts, >= 0.95 reproduced)."""

    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    vocab_size: int = 4096  # BPE merges stop earlier when the text has fewer distinct pieces
    n_positions: int = 64
    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("n_embd", "n_layer", "n_head", "vocab_size", "n_positions", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ToyConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"ToyConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.vocab_size < 300:
            raise ValueError(f"ToyConfig.vocab_size must be >= 300 (256 bytes + special tokens), got {self.vocab_size}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.warmup_fraction < 1:
            raise ValueError("ToyConfig: lr must be > 0, weight_decay >= 0, warmup_fraction in [0, 1)")

    def model_fields(self) -> dict[str, Any]:
        """The ``GPT2Config`` fields this config sets."""
        return {"n_embd": self.n_embd, "n_layer": self.n_layer, "n_head": self.n_head, "n_positions": self.n_positions}


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``; it prepends ``<|bos|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    # no prefix space: a sentence's first word has none, every later word keeps its own (" Paris")
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = list(SPECIAL_TOKENS.values())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, core.token_to_id(bos))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
    tokenizer.padding_side = "right"
    return tokenizer


def build_model(config: ToyConfig, tokenizer: Any) -> Any:
    """A freshly initialised ``GPT2LMHeadModel`` sized by ``config`` for ``tokenizer``'s vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(config.seed)
    gpt2 = GPT2Config(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        **config.model_fields(),
    )
    return GPT2LMHeadModel(gpt2)


def _encode(tokenizer: Any, texts: Sequence[str], n_positions: int) -> list[list[int]]:
    rows = [list(ids) + [tokenizer.eos_token_id] for ids in tokenizer(list(texts))["input_ids"]]
    too_long = [t for t, r in zip(texts, rows) if len(r) > n_positions]
    if too_long:
        raise KGDataError(f"{len(too_long)} sentence(s) exceed n_positions={n_positions} tokens, e.g. "
                          f"{too_long[0]!r}: raise --n-positions", field="n_positions")
    return rows


def _lightning_module(model: Any, config: ToyConfig, total_steps: int) -> Any:
    import pytorch_lightning as pl

    class ToyLM(pl.LightningModule):
        """Causal-LM training of the toy GPT-2 (the model itself stays a plain HF module)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            loss = self.model(**batch).loss
            self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch["input_ids"].shape[0])
            return loss

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
            warmup = max(1, int(config.warmup_fraction * total_steps))

            def schedule(step: int) -> float:  # linear warm-up, cosine decay to 0
                if step < warmup:
                    return (step + 1) / warmup
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

            lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}

    return ToyLM()


def _loader(rows: list[list[int]], pad_id: int, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    def collate(batch: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(r) for r in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(batch):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        labels = ids.masked_fill(mask == 0, -100)  # pads never count in the loss
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=True, collate_fn=collate, generator=generator)


@dataclass
class ToyModel:
    """A trained toy model: the HF model and tokenizer, its facts, config and measured numbers."""

    model: Any
    tokenizer: Any
    facts: list[Fact]
    config: ToyConfig
    metrics: dict[str, Any] = field(default_factory=dict)


def reproduction(model: Any, tokenizer: Any, facts: Sequence[Fact], *, batch_size: int = 64) -> dict[str, float]:
    """Shares of ``facts`` whose greedy generation is exactly the answer: from the prompt, and from the rephrasings."""
    config = MetricsConfig(batch_size=batch_size, fluency_tokens=0)
    prompt = exact_match(model, tokenizer, [f.prompt for f in facts], [f.answer for f in facts], config)
    reph = [(p, f.answer) for f in facts for p in f.rephrase_prompts]
    rephrased = exact_match(model, tokenizer, [p for p, _ in reph], [a for _, a in reph], config) if reph else []
    return {"reproduced": sum(prompt) / max(1, len(prompt)),
            "reproduced_rephrased": sum(rephrased) / len(rephrased) if rephrased else float("nan")}


def train_toy_model(facts: Sequence[Fact], config: ToyConfig = ToyConfig()) -> ToyModel:
    """Train tokenizer and GPT-2 on every wording of ``facts``; measure how many facts it reproduces."""
    import pytorch_lightning as pl

    if not facts:
        raise KGDataError("no facts to train on", field="n_facts")
    texts = [s for f in facts for s in f.sentences()]
    started = time.perf_counter()
    tokenizer = train_tokenizer(texts, config.vocab_size)
    rows = _encode(tokenizer, texts, config.n_positions)
    model = build_model(config, tokenizer)
    loader = _loader(rows, tokenizer.pad_token_id, config.batch_size, config.seed)
    total_steps = config.epochs * len(loader)
    module = _lightning_module(model, config, total_steps)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=config.epochs, logger=False,
                         enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=config.progress, num_sanity_val_steps=0, deterministic=True)
    pl.seed_everything(config.seed, verbose=False)
    trainer.fit(module, loader)
    train_seconds = time.perf_counter() - started
    model.eval()
    metrics: dict[str, Any] = dict(reproduction(model, tokenizer, facts))
    metrics.update(train_seconds=train_seconds, n_facts=len(facts), n_sentences=len(texts),
                   vocab_size=len(tokenizer), parameters=sum(p.numel() for p in model.parameters()),
                   final_loss=float(trainer.callback_metrics.get("loss", float("nan"))), steps=total_steps)
    return ToyModel(model, tokenizer, list(facts), config, metrics)


def save_toy_model(toy: ToyModel, directory: str | os.PathLike) -> Path:
    """Write model, tokenizer, ``facts.jsonl`` and ``toy.json`` into ``directory`` (HF ``save_pretrained`` layout)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    toy.model.save_pretrained(directory)
    toy.tokenizer.save_pretrained(directory)
    write_facts_jsonl(directory / FACTS_FILE, toy.facts)
    meta = {"config": asdict(toy.config), "metrics": toy.metrics}
    write_text_atomic(directory / META_FILE, json.dumps(meta, indent=2) + "\n")
    return directory


def load_toy_model(directory: str | os.PathLike) -> ToyModel:
    """Read a folder written by :func:`save_toy_model`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(directory)
    for name in (FACTS_FILE, META_FILE, "config.json"):
        if not (directory / name).is_file():
            raise KGDataError(f"not a toy model folder: {name} is missing (written by llm-train-toy)", path=directory)
    try:
        meta = json.loads((directory / META_FILE).read_text())
        config = ToyConfig(**meta["config"])
    except (ValueError, KeyError, TypeError) as err:
        raise KGDataError(f"unreadable toy config: {err}", path=directory / META_FILE) from None
    model = AutoModelForCausalLM.from_pretrained(directory)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return ToyModel(model, tokenizer, read_facts_jsonl(directory / FACTS_FILE), config, meta.get("metrics", {}))
