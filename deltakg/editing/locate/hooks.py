"""Forward hooks by module name: read a module's input at given positions, add a delta to its output there."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["capture", "add_at_positions", "add_through_key", "first_tensor"]


def first_tensor(value: object) -> torch.Tensor:
    """A module's output tensor (some blocks return a tuple whose first element is the hidden state)."""
    return value[0] if isinstance(value, (tuple, list)) else value  # type: ignore[return-value]


@contextmanager
def capture(module: nn.Module, *, output: bool = False) -> Iterator[list[torch.Tensor]]:
    """Collect the module's input (or output) tensors of every forward call inside the block."""
    seen: list[torch.Tensor] = []
    if output:
        handle = module.register_forward_hook(lambda m, args, out: seen.append(first_tensor(out)))
    else:
        handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def _editing_output(module: nn.Module, edit) -> Iterator[None]:
    """Replace the module's output tensor by ``edit(output, input)`` while inside the block."""

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        edited = edit(first_tensor(out), args[0])
        return (edited, *out[1:]) if isinstance(out, tuple) else edited

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def add_at_positions(module: nn.Module, delta: torch.Tensor, positions: torch.Tensor,
                     owners: torch.Tensor) -> Iterator[None]:
    """Add ``delta[owners[i]]`` to the module's output of row ``i`` at ``positions[i]`` while inside the block.

    delta: (requests, out); positions, owners: (rows,).
    """
    rows = torch.arange(len(positions), device=positions.device)

    def edit(tensor: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        edited = tensor.clone()
        edited[rows, positions] = edited[rows, positions] + delta[owners].to(tensor.dtype)
        return edited

    with _editing_output(module, edit):
        yield


@contextmanager
def add_through_key(module: nn.Module, delta: torch.Tensor, directions: torch.Tensor,
                    owners: torch.Tensor, *, coupled: bool = False) -> Iterator[None]:
    """Add ``(x . directions[o]) * delta[o]`` (o = ``owners[i]``) to row ``i``'s output at EVERY position.

    This is exactly what the rank-one update ``delta directions^T`` adds to the module's output for input x, so
    a value optimised under this hook is optimised for the edited weight itself, bleed into other positions
    included. ``coupled``: every row gets every request's term, ``sum_j (x . directions[j]) delta[j]``, which is
    what a batch update ``delta^T directions`` (MEMIT's) adds. delta: (requests, out); directions: (requests,
    in); owners: (rows,).
    """

    def edit(tensor: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.to(directions.dtype)
        if coupled:
            added = torch.einsum("rti,ni->rtn", inputs, directions) @ delta.to(directions.dtype)
        else:
            coefficient = torch.einsum("rti,ri->rt", inputs, directions[owners])
            added = coefficient[..., None] * delta[owners][:, None, :]
        return tensor + added.to(tensor.dtype)

    with _editing_output(module, edit):
        yield


def read_at(tensor: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows' vectors at their positions: (rows, t, d) -> (rows, d)."""
    return tensor[torch.arange(len(positions), device=tensor.device), positions]
