"""The locate-and-edit hooks on hand-made modules: what they add is what the weight update would add."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from deltakg.editing.locate.hooks import add_at_positions, add_through_key
from deltakg.editing.locate.rome import key_direction, rank_one_update


def _cov(dim: int, generator: torch.Generator) -> torch.Tensor:
    keys = torch.randn(4 * dim, dim, generator=generator, dtype=torch.float64)
    return keys.T @ keys / len(keys)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_add_through_key_is_the_rank_one_update_at_every_position(kind):
    g = torch.Generator().manual_seed(0)
    dim_in, dim_out = 6, 5
    module = nn.Linear(dim_in, dim_out) if kind == "linear" else Conv1D(dim_out, dim_in)
    cov, key = _cov(dim_in, g), torch.randn(dim_in, generator=g, dtype=torch.float64)
    delta = torch.randn(1, dim_out, generator=g)
    inputs = torch.randn(3, 7, dim_in, generator=g)  # rows, positions, features
    direction = key_direction(key, cov).float()[None]
    with torch.no_grad(), add_through_key(module, delta, direction, torch.zeros(3, dtype=torch.long)):
        hooked = module(inputs)
    with torch.no_grad(), add_through_key(module, delta, direction, torch.zeros(1, dtype=torch.long)):
        at_key = module(key.float()[None, None])
    update = rank_one_update(key, delta[0], cov).float()  # (out, in)
    with torch.no_grad():
        if kind == "linear":
            module.weight += update
        else:
            module.weight += update.T  # Conv1D keeps (in, out)
        edited = module(inputs)
        edited_at_key = module(key.float()[None, None])
    torch.testing.assert_close(hooked, edited, rtol=1e-5, atol=1e-5)
    # at the key itself the update adds exactly delta
    with torch.no_grad():
        if kind == "linear":
            module.weight -= update
        else:
            module.weight -= update.T
        plain = module(key.float()[None, None])
    torch.testing.assert_close(at_key - plain, delta[None], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(edited_at_key, at_key, rtol=1e-4, atol=1e-5)


def test_add_through_key_uses_each_rows_own_request():
    module = nn.Linear(2, 2, bias=False)
    nn.init.zeros_(module.weight)
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    delta = torch.tensor([[10.0, 0.0], [0.0, 100.0]])
    inputs = torch.tensor([[[1.0, 1.0]], [[1.0, 1.0]], [[2.0, 3.0]]])
    owners = torch.tensor([0, 1, 1])
    with torch.no_grad(), add_through_key(module, delta, directions, owners):
        out = module(inputs)
    assert out[:, 0].tolist() == [[10.0, 0.0], [0.0, 100.0], [0.0, 300.0]]


def test_add_at_positions_touches_only_the_key_position():
    module = nn.Linear(2, 2, bias=False)
    nn.init.zeros_(module.weight)
    with torch.no_grad(), add_at_positions(module, torch.tensor([[1.0, 2.0]]), torch.tensor([1]), torch.tensor([0])):
        out = module(torch.ones(1, 3, 2))
    assert out[0].tolist() == [[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]]
