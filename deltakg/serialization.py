"""Saving and loading tensors and JSON with atomic writes and one clear error per corrupt or foreign file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from kg_data.errors import KGDataError
from kg_data.files import atomic_path, write_text_atomic

__all__ = ["save_tensors", "load_tensors", "load_state_into", "load_checkpoint", "write_json"]


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (contiguous CPU copies of ``tensors``)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike, *, written_by: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing, truncated or foreign file is a :class:`KGDataError` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise KGDataError(f"missing: expected a file written by {written_by}", path=path)
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise KGDataError(f"not a readable safetensors file (truncated or corrupt?): {_first_line(err)}",
                          path=path) from None


def load_state_into(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``module.load_state_dict(state)`` with a mismatch reported as a :class:`KGDataError` naming ``path``."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        detail = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise KGDataError(f"weights do not fit this model ({len(missing)} missing, {len(unexpected)} unexpected "
                          f"tensors; {detail}): written for another model?", path=path)
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise KGDataError(f"tensor {name!r} has shape {tuple(tensor.shape)}, the model expects "
                              f"{tuple(own[name].shape)}: written for another model or dataset?", path=path)
    module.load_state_dict(state)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a Lightning checkpoint; a truncated or foreign file is a :class:`KGDataError` naming it."""
    import pickle
    import zipfile

    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise KGDataError("missing checkpoint", path=path) from None
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile,
            AttributeError, ImportError, IndexError, KeyError) as err:
        raise KGDataError(f"not a readable checkpoint (truncated or corrupt?): {_first_line(err)}", path=path) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise KGDataError("not a Lightning checkpoint of deltakg train (no state_dict)", path=path)
    return checkpoint


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write indented JSON atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
