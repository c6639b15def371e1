"""The pretrained stories260K Llama (llama2.c "legacy" checkpoint) as a Hugging Face ``LlamaForCausalLM``.

:func:`load_stories_model` reads ``stories260K.bin`` (header of 7 int32, then float32 tensors in llama2.c's
order) into ``LlamaForCausalLM``; the q and k projection rows are permuted because llama2.c rotates adjacent
pairs of dimensions and Hugging Face rotates the two halves of each head. :func:`load_stories_tokenizer` reads
``tok512.bin`` into a ``PreTrainedTokenizerFast``: a BPE whose merges are ordered by the sentencepiece scores,
with byte fallback, a prefixed space and ``<s>`` prepended, so that it encodes as llama2.c does (start from
the characters, repeatedly merge the adjacent pair whose concatenation is the highest-scoring token;
:func:`reference_encode` is that algorithm written out, for tests) and decodes ``<0x..>`` tokens to bytes.
The folder comes from ``path``, else ``$DELTAKG_MODELS/stories260K``.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import torch

from kg_data.errors import KGDataError

__all__ = [
    "MODELS_ENV",
    "resolve_stories_dir",
    "read_checkpoint",
    "load_stories_model",
    "read_tok512",
    "load_stories_tokenizer",
    "reference_encode",
    "load_stories",
]

MODELS_ENV = "DELTAKG_MODELS"
_HEADER = struct.Struct("<7i")
_SPACE = "\u2581"  # sentencepiece's word-boundary mark


def resolve_stories_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder holding ``stories260K.bin`` and ``tok512.bin``: ``path`` or ``$DELTAKG_MODELS/stories260K``."""
    if path is None:
        root = os.environ.get(MODELS_ENV)
        if root is None:
            raise KGDataError(f"no model folder: pass the stories260K folder or set ${MODELS_ENV}", field="model")
        path = Path(root) / "stories260K"
    path = Path(path)
    for name in ("stories260K.bin", "tok512.bin"):
        if not (path / name).is_file():
            raise KGDataError(f"{name} not found (expected stories260K.bin and tok512.bin)", path=path)
    return path


