"""Weight snapshots, exact rollback and checked in-place deltas, shared by every editor and model family.

Rule kept by every editor: the model after ``snapshot.restore()`` is bit-identical to the model when the
snapshot was taken.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Protocol, TypeVar

import torch
from torch import nn

__all__ = ["WeightSnapshot", "Restorable", "apply_delta", "restore_on_error", "restoring", "state_equal"]


class Restorable(Protocol):
    """Edit state saved now that ``restore()`` puts back bit-exactly (weights, or e.g. a GRACE codebook)."""

    names: list[str]  # the model tensors it covers (checked finite after an edit)

    def restore(self) -> None:
        """Put the saved state back."""


class WeightSnapshot:
    """Copies of a module's named parameters and buffers (all, or those named) taken now."""

    def __init__(self, module: nn.Module, names: Iterable[str] | None = None) -> None:
        self.module = module
        tensors = dict(module.named_parameters())
        tensors.update(dict(module.named_buffers()))
        if names is None:
            chosen = tensors
        else:
            names = list(names)
            unknown = [n for n in names if n not in tensors]
            if unknown:
                raise KeyError(f"no parameter or buffer named {unknown[0]!r} in {type(module).__name__}")
            chosen = {n: tensors[n] for n in names}
        # structural changes (added modules) are undone by the editor that made them, not by the snapshot
        self._saved = {name: t.detach().clone() for name, t in chosen.items()}

    @property
    def names(self) -> list[str]:
        """Names of the saved tensors."""
        return list(self._saved)

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the saved values back in place (bit-exact)."""
        tensors = dict(self.module.named_parameters())
        tensors.update(dict(self.module.named_buffers()))
        for name, saved in self._saved.items():
            tensors[name].copy_(saved)

    def changed(self) -> list[str]:
        """Names whose current values differ from the snapshot."""
        tensors = dict(self.module.named_parameters())
        tensors.update(dict(self.module.named_buffers()))
        return [n for n, saved in self._saved.items() if not torch.equal(tensors[n].detach(), saved)]


@torch.no_grad()
def apply_delta(param: torch.Tensor, delta: torch.Tensor, *, name: str = "parameter") -> None:
    """``param += delta`` after checking shape and finiteness (nothing is written when a check fails)."""
    if delta.shape != param.shape:
        raise ValueError(f"delta for {name} has shape {tuple(delta.shape)}, expected {tuple(param.shape)}")
    if not torch.isfinite(delta).all():
        raise FloatingPointError(f"delta for {name} holds NaN or inf; nothing was written")
    param.add_(delta.to(dtype=param.dtype, device=param.device))


_R = TypeVar("_R", bound=Restorable)


@contextmanager
def restoring(snapshot: _R) -> Iterator[_R]:
    """Run the block and restore ``snapshot`` if it raises (a failed edit changes nothing)."""
    try:
        yield snapshot
    except BaseException:
        snapshot.restore()
        raise


@contextmanager
def restore_on_error(module: nn.Module, names: Iterable[str] | None = None) -> Iterator[WeightSnapshot]:
    """Snapshot, run the block, and put the weights back if it raises (a failed edit changes nothing)."""
    with restoring(WeightSnapshot(module, names)) as snapshot:
        yield snapshot


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold the same names and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
