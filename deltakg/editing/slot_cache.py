"""Scores and gradients of a last-layer slot from one cached forward pass.

A slot in the encoder's last layer changes nothing but that layer's FFN output. At the mask position the
model's scores are then ``decode(transform(LayerNorm(dense(u) + up(down(u)) + a)))``, where ``u`` is the
FFN's input (the intermediate activation) and ``a`` the attention output added to it; nothing else of the
sequence reaches the scores. ``u`` and ``a`` depend only on weights below the slot, so one forward pass
caches them, and every later score, per-case gradient or trial step of the slot weights costs a few
``(b, d)`` products and the decoder, not a pass through the encoder (KGEditor's rounds and step search).

A capture can check itself (KGEditor checks its first capture on each model it prepares): its scores must
equal the model's own, or it raises, so a model family that does more after its last layer can never be
edited with wrong scores.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .slots import SideFFN
from .target import EncodedFacts, KGETarget

__all__ = ["LastLayerSlotCache"]


class LastLayerSlotCache:
    """``u`` and ``a`` of a batch at the mask positions, for the slot at module path ``path``."""

    def __init__(self, model: nn.Module, path: str, u: torch.Tensor, a: torch.Tensor, targets: torch.Tensor) -> None:
        self.model, self.path, self.u, self.a, self.targets = model, path, u, a, targets
        self.slot: SideFFN = model.get_submodule(path)
        # BERT/RoBERTa/ELECTRA: ``<layer>.output`` holds dense (the slot), dropout and LayerNorm
        self.block = model.get_submodule(path.rsplit(".", 1)[0])
        self.up_name, self.down_name = f"{path}.up.weight", f"{path}.down.weight"

    @classmethod
    @torch.no_grad()
    def capture(cls, target: KGETarget, path: str, facts: EncodedFacts, *, batch_size: int = 256,
                check: bool = True) -> "LastLayerSlotCache":
        """Run the facts' queries once (eval mode) and keep ``u`` and ``a`` at their mask positions."""
        model = target.model
        block = model.get_submodule(path.rsplit(".", 1)[0])
        captured: dict[str, torch.Tensor] = {}

        def hook(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            residual = args[1] if len(args) > 1 else kwargs["input_tensor"]
            captured["u"], captured["a"] = hidden.detach(), residual.detach()

        was_training = model.training
        model.eval()
        handle = block.register_forward_hook(hook, with_kwargs=True)
        us, as_, scores = [], [], []
        try:
            for start in range(0, len(facts), batch_size):
                inputs = target.inputs(facts.select(slice(start, start + batch_size)))
                # unchecked, the hooked layer is all that is needed: skip the decoder over all entities
                states = model.mask_states(**inputs)
                if check:
                    scores.append(model.decode(states))
                rows = torch.arange(inputs["mask_positions"].shape[0], device=states.device)
                us.append(captured["u"][rows, inputs["mask_positions"]])
                as_.append(captured["a"][rows, inputs["mask_positions"]])
        finally:
            handle.remove()
            model.train(was_training)
        cache = cls(model, path, torch.cat(us), torch.cat(as_), facts.targets.to(us[0].device))
        if check:
            expected = torch.cat(scores)
            mine = cache.scores()
            if not torch.allclose(mine, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max().clamp(min=1.0))):
                raise ValueError(f"the slot at {path} is not in the encoder's last layer or the model does more "
                                 "after it: the cached scores differ from the model's")
        return cache

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def select(self, index: slice | torch.Tensor) -> "LastLayerSlotCache":
        """The cache of a sub-batch (no forward pass)."""
        if isinstance(index, torch.Tensor):
            index = index.to(self.u.device)
        return LastLayerSlotCache(self.model, self.path, self.u[index], self.a[index], self.targets[index])

    def _weights(self, weights: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        weights = weights or {}
        return weights.get(self.down_name, self.slot.down.weight), weights.get(self.up_name, self.slot.up.weight)

    def keys(self, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The slot keys ``down(u)`` of the cached queries, ``(b, extra)``."""
        down, _ = self._weights(weights)
        return self.u @ down.t()

    def _pre_norm(self, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return self.slot.dense(self.u) + (self.u @ down.t()) @ up.t() + self.a

    def scores(self, weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Scores over all entities with the slot weights replaced by ``weights`` (by parameter name)."""
        down, up = self._weights(weights)
        return self._scores_from(self._pre_norm(down, up))

    def scores_many(self, weight_sets: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """:meth:`scores` for several weight sets in one decoder pass (the entity table is read once)."""
        pres = [self._pre_norm(*self._weights(weights)) for weights in weight_sets]
        return list(self._scores_from(torch.cat(pres)).split(len(self), dim=0))

    def _scores_from(self, pre: torch.Tensor) -> torch.Tensor:
        return self.model.decode(self.model.transform(self.block.LayerNorm(pre)))

    def per_case_gradients(self, names: list[str]) -> dict[str, torch.Tensor]:
        """``dL_i/dW`` of each case's cross-entropy for the named slot weights, ``(b, m, n)`` each.

        Rows are independent after the cache (LayerNorm, transform and decoder act per row), so one backward
        pass of the summed loss gives every case's gradient at the pre-norm sum; each weight gradient is then
        an outer product, as in MEND's factorisation.
        """
        unknown = set(names) - {self.up_name, self.down_name}
        if unknown:
            raise ValueError(f"not weights of the slot at {self.path}: {sorted(unknown)}")
        down, up = self.slot.down.weight.detach(), self.slot.up.weight.detach()
        with torch.enable_grad():
            pre = self._pre_norm(down, up).detach().requires_grad_(True)
            loss = F.cross_entropy(self._scores_from(pre), self.targets, reduction="sum")
            (delta,) = torch.autograd.grad(loss, pre)
        out = {}
        for name in names:
            if name == self.up_name:
                out[name] = delta.unsqueeze(2) * (self.u @ down.t()).unsqueeze(1)
            else:
                out[name] = (delta @ up).unsqueeze(2) * self.u.unsqueeze(1)
        return out