def _permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    # llama2.c pairs (2i, 2i+1) within a head; HF's rotate_half pairs (i, i + head_dim/2)
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """The header fields and the named float32 tensors of a llama2.c legacy checkpoint."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < _HEADER.size:
        raise KGDataError("too short for a llama2.c header", path=path)
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = _HEADER.unpack_from(data)
    if min(dim, hidden, layers, heads, kv_heads, seq_len) <= 0 or vocab == 0 or dim % heads:
        raise KGDataError(f"implausible header {(dim, hidden, layers, heads, kv_heads, vocab, seq_len)}", path=path)
    shared = vocab > 0
    vocab = abs(vocab)
    kv_dim = dim * kv_heads // heads
    head_dim = dim // heads
    shapes = [
        ("token_embedding", (vocab, dim)), ("rms_att", (layers, dim)), ("wq", (layers, dim, dim)),
        ("wk", (layers, kv_dim, dim)), ("wv", (layers, kv_dim, dim)), ("wo", (layers, dim, dim)),
        ("rms_ffn", (layers, dim)), ("w1", (layers, hidden, dim)), ("w2", (layers, dim, hidden)),
        ("w3", (layers, hidden, dim)), ("rms_final", (dim,)),
        ("freq_cis_real", (seq_len, head_dim // 2)), ("freq_cis_imag", (seq_len, head_dim // 2)),
    ]
    if not shared:
        shapes.append(("wcls", (vocab, dim)))
    need = _HEADER.size + 4 * sum(torch.Size(s).numel() for _, s in shapes)
    if len(data) != need:
        raise KGDataError(f"{len(data):,} bytes, the header implies {need:,}", path=path)
    flat = torch.frombuffer(bytearray(data[_HEADER.size:]), dtype=torch.float32)
    tensors, offset = {}, 0
    for name, shape in shapes:
        size = torch.Size(shape).numel()
        tensors[name] = flat[offset:offset + size].view(shape).clone()
        offset += size
    header = dict(dim=dim, hidden_dim=hidden, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads, vocab_size=vocab,
                  seq_len=seq_len, shared_classifier=int(shared))
    return header, tensors


def load_stories_model(path: str | os.PathLike | None = None) -> Any:
    """``LlamaForCausalLM`` with the stories260K weights (eval mode, float32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = resolve_stories_dir(path)
    h, t = read_checkpoint(folder / "stories260K.bin")
    config = LlamaConfig(
        vocab_size=h["vocab_size"], hidden_size=h["dim"], intermediate_size=h["hidden_dim"],
        num_hidden_layers=h["n_layers"], num_attention_heads=h["n_heads"], num_key_value_heads=h["n_kv_heads"],
        max_position_embeddings=h["seq_len"], rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=bool(h["shared_classifier"]), bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    # some transformers versions read rope settings from rope_parameters only
    if getattr(config, "rope_parameters", None) is not None:
        config.rope_parameters = {**config.rope_parameters, "rope_theta": 10000.0}
    model = LlamaForCausalLM(config)
    state = {"model.embed_tokens.weight": t["token_embedding"], "model.norm.weight": t["rms_final"]}
    for i in range(h["n_layers"]):
        p = f"model.layers.{i}."
        state.update({
            p + "input_layernorm.weight": t["rms_att"][i],
            p + "self_attn.q_proj.weight": _permute(t["wq"][i], h["n_heads"]),
            p + "self_attn.k_proj.weight": _permute(t["wk"][i], h["n_kv_heads"]),
            p + "self_attn.v_proj.weight": t["wv"][i],
            p + "self_attn.o_proj.weight": t["wo"][i],
            p + "post_attention_layernorm.weight": t["rms_ffn"][i],
            p + "mlp.gate_proj.weight": t["w1"][i],
            p + "mlp.down_proj.weight": t["w2"][i],
            p + "mlp.up_proj.weight": t["w3"][i],
        })
    state["lm_head.weight"] = t["token_embedding"] if h["shared_classifier"] else t["wcls"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise RuntimeError(f"stories260K mapping incomplete: missing {missing}, unexpected {unexpected}")
    if h["shared_classifier"]:
        model.tie_weights()
    model.eval()
    return model


def read_tok512(path: str | os.PathLike) -> list[tuple[bytes, float]]:
    """The (token bytes, score) list of a llama2.c tokenizer file."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 4:
        raise KGDataError("too short for a llama2.c tokenizer", path=path)
    offset, entries = 4, []
    while offset < len(data):
        if offset + 8 > len(data):
            raise KGDataError(f"truncated entry {len(entries)}", path=path)
        score, length = struct.unpack_from("<fi", data, offset)
        offset += 8
        if length < 0 or offset + length > len(data):
            raise KGDataError(f"entry {len(entries)}: bad length {length}", path=path)
        entries.append((data[offset:offset + length], score))
        offset += length
    return entries


def _piece(token: bytes, index: int) -> str:
    if index < 3:
        return token.decode()  # <unk>, <s>, </s> (llama2.c writes "\n<s>\n" etc. for 1 and 2)
    return token.decode("utf-8", errors="replace").replace(" ", _SPACE)


def load_stories_tokenizer(path: str | os.PathLike | None = None) -> Any:
    """A ``PreTrainedTokenizerFast`` for ``tok512.bin`` that encodes as llama2.c does and prepends ``<s>``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    folder = resolve_stories_dir(path)
    entries = read_tok512(folder / "tok512.bin")
    specials = ["<unk>", "<s>", "</s>"]
    pieces = specials + [_piece(tok, i) for i, (tok, _) in enumerate(entries) if i >= 3]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    if len(vocab) != len(pieces):
        raise KGDataError("duplicate tokens", path=folder / "tok512.bin")
    # a merge for every split of a piece into two pieces, ranked by the piece's score: BPE then applies the
    # highest-scoring available merge first, which is llama2.c's encoding loop
    ranked = sorted(range(259, len(pieces)), key=lambda i: (-entries[i][1], i))
    merges = []
    for i in ranked:
        piece = pieces[i]
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((left, right))
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    core.normalizer = normalizers.Sequence([normalizers.Prepend(_SPACE), normalizers.Replace(" ", _SPACE)])
    core.decoder = decoders.Sequence([decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<unk>")
    tokenizer.padding_side = "right"
    return tokenizer


def reference_encode(entries: list[tuple[bytes, float]], text: str) -> list[int]:
    """llama2.c's encoder (no ``<s>``): a space prefixed, characters (else their bytes), best-score merges."""
    lookup = {tok: i for i, (tok, _) in enumerate(entries) if i >= 3}
    ids: list[int] = []
    for char in " " + text:
        raw = char.encode()
        if raw in lookup:
            ids.append(lookup[raw])
        else:
            ids.extend(3 + b for b in raw)
    while True:
        best, best_score = -1, float("-inf")
        for k in range(len(ids) - 1):
            merged = entries[ids[k]][0] + entries[ids[k + 1]][0]
            j = lookup.get(merged)
            if j is not None and entries[j][1] > best_score:
                best, best_score = k, entries[j][1]
        if best < 0:
            return ids
        ids[best:best + 2] = [lookup[entries[ids[best]][0] + entries[ids[best + 1]][0]]]


def load_stories(path: str | os.PathLike | None = None) -> tuple[Any, Any]:
    """``(LlamaForCausalLM, tokenizer)`` of stories260K."""
    return load_stories_model(path), load_stories_tokenizer(path)
