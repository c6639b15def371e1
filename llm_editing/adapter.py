"""The causal-LM adapter: how edit requests become inputs for GPT-2, Llama or any listed family.

:class:`CausalLMTarget` implements :class:`deltakg.editing.locate.adapter.LocateAdapter`, so the one FT-L,
ROME, MEMIT and GRACE in ``deltakg.editing.locate`` edit causal LMs through it. Per-family module names are
data (:data:`CAUSAL_LM_LAYOUTS`, keyed by the exact ``config.model_type``); an unknown type is an error.

Conventions (those of ``llm_editing.metrics``): a request is scored as ``prompt + " " + target_new``, split
into prompt and target tokens by :func:`llm_editing.metrics.encode_pair`; batches are right-padded and pads
never count.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from deltakg.editing.locate.adapter import KEY_POSITIONS, ModuleLayout, Probe
from kg_data.errors import KGDataError

from .metrics import encode_pair
from .requests import EditRequest

__all__ = ["CAUSAL_LM_LAYOUTS", "CausalLMTarget", "layout_for"]

CAUSAL_LM_LAYOUTS: dict[str, ModuleLayout] = {
    # GPT-2's Conv1D stores its weight as (in, out)
    "gpt2": ModuleLayout(ffn_out="transformer.h.{}.mlp.c_proj", block="transformer.h.{}", transposed=True,
                         num_layers="n_layer"),
    "llama": ModuleLayout(ffn_out="model.layers.{}.mlp.down_proj", block="model.layers.{}", transposed=False,
                          num_layers="num_hidden_layers"),
    "mistral": ModuleLayout(ffn_out="model.layers.{}.mlp.down_proj", block="model.layers.{}", transposed=False,
                            num_layers="num_hidden_layers"),
    "qwen2": ModuleLayout(ffn_out="model.layers.{}.mlp.down_proj", block="model.layers.{}", transposed=False,
                          num_layers="num_hidden_layers"),
}


def layout_for(model: nn.Module) -> ModuleLayout:
    """The module layout of ``model``'s family (by exact ``config.model_type``)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in CAUSAL_LM_LAYOUTS:
        raise KGDataError(f"no module layout known for model_type {model_type!r}; known: "
                          f"{', '.join(sorted(CAUSAL_LM_LAYOUTS))} (add a row to CAUSAL_LM_LAYOUTS)", field="model")
    return CAUSAL_LM_LAYOUTS[model_type]


