"""Second-moment statistics C = E[k k^T] of an FFN output projection's inputs, computed once and cached.

ROME and MEMIT whiten their updates with C. Computing it is the slow part of their set-up (hours on large
models in the original), so it is cached on disk under a key made of the model's fingerprint (a hash of its
weights), the layer, the corpus's fingerprint and the sample budget: a second call with the same model and
corpus reads the file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from .adapter import LocateAdapter
from .hooks import capture

__all__ = ["SecondMoment", "second_moment", "model_fingerprint", "corpus_fingerprint", "default_cache_dir",
           "CACHE_ENV"]

CACHE_ENV = "DELTAKG_CACHE"


def default_cache_dir() -> Path:
    """``$DELTAKG_CACHE/stats``, else ``~/.cache/deltakg/stats``."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "deltakg") / "stats"


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the model's parameter names, shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        data = param.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def corpus_fingerprint(corpus: Sequence[object]) -> str:
    """SHA-256 over the corpus items' text."""
    digest = hashlib.sha256()
    for item in corpus:
        digest.update(repr(item).encode())
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass
class SecondMoment:
    """``mom2`` = E[k k^T] (in, in) in float64 over ``count`` keys; ``from_cache`` says whether it was read."""

    mom2: torch.Tensor
    count: int
    from_cache: bool = False


@torch.no_grad()
def _compute(adapter: LocateAdapter, layer: int, corpus: Iterable[object], max_keys: int, batch_size: int,
             progress: bool) -> SecondMoment:
    module = adapter.model.get_submodule(adapter.layout.ffn_out.format(layer))
    total: torch.Tensor | None = None
    count = 0
    was_training = adapter.model.training
    adapter.model.eval()
    bar = tqdm(total=max_keys, desc=f"key statistics, layer {layer}", unit="key", disable=not progress, leave=False)
    try:
        for inputs, mask in adapter.stat_batches(corpus, batch_size):
            with capture(module) as seen:
                adapter.forward(inputs)
            keys = seen[0][mask.to(seen[0].device)].double()
            keys = keys[: max_keys - count]
            total = keys.T @ keys if total is None else total + keys.T @ keys
            count += keys.shape[0]
            bar.update(keys.shape[0])
            if count >= max_keys:
                break
    finally:
        bar.close()
        adapter.model.train(was_training)
    if total is None or count == 0:
        raise ValueError("the statistics corpus yielded no keys (an empty corpus?)")
    return SecondMoment(total / count, count)


def second_moment(adapter: LocateAdapter, layer: int, corpus: Sequence[object], *, max_keys: int = 100_000,
                  batch_size: int = 64, cache_dir: str | os.PathLike | None = None, progress: bool = True,
                  fingerprint: str | None = None) -> SecondMoment:
    """E[k k^T] of layer ``layer``'s FFN output projection inputs over ``corpus``, from the disk cache if there.

    ``fingerprint``: the model's (computed when not given); pass the one taken before any edit so that a
    sequence of edits keeps using the unedited model's statistics.
    """
    fingerprint = fingerprint or model_fingerprint(adapter.model)
    key = f"{adapter.layout.ffn_out.format(layer)}-{corpus_fingerprint(corpus)[:20]}-{max_keys}"
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / fingerprint[:24] / f"{key}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return SecondMoment(saved["mom2"], int(saved["count"]), from_cache=True)
    stats = _compute(adapter, layer, corpus, max_keys, batch_size, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"mom2": stats.mom2, "count": stats.count}, tmp)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return stats
