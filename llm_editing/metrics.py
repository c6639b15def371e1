"""Edit metrics of causal LMs: EasyEdit's definitions without its bugs, batched.

Token accuracy (reliability, generalization, portability): feed ``prompt + " " + target`` teacher-forced and
count the share of target tokens that the argmax at the previous position predicts. Only target positions
count (never pads), and each batch passes explicit ``position_ids`` (0 at the first real token), so left and
right padding give the same numbers; the tokens of ``prompt`` and of ``prompt + " " + target`` are split at
their longest common prefix (:func:`encode_pair`), so the target's first token keeps its leading space.

- reliability: token accuracy of ``target_new`` on the edit prompt;
- generalization: the same on the rephrased prompts (mean per request);
- portability: token accuracy of each portability pair's answer;
- locality: the share of argmax tokens on the locality pairs (teacher-forced with their answers) that are
  UNCHANGED between the pre-edit model and the evaluated one. The pre-edit tokens come from
  :func:`locality_reference`, computed once before editing and passed in (EasyEdit compared against the
  current model for years);
- exact_match: the greedy generation from the prompt, as many tokens as ``target_new`` has, equals it;
- success: CounterFact's probability test, log P(target_new) > log P(ground_truth) (sums of token
  log-probs), for requests with a ground truth;
- fluency: ROME/EasyEdit's weighted n-gram entropy (weights 2/3 and 4/3 for bi- and trigrams, mean of the
  two) of a greedy generation from the prompt; words are ``\\w+`` runs and single punctuation marks, where
  EasyEdit uses NLTK's tokenizer.

:func:`evaluate_requests` returns the means under ``reliability``, ``generalization``, ``locality``,
``portability``, ``exact_match``, ``success``, ``fluency`` (``None`` when no request has the data for a
metric) and the per-request values under ``per_request``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .requests import EditRequest

__all__ = [
    "MetricsConfig",
    "LocalityReference",
    "encode_pair",
    "teacher_forced",
    "token_accuracy",
    "target_log_probs",
    "greedy_generate",
    "exact_match",
    "n_gram_entropy",
    "locality_reference",
    "evaluate_requests",
    "METRIC_KEYS",
]

METRIC_KEYS = ("reliability", "generalization", "locality", "portability", "exact_match", "success", "fluency")


@dataclass(frozen=True)
class MetricsConfig:
    """How metrics are computed: batch size, fluency generation length, padding side."""

    batch_size: int = 32
    fluency_tokens: int = 32  # new tokens generated per prompt for fluency; 0 skips fluency
    padding_side: str | None = None  # None: the tokenizer's own (right when it has none)

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")
        if self.fluency_tokens < 0:
            raise ValueError(f"fluency_tokens must be >= 0, got {self.fluency_tokens}")
        if self.padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side must be 'left', 'right' or None, got {self.padding_side!r}")


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def encode_pair(tokenizer: Any, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` and of ``target`` as it continues ``prompt + " " + target``.

    The split is at the longest common prefix of the two tokenizations, so a tokenizer that merges across
    the boundary still scores every token that depends on the target.
    """
    full = _ids(tokenizer, f"{prompt} {target}")
    head = _ids(tokenizer, prompt)
    common = 0
    while common < min(len(full), len(head)) and full[common] == head[common]:
        common += 1
    if common == len(full):
        raise ValueError(f"target {target!r} adds no tokens to prompt {prompt!r}")
    return full[:common], full[common:]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0  # masked out everywhere: any id will do


def _side(tokenizer: Any, config: MetricsConfig) -> str:
    return config.padding_side or getattr(tokenizer, "padding_side", None) or "right"