class CausalLMTarget:
    """A causal LM and its tokenizer as the edit API and the locate-and-edit methods see them.

    ``corpus``: texts for ROME/MEMIT's key statistics (e.g. the model's training text);
    ``essence``: ROME's drift-check prompt, with ``{subject}``.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, corpus: Sequence[str] | None = None, *,
                 essence: str = "{subject} is a", max_length: int = 128) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.corpus = list(corpus) if corpus is not None else None
        self.layout = layout_for(model)
        self.model_type: str = model.config.model_type
        self.essence = essence
        self.max_length = max_length
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = pad if pad is not None else getattr(tokenizer, "eos_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0

    # ---------------------------------------------------------------------------------- requests
    def encode(self, requests: Sequence[EditRequest]) -> list[EditRequest]:
        """The requests as a batch for :func:`deltakg.editing.editor.apply_edit` (checked, not empty)."""
        requests = list(requests)
        if not requests:
            raise KGDataError("empty edit batch: nothing to edit", field="requests")
        for i, request in enumerate(requests):
            if not isinstance(request, EditRequest):
                raise KGDataError(f"expected an EditRequest, got {type(request).__name__}", field=f"requests[{i}]")
        return requests

    def requests_count(self, requests: Sequence[EditRequest]) -> int:
        """How many requests."""
        return len(requests)

    def select(self, requests: Sequence[EditRequest], indices: Sequence[int]) -> list[EditRequest]:
        """The requests at ``indices``."""
        return [requests[i] for i in indices]

    def labels(self, requests: Sequence[EditRequest]) -> list[str]:
        """The new targets."""
        return [r.target_new for r in requests]

    def num_layers(self) -> int:
        """Layers of the model."""
        return int(getattr(self.model.config, self.layout.num_layers))

    # ---------------------------------------------------------------------------------- tokens
    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def _key_index(self, text: str, request: EditRequest, prefix: str, key_position: str) -> int:
        if key_position == "prompt_last":
            return len(self._ids(prefix + text)) - 1
        if key_position == "subject_last":
            end = text.index(request.subject) + len(request.subject)
            return len(self._ids(prefix + text[:end])) - 1
        raise KGDataError(f"unknown key position {key_position!r}; choose one of {', '.join(KEY_POSITIONS)}",
                          field="key_position")

    def _batch(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        device = next(self.model.parameters()).device
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---------------------------------------------------------------------------------- probes
    def context_prefixes(self, count: int, length: int, seed: int) -> list[str]:
        """The bare prompt plus ``count`` short texts sampled from the model (ROME's context templates)."""
        prefixes = [""]
        if count <= 0:
            return prefixes
        start = self.tokenizer.bos_token_id if getattr(self.tokenizer, "bos_token_id", None) is not None else \
            getattr(self.tokenizer, "eos_token_id", None)
        if start is None:
            raise KGDataError("the tokenizer has neither a bos nor an eos token to sample context prefixes from; "
                              "set n_prefixes=0", field="tokenizer")
        generator = torch.Generator(device="cpu").manual_seed(seed)
        ids = torch.full((count, 1), int(start), dtype=torch.long)
        with torch.no_grad():
            for _ in range(length):
                logits = self.model(input_ids=ids.to(self._device())).logits[:, -1].float().cpu()
                top = logits.topk(min(5, logits.shape[-1]), dim=-1)
                pick = torch.multinomial(top.values.softmax(-1), 1, generator=generator)
                ids = torch.cat([ids, top.indices.gather(1, pick)], dim=1)
        texts = self.tokenizer.batch_decode(ids[:, 1:], skip_special_tokens=True)
        return prefixes + [t.replace("{", " ").replace("}", " ").strip() + ". " for t in texts]

    def key_probe(self, requests: Sequence[EditRequest], key_position: str, prefixes: Sequence[str]) -> Probe:
        """Each request's prompt under each prefix; positions = its key position."""
        rows, positions, owners = [], [], []
        for i, request in enumerate(requests):
            for prefix in prefixes:
                rows.append(self._ids(prefix + request.prompt)[: self.max_length])
                positions.append(min(self._key_index(request.prompt, request, prefix, key_position),
                                     len(rows[-1]) - 1))
                owners.append(i)
        return Probe(self._batch(rows), torch.tensor(positions, device=self._device()),
                     torch.tensor(owners, device=self._device()))

    def target_probe(self, requests: Sequence[EditRequest], key_position: str, prefixes: Sequence[str]) -> Probe:
        """``prefix + prompt + " " + target_new`` rows; ``targets`` = labels (-100 except at target tokens)."""
        rows, positions, owners, labels = [], [], [], []
        for i, request in enumerate(requests):
            for prefix in prefixes:
                try:
                    prompt, target = encode_pair(self.tokenizer, prefix + request.prompt, request.target_new)
                except ValueError as err:
                    raise KGDataError(str(err), field=f"requests[{i}].target_new") from None
                row = prompt + target
                rows.append(row)
                labels.append([-100] * len(prompt) + target)
                positions.append(self._key_index(request.prompt, request, prefix, key_position))
                owners.append(i)
        width = max(len(r) for r in rows)
        label_tensor = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels], device=self._device())
        return Probe(self._batch(rows), torch.tensor(positions, device=self._device()),
                     torch.tensor(owners, device=self._device()), label_tensor)

    def essence_probe(self, requests: Sequence[EditRequest], key_position: str) -> Probe | None:
        """``"{subject} is a"`` per request; positions = the subject's last token (prompt-last keys: the last token)."""
        rows, positions, last = [], [], []
        for request in requests:
            text = self.essence.format(subject=request.subject)
            rows.append(self._ids(text))
            last.append(len(rows[-1]) - 1)
            positions.append(len(self._ids(request.subject)) - 1 if key_position == "subject_last" else last[-1])
        device = self._device()
        return Probe(self._batch(rows), torch.tensor(positions, device=device),
                     torch.arange(len(requests), device=device), torch.tensor(last, device=device))

    # ---------------------------------------------------------------------------------- model calls
    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-token logits (b, t, vocab)."""
        return self.model(**inputs).logits

    def target_nll(self, probe: Probe, scores: torch.Tensor) -> torch.Tensor:
        """Mean NLL of each row's target tokens, teacher forced (pads and prompt excluded), (rows,)."""
        labels = probe.targets[:, 1:]
        logits = scores[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                              reduction="none").view(labels.shape)
        counted = (labels != -100).sum(dim=1).clamp_min(1)
        return nll.sum(dim=1) / counted

    def essence_log_probs(self, probe: Probe, scores: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the next token after each essence prompt, (rows, vocab)."""
        rows = torch.arange(len(probe), device=scores.device)
        return scores[rows, probe.targets].float().log_softmax(dim=-1)

    def condition_inputs(self, requests: Sequence[EditRequest], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``<ground truth> >> <new target> || <prompt>``, right-padded."""
        rows = [self._ids(f"{r.ground_truth or ''} >> {r.target_new} || {r.prompt}")[:max_length] for r in requests]
        batch = self._batch(rows)
        return batch["input_ids"], batch["attention_mask"]

    def condition_embedding(self) -> tuple[torch.Tensor, int]:
        """The model's input embeddings and the pad id."""
        return self.model.get_input_embeddings().weight, self.pad_id

    def output_log_probs(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The next-token distribution at every real (non-pad) token, (tokens, vocab)."""
        return scores[mask].float().log_softmax(dim=-1)

    def stat_batches(self, corpus: Iterable[str], batch_size: int) -> Iterator[tuple[dict[str, torch.Tensor],
                                                                                    torch.Tensor]]:
        """Tokenized corpus texts in batches; every real (non-pad) token's key counts."""
        batch: list[list[int]] = []
        for text in corpus:
            ids = self._ids(text)[: self.max_length]
            if ids:
                batch.append(ids)
            if len(batch) == batch_size:
                inputs = self._batch(batch)
                yield inputs, inputs["attention_mask"].bool()
                batch = []
        if batch:
            inputs = self._batch(batch)
            yield inputs, inputs["attention_mask"].bool()
