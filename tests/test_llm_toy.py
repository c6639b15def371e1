"""The toy GPT-2: tokenizer, config ids, training until it knows its facts, save/load, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deltakg.cli import main
from kg_data import KGDataError, Triple
from llm_editing.facts import Fact
from llm_editing.requests import RelationTemplate
from llm_editing.toy import FACTS_FILE, META_FILE, ToyConfig, load_toy_model, reproduction, save_toy_model, train_toy_model

BORN = RelationTemplate("born_in", "{subject} was born in", ("The birthplace of {subject} is",))
WORKS = RelationTemplate("works_as", "The profession of {subject} is", ("{subject} works as a",))
PEOPLE = ["Ada Lovelace", "Bob Marley", "Carl Sagan", "Dora Maar", "Emil Nolde", "Frida Kahlo", "Gus Grissom",
          "Hedy Lamarr", "Ida Wells", "Jan Hus", "Kurt Weill", "Lise Meitner", "Max Ernst", "Nina Simone"]
CITIES = ["London", "Nine Mile", "New York", "Paris", "Nolde", "Mexico City", "Mitchell"]
JOBS = ["Actor", "Singer", "Physicist", "Painter"]

SMALL = ToyConfig(n_embd=64, n_layer=2, n_head=2, vocab_size=400, n_positions=32, epochs=50, batch_size=16,
                  lr=5e-3, progress=False)


def _facts() -> list[Fact]:
    facts = []
    for i, person in enumerate(PEOPLE):
        facts.append(Fact(Triple(f"p{i}", "born_in", f"c{i % len(CITIES)}"), person, CITIES[i % len(CITIES)], BORN))
        facts.append(Fact(Triple(f"p{i}", "works_as", f"j{i % len(JOBS)}"), person, JOBS[(i * 3) % len(JOBS)], WORKS))
    return facts


@pytest.fixture(scope="module")
def toy():
    return train_toy_model(_facts(), SMALL)


def test_config_validation() -> None:
    for bad in (dict(n_embd=30, n_head=4), dict(epochs=0), dict(vocab_size=100), dict(lr=0.0)):
        with pytest.raises(ValueError):
            ToyConfig(**bad)


def test_tokenizer_and_config_ids(toy) -> None:
    tok, config = toy.tokenizer, toy.model.config
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert config.vocab_size == len(tok) <= SMALL.vocab_size and 50256 not in (config.bos_token_id, config.eos_token_id)
    ids = tok("The profession of Ada Lovelace is")["input_ids"]
    assert ids[0] == tok.bos_token_id
    pieces = tok.convert_ids_to_tokens(ids)
    # byte-level BPE: the subject inside a sentence keeps its leading space ("Ġ"), so lookup finds " Ada"
    assert any(p.startswith("Ġ") and "Ada" in p for p in pieces) or "ĠA" in pieces
    assert tok.decode(ids, skip_special_tokens=True) == "The profession of Ada Lovelace is"


def test_training_learns_the_facts(toy) -> None:
    m = toy.metrics
    assert m["n_facts"] == len(_facts()) and m["n_sentences"] == 2 * len(_facts())
    assert m["reproduced"] >= 0.9, m
    assert m["train_seconds"] > 0 and m["parameters"] == sum(p.numel() for p in toy.model.parameters())


def test_training_is_deterministic(toy) -> None:
    again = train_toy_model(_facts()[:6], ToyConfig(**{**SMALL.__dict__, "epochs": 2}))
    twice = train_toy_model(_facts()[:6], ToyConfig(**{**SMALL.__dict__, "epochs": 2}))
    for a, b in zip(again.model.parameters(), twice.model.parameters()):
        assert (a == b).all()


def test_save_and_load_with_from_pretrained(toy, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = save_toy_model(toy, tmp_path / "toy")
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("Ada was")["input_ids"] == toy.tokenizer("Ada was")["input_ids"]
    assert reproduction(model, tok, toy.facts) == reproduction(toy.model, toy.tokenizer, toy.facts)
    loaded = load_toy_model(out)
    assert loaded.facts == toy.facts and loaded.config == SMALL
    assert json.loads((out / META_FILE).read_text())["metrics"]["reproduced"] == toy.metrics["reproduced"]
    (out / FACTS_FILE).unlink()
    with pytest.raises(KGDataError, match="facts.jsonl is missing"):
        load_toy_model(out)


def test_no_facts_is_an_error() -> None:
    with pytest.raises(KGDataError, match="no facts"):
        train_toy_model([], SMALL)


def test_cli_end_to_end(fb15k237_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "toy"
    argv = ["llm-train-toy", "--dataset", "fb15k237", "--data-dir", str(fb15k237_dir), "--n-facts", "20",
            "--out", str(out), "--n-embd", "32", "--n-layer", "1", "--n-head", "2", "--vocab-size", "400",
            "--epochs", "2", "--no-progress", "--json"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["n_facts"] == 20 and 0.0 <= payload["reproduced"] <= 1.0
    assert len(load_toy_model(out).facts) == 20
    assert main(argv) == 2  # a non-empty --out is refused
    assert "not empty" in capsys.readouterr().err


def test_cli_refuses_a_dataset_without_single_answer_templates(tmp_path: Path, capsys) -> None:
    assert main(["llm-train-toy", "--dataset", "umls", "--out", str(tmp_path / "x"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "single-answer" in err and "umls" in err