def _pad(rows: Sequence[list[int]], pad_id: int, side: str, device: torch.device) -> tuple[torch.Tensor, ...]:
    """``input_ids``, ``attention_mask``, ``position_ids`` and each row's offset of its first real token."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    offsets = []
    for i, row in enumerate(rows):
        start = width - len(row) if side == "left" else 0
        ids[i, start:start + len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, start:start + len(row)] = 1
        offsets.append(start)
    # positions count real tokens only: left padding must not shift them (HF models count pads otherwise)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device), offsets


def _forward(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


@torch.no_grad()
def teacher_forced(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    config: MetricsConfig = MetricsConfig(),
) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Per pair: (argmax ids at the target positions, the target ids, sum of target token log-probs)."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts for {len(targets)} targets")
    was_training = model.training
    model.eval()
    device, pad_id, side = _device(model), _pad_id(tokenizer), _side(tokenizer, config)
    pairs = [encode_pair(tokenizer, p, t) for p, t in zip(prompts, targets)]
    out: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    try:
        for start in range(0, len(pairs), config.batch_size):
            chunk = pairs[start:start + config.batch_size]
            ids, mask, positions, offsets = _pad([h + t for h, t in chunk], pad_id, side, device)
            logits = _forward(model, ids, mask, positions).float()
            for (head, tail), offset, row in zip(chunk, offsets, logits):
                # the logits at position i predict token i + 1
                first = offset + len(head)
                scores = row[first - 1:first - 1 + len(tail)]
                gold = torch.tensor(tail, device=scores.device)
                log_probs = torch.log_softmax(scores, dim=-1).gather(1, gold[:, None]).sum()
                out.append((scores.argmax(dim=-1).cpu(), gold.cpu(), float(log_probs)))
    finally:
        model.train(was_training)
    return out


def token_accuracy(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], targets: Sequence[str],
                   config: MetricsConfig = MetricsConfig()) -> list[float]:
    """Teacher-forced token accuracy of each ``target`` after its ``prompt``."""
    return [float((pred == gold).float().mean()) for pred, gold, _ in teacher_forced(model, tokenizer, prompts, targets, config)]


def target_log_probs(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], targets: Sequence[str],
                     config: MetricsConfig = MetricsConfig()) -> list[float]:
    """log P(target | prompt): the sum of its token log-probs."""
    return [lp for _, _, lp in teacher_forced(model, tokenizer, prompts, targets, config)]


@torch.no_grad()
def _greedy(model: torch.nn.Module, tokenizer: Any, rows: Sequence[list[int]], lengths: Sequence[int],
            config: MetricsConfig) -> list[list[int]]:
    was_training = model.training
    model.eval()
    device, pad_id, side = _device(model), _pad_id(tokenizer), _side(tokenizer, config)
    results: list[list[int]] = []
    try:
        for start in range(0, len(rows), config.batch_size):
            chunk, wanted = rows[start:start + config.batch_size], lengths[start:start + config.batch_size]
            generated: list[list[int]] = [[] for _ in chunk]
            # no KV cache: a few short steps, and one code path for every model family and padding side
            for _ in range(max(wanted, default=0)):
                ids, mask, positions, offsets = _pad([r + g for r, g in zip(chunk, generated)], pad_id, side, device)
                logits = _forward(model, ids, mask, positions)
                for i, offset in enumerate(offsets):
                    generated[i].append(int(logits[i, offset + len(chunk[i]) + len(generated[i]) - 1].argmax()))
            results.extend(g[:n] for g, n in zip(generated, wanted))
    finally:
        model.train(was_training)
    return results


def greedy_generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int | Sequence[int],
    config: MetricsConfig = MetricsConfig(),
) -> list[list[int]]:
    """Greedy continuations (token ids) of each prompt, batched; ``max_new_tokens`` may differ per prompt."""
    lengths = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(lengths) != len(prompts):
        raise ValueError(f"{len(lengths)} lengths for {len(prompts)} prompts")
    return _greedy(model, tokenizer, [_ids(tokenizer, p) for p in prompts], lengths, config)


def exact_match(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], targets: Sequence[str],
                config: MetricsConfig = MetricsConfig()) -> list[bool]:
    """Whether the greedy generation from each prompt is exactly its target (all of its tokens)."""
    pairs = [encode_pair(tokenizer, p, t) for p, t in zip(prompts, targets)]
    # generate from the prompt tokens as the pair split them: the context teacher forcing sees
    generated = _greedy(model, tokenizer, [h for h, _ in pairs], [len(t) for _, t in pairs], config)
    return [g == t for g, (_, t) in zip(generated, pairs)]


_WORDS = re.compile(r"\w+|[^\w\s]")


def n_gram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's fluency of one text: the mean of weighted n-gram entropies (bits)."""
    words = _WORDS.findall(text.lower())
    values = []
    for n, weight in zip(ns, weights):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        entropy = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        values.append(weight * entropy)
    return sum(values) / len(values)


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class LocalityReference:
    """The pre-edit model's argmax tokens on each request's locality pairs: ``tokens[i][name][j]``."""

    tokens: list[dict[str, list[list[int]]]]


def _locality_items(requests: Sequence[EditRequest]) -> list[tuple[int, str, int, str, str]]:
    return [(i, name, j, prompt, answer)
            for i, r in enumerate(requests) for name, pairs in r.locality.items()
            for j, (prompt, answer) in enumerate(pairs)]


