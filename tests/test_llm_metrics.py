"""Edit metrics on hand-made cases: pads never count, padding side changes nothing, locality vs the pre-edit model."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch

from llm_editing.metrics import (
    METRIC_KEYS, MetricsConfig, encode_pair, evaluate_requests, exact_match, greedy_generate, locality_reference,
    n_gram_entropy, target_log_probs, token_accuracy,
)
from llm_editing.requests import EditRequest
from llm_editing.toy import ToyConfig, build_model, train_tokenizer

LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = ["<pad>"] + list(LETTERS) + [" " + c for c in LETTERS]
INDEX = {t: i for i, t in enumerate(VOCAB)}


class WordTokenizer:
    """Letters, each with its leading space as in GPT-2 (" c" is one token); pad id 0."""

    pad_token_id = 0
    eos_token_id = None

    def __init__(self, padding_side: str = "right") -> None:
        self.padding_side = padding_side

    def __call__(self, text: str) -> dict:
        return {"input_ids": [INDEX[t] for t in re.findall(r" ?[a-z]", text)]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(VOCAB[i] for i in ids if i or not skip_special_tokens)


class TableModel(torch.nn.Module):
    """Predicts ``table[token]`` at every position (logit 5 there, 0 elsewhere); pads predict pads."""

    def __init__(self, table: dict[str, str]) -> None:
        super().__init__()
        nxt = torch.zeros(len(VOCAB), dtype=torch.long)
        for a, b in table.items():
            nxt[INDEX[a]] = INDEX[b]
        self.register_buffer("nxt", nxt)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, position_ids):
        logits = 5.0 * torch.nn.functional.one_hot(self.nxt[input_ids], len(VOCAB)).float() + self.dummy
        return SimpleNamespace(logits=logits)


# a -> b -> " c" -> " d" -> " e"; x -> " y"
CHAIN = {"a": "b", "b": " c", " c": " d", " d": " e", "x": " y", " y": " z"}


def _log_p(hit: bool) -> float:
    # softmax of one logit 5 among len(VOCAB) zeros
    return (5.0 if hit else 0.0) - math.log(math.exp(5.0) + len(VOCAB) - 1)


def test_token_accuracy_counts_target_tokens_only() -> None:
    tok, model = WordTokenizer(), TableModel(CHAIN)
    assert encode_pair(tok, "ab", "c d") == ([1, 2], [INDEX[" c"], INDEX[" d"]])
    # "ab" -> " c" right, then " c" -> " d" right; "ab" -> " c" but the target is " d": 1 of 2 (" d" -> " e" right)
    # a long row pads the short ones: pads (which "predict" pads) must not count
    prompts, targets = ["ab", "ab", "xyzab"], ["c d", "d e", "c q"]
    for side in ("left", "right"):
        config = MetricsConfig(batch_size=3, padding_side=side)
        assert token_accuracy(model, tok, prompts, targets, config) == [1.0, 0.5, 0.5]
        lp = target_log_probs(model, tok, prompts, targets, config)
        assert lp == pytest.approx([2 * _log_p(True), _log_p(False) + _log_p(True), _log_p(True) + _log_p(False)])
        assert exact_match(model, tok, prompts, targets, config) == [True, False, False]
        assert greedy_generate(model, tok, ["a", "xyzab"], [3, 1], config) == [
            [INDEX["b"], INDEX[" c"], INDEX[" d"]], [INDEX[" c"]]]


def test_locality_compares_against_the_pre_edit_model() -> None:
    tok = WordTokenizer()
    before, after = TableModel(CHAIN), TableModel({**CHAIN, " c": " q"})  # the "edit" changes what follows " c"
    request = EditRequest("ab", "c d", "c e", "a", locality={"u": [("ab", "c d"), ("x", "y z")]})
    reference = locality_reference(before, tok, [request])
    assert reference.tokens == [{"u": [[INDEX[" c"], INDEX[" d"]], [INDEX[" y"], INDEX[" z"]]]}]
    post = evaluate_requests(after, tok, [request], reference=reference, config=MetricsConfig(fluency_tokens=0))
    # first pair: 1 of 2 argmax tokens unchanged (" c" now predicts " q"); second: both unchanged
    assert post["locality"] == pytest.approx(0.75)
    # against the edited model itself it would look perfect: that is the bug this reference avoids
    itself = locality_reference(after, tok, [request])
    assert evaluate_requests(after, tok, [request], reference=itself)["locality"] == 1.0
    assert evaluate_requests(after, tok, [request])["locality"] is None
    with pytest.raises(ValueError, match="covers 1 requests"):
        evaluate_requests(after, tok, [request, request], reference=reference)


def test_evaluate_requests_by_hand() -> None:
    tok, model = WordTokenizer(), TableModel(CHAIN)
    reqs = [
        EditRequest("ab", "c d", "c e", "a", rephrase_prompts=["xab", "x"], portability={"r": [("x", "y z")]},
                    locality={"u": [("x", "y z")]}),
        EditRequest("x", "y q", None, "x"),
    ]
    reference = locality_reference(model, tok, reqs)
    out = evaluate_requests(model, tok, reqs, reference=reference, config=MetricsConfig(fluency_tokens=4))
    first, second = out["per_request"]
    assert first["reliability"] == 1.0 and first["exact_match"] == 1.0
    assert first["generalization"] == pytest.approx((1.0 + 0.5) / 2)   # "x" -> " y", not " c"; then " d" right
    assert first["portability"] == 1.0 and first["locality"] == 1.0
    assert first["success"] == 1.0 and first["log_prob_old"] == pytest.approx(_log_p(True) + _log_p(False))
    assert second["reliability"] == 0.5 and second["success"] is None and second["generalization"] is None
    assert out["reliability"] == 0.75 and out["generalization"] == 0.75 and out["success"] == 1.0
    assert out["portability"] == 1.0 and out["locality"] == 1.0 and out["exact_match"] == 0.5
    assert out["n_requests"] == 2 and set(METRIC_KEYS) <= set(out)
    # "ab" + " c d e" then the chain stops (pads predict pads; "<pad>" decodes to nothing)
    assert first["fluency"] == pytest.approx(n_gram_entropy("ab c d e"))


def test_n_gram_entropy() -> None:
    bigram = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert n_gram_entropy("a b a b") == pytest.approx((2 / 3 * bigram + 4 / 3 * 1.0) / 2)
    assert n_gram_entropy("the the the the") == 0.0 and n_gram_entropy("") == 0.0


@pytest.fixture(scope="module")
def tiny_gpt2() -> tuple:
    texts = ["Ada Lovelace was born in London.", "Bob Marley was born in Nine Mile.", "The sky is blue today."]
    tok = train_tokenizer(texts * 3, vocab_size=320)
    torch.manual_seed(0)
    return build_model(ToyConfig(n_embd=32, n_layer=2, n_head=2, vocab_size=320, seed=0), tok), tok


def test_padding_side_gives_identical_numbers_on_gpt2(tiny_gpt2: tuple) -> None:
    model, tok = tiny_gpt2
    reqs = [EditRequest("Ada Lovelace was born in", "Nine Mile", "London", "Ada Lovelace",
                        rephrase_prompts=["The sky is blue today. Ada Lovelace was born in"],
                        locality={"u": [("Bob Marley was born in", "Nine Mile"), ("The sky is", "blue")]},
                        portability={"r": [("Nine Mile is where", "Ada Lovelace")]}),
            EditRequest("Bob was born in", "London", "Nine Mile", "Bob")]
    results = {}
    model.train()
    for side in ("left", "right"):
        config = MetricsConfig(batch_size=8, padding_side=side, fluency_tokens=6)
        reference = locality_reference(model, tok, reqs, config)
        results[side] = evaluate_requests(model, tok, reqs, reference=reference, config=config)
    left, right = results["left"], results["right"]
    for key in METRIC_KEYS:
        assert left[key] == right[key], key
    for a, b in zip(left["per_request"], right["per_request"]):
        assert a["log_prob_new"] == pytest.approx(b["log_prob_new"], abs=1e-5)
        assert {k: v for k, v in a.items() if not k.startswith("log_prob")} == \
               {k: v for k, v in b.items() if not k.startswith("log_prob")}
    # a batch gives what each request gives alone
    alone = [token_accuracy(model, tok, [r.prompt], [r.target_new])[0] for r in reqs]
    assert [p["reliability"] for p in left["per_request"]] == alone
    assert model.training  # evaluation ran in eval mode and restored the mode it found


def test_config_validation() -> None:
    for bad in (dict(batch_size=0), dict(fluency_tokens=-1), dict(padding_side="middle")):
        with pytest.raises(ValueError):
            MetricsConfig(**bad)
