"""The stories260K Llama loaded into Hugging Face: known greedy continuation, tokenizer as llama2.c encodes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kg_data import KGDataError
from llm_editing.metrics import greedy_generate
from llm_editing.stories import load_stories, read_checkpoint, read_tok512, reference_encode, resolve_stories_dir

STORIES_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "stories260K"
KNOWN = " Once upon a time, there was a little girl named Lily. She loved to play outside in the park."


@pytest.fixture(scope="module")
def stories() -> tuple:
    if not (STORIES_DIR / "stories260K.bin").is_file():
        pytest.skip(f"stories260K is absent: expected {STORIES_DIR}/stories260K.bin and tok512.bin")
    return load_stories(STORIES_DIR)


def test_greedy_continuation_from_bos(stories: tuple) -> None:
    model, tok = stories
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.model_type == "llama"
    out = model.generate(torch.tensor([[tok.bos_token_id]]), max_new_tokens=40, do_sample=False)
    text = tok.decode(out[0], skip_special_tokens=True)
    assert text.startswith(KNOWN), text


def test_tokenizer_matches_llama2c_encoding(stories: tuple) -> None:
    _, tok = stories
    entries = read_tok512(STORIES_DIR / "tok512.bin")
    assert len(entries) == tok.vocab_size == 512
    for text in (KNOWN, "Tom and Sue went to the shop.\nThey bought 3 apples!", "Zürich 日本 naïve", "a  b"):
        ids = tok(text)["input_ids"]
        assert ids[0] == 1 and ids[1:] == reference_encode(entries, text), text
        # decoding undoes the prefixed space and fuses byte-fallback tokens back into characters
        assert tok.decode(ids, skip_special_tokens=True) == " " + text


def test_padded_batches_generate_as_single_prompts(stories: tuple) -> None:
    model, tok = stories
    prompts = ["Once upon a time", "Lily saw a big dog. The dog"]
    alone = [greedy_generate(model, tok, [p], 6)[0] for p in prompts]
    assert greedy_generate(model, tok, prompts, 6) == alone


def test_bad_folders_and_files(tmp_path: Path) -> None:
    with pytest.raises(KGDataError, match="stories260K.bin not found"):
        resolve_stories_dir(tmp_path)
    bad = tmp_path / "stories260K.bin"
    bad.write_bytes(b"\x01\x00")
    with pytest.raises(KGDataError, match="too short"):
        read_checkpoint(bad)
    header = torch.tensor([64, 172, 5, 8, 4, 512, 512], dtype=torch.int32).numpy().tobytes()
    bad.write_bytes(header + b"\x00" * 16)
    with pytest.raises(KGDataError, match="the header implies"):
        read_checkpoint(bad)