def locality_reference(model: torch.nn.Module, tokenizer: Any, requests: Sequence[EditRequest],
                       config: MetricsConfig = MetricsConfig()) -> LocalityReference:
    """The pre-edit argmax tokens of every locality pair; call BEFORE editing and pass to :func:`evaluate_requests`."""
    items = _locality_items(requests)
    preds = teacher_forced(model, tokenizer, [it[3] for it in items], [it[4] for it in items], config)
    tokens: list[dict[str, list[list[int]]]] = [{name: [[] for _ in pairs] for name, pairs in r.locality.items()}
                                                for r in requests]
    for (i, name, j, _, _), (pred, _, _) in zip(items, preds):
        tokens[i][name][j] = pred.tolist()
    return LocalityReference(tokens)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def evaluate_requests(
    model: torch.nn.Module,
    tokenizer: Any,
    requests: Sequence[EditRequest],
    *,
    reference: LocalityReference | None = None,
    config: MetricsConfig = MetricsConfig(),
) -> dict[str, Any]:
    """All metrics of ``requests`` on ``model``; ``locality`` needs the pre-edit ``reference`` (else None)."""
    if reference is not None and len(reference.tokens) != len(requests):
        raise ValueError(f"the locality reference covers {len(reference.tokens)} requests, not {len(requests)}")
    n = len(requests)
    # one batched pass per kind of prompt: edit prompts, rephrases, portability, locality, ground truths
    rel = teacher_forced(model, tokenizer, [r.prompt for r in requests], [r.target_new for r in requests], config)
    reph_items = [(i, p) for i, r in enumerate(requests) for p in r.rephrase_prompts]
    reph = token_accuracy(model, tokenizer, [p for _, p in reph_items], [requests[i].target_new for i, _ in reph_items], config)
    port_items = [(i, p, a) for i, r in enumerate(requests) for pairs in r.portability.values() for p, a in pairs]
    port = token_accuracy(model, tokenizer, [p for _, p, _ in port_items], [a for _, _, a in port_items], config)
    old_items = [i for i, r in enumerate(requests) if r.ground_truth is not None]
    old = target_log_probs(model, tokenizer, [requests[i].prompt for i in old_items],
                           [requests[i].ground_truth for i in old_items], config)
    em = exact_match(model, tokenizer, [r.prompt for r in requests], [r.target_new for r in requests], config)

    per: list[dict[str, Any]] = [{} for _ in range(n)]
    for i, (pred, gold, log_prob) in enumerate(rel):
        per[i].update(reliability=float((pred == gold).float().mean()), exact_match=float(em[i]),
                      log_prob_new=log_prob, generalization=None, portability=None, locality=None,
                      success=None, log_prob_old=None, fluency=None)
    for key, items, values in (("generalization", reph_items, reph), ("portability", port_items, port)):
        grouped: dict[int, list[float]] = {}
        for item, value in zip(items, values):
            grouped.setdefault(item[0], []).append(value)
        for i, vals in grouped.items():
            per[i][key] = _mean(vals)
    for i, log_prob in zip(old_items, old):
        per[i].update(log_prob_old=log_prob, success=float(per[i]["log_prob_new"] > log_prob))
    if reference is not None:
        items = _locality_items(requests)
        now = teacher_forced(model, tokenizer, [it[3] for it in items], [it[4] for it in items], config)
        grouped_loc: dict[int, list[float]] = {}
        for (i, name, j, _, _), (pred, _, _) in zip(items, now):
            before = reference.tokens[i][name][j]
            if len(before) != len(pred):
                raise ValueError(f"request {i}: the locality reference of {name}[{j}] has {len(before)} tokens, "
                                 f"the prompt gives {len(pred)}: a reference of other requests or another tokenizer")
            grouped_loc.setdefault(i, []).append(float((pred == torch.tensor(before)).float().mean()))
        for i, vals in grouped_loc.items():
            per[i]["locality"] = _mean(vals)
    if config.fluency_tokens:
        texts = greedy_generate(model, tokenizer, [r.prompt for r in requests], config.fluency_tokens, config)
        for i, (request, ids) in enumerate(zip(requests, texts)):
            per[i]["fluency"] = n_gram_entropy(request.prompt + tokenizer.decode(ids, skip_special_tokens=True))

    summary: dict[str, Any] = {}
    for key in METRIC_KEYS:
        summary[key] = _mean([p[key] for p in per if p[key] is not None])
    summary["n_requests"] = n
    summary["per_request"] = per
    return summary
