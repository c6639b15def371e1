"""Per-edit fine-tuning gradients of chosen weight matrices (the ``G`` of KE / KGEditor / MEND)."""

from __future__ import annotations

import torch

from .target import EncodedFacts, KGETarget

__all__ = ["per_edit_gradients"]


def per_edit_gradients(target: KGETarget, cases: EncodedFacts, names: list[str]) -> dict[str, torch.Tensor]:
    """``dL_i/dW`` for each case ``i`` and each named matrix, stacked to (b, m, n); the model is not changed.

    Computed in eval mode (no dropout) so that the same edit always gets the same gradient.
    """
    model = target.model
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    was_training = model.training
    model.eval()
    inputs = target.inputs(cases)
    targets = cases.targets.to(params[0].device)
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    try:
        with torch.enable_grad():
            scores = model(**inputs)
            for i in range(len(cases)):
                loss = torch.nn.functional.cross_entropy(scores[i : i + 1], targets[i : i + 1])
                grads = torch.autograd.grad(loss, params, retain_graph=i + 1 < len(cases), allow_unused=True)
                for name, param, grad in zip(names, params, grads):
                    out[name].append(torch.zeros_like(param) if grad is None else grad.detach())
    finally:
        model.train(was_training)
    return {name: torch.stack(gs) for name, gs in out.items()}
