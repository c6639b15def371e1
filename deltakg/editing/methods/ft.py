"""FT: fine-tune the whole model, or chosen parameters, on the edit batch for a few steps."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..editor import Editor, register_editor
from ..target import EncodedFacts, KGETarget

__all__ = ["FineTune", "fit_edit_batch"]


@register_editor
class FineTune(Editor):
    """Adam on the cross-entropy of the edit targets; stops early once every target ranks first.

    ``params``: parameter-name prefixes to tune (e.g. ``["encoder.encoder.layer.5"]``), or ``"@last_layer"`` /
    ``"@last_ffn"`` (the last encoder layer, or only its feed-forward block); all by default.
    """

    name = "ft"
    summary = "fine-tuning: Adam steps on the edit batch's cross-entropy (all parameters by default)"
    cli_options = {"steps": "ft_steps", "lr": "ft_lr"}

    def __init__(self, steps: int = 10, lr: float = 1e-3, params: Sequence[str] | str | None = None,
                 stop_when_done: bool = True) -> None:
        if isinstance(params, str):
            params = [params]
        self.steps, self.lr, self.params, self.stop_when_done = steps, lr, params, stop_when_done

    @staticmethod
    def _prefixes(target: KGETarget, params: Sequence[str]) -> list[str]:
        last = target.model.encoder.config.num_hidden_layers - 1
        aliases = {"@last_layer": [f"encoder.encoder.layer.{last}."],
                   "@last_ffn": [f"encoder.encoder.layer.{last}.intermediate.", f"encoder.encoder.layer.{last}.output."]}
        return [p for prefix in params for p in aliases.get(prefix, [prefix])]

    def touched(self, target: KGETarget) -> list[str]:
        """The tuned parameters."""
        names = [n for n, p in target.model.named_parameters() if p.requires_grad]
        if self.params is None:
            return names
        prefixes = self._prefixes(target, self.params)
        chosen = [n for n in names if any(n.startswith(prefix) for prefix in prefixes)]
        if not chosen:
            raise ValueError(f"no parameter matches the prefixes {list(self.params)}")
        return chosen

    def edit(self, target: KGETarget, cases: EncodedFacts) -> None:
        """A few Adam steps on the edit batch (dropout off, so the result is deterministic)."""
        fit_edit_batch(target, cases, self.touched(target), lambda params: torch.optim.Adam(params, lr=self.lr),
                       steps=self.steps, stop_when_done=self.stop_when_done)


def fit_edit_batch(target: KGETarget, cases: EncodedFacts, names: Sequence[str],
                   make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer], *, steps: int,
                   stop_when_done: bool = True, extra_loss: Callable[[], torch.Tensor] | None = None) -> None:
    """Optimise the parameters ``names`` on the cases' cross-entropy (plus ``extra_loss()``) for ``steps`` steps.

    The FT-style loop of FT, CaliNet and K-Adapter: dropout off (deterministic), every other parameter without
    gradients while it runs, stopping once every target ranks first when ``stop_when_done``.
    """
    model = target.model
    chosen = set(names)
    named = dict(model.named_parameters())
    frozen = [p for n, p in named.items() if n not in chosen and p.requires_grad]
    optimizer = make_optimizer([named[n] for n in names])
    was_training = model.training
    model.eval()
    inputs = target.inputs(cases)
    targets = cases.targets.to(model.entity_bias.device)
    for p in frozen:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            scores = model(**inputs)
            if stop_when_done and bool((scores.argmax(dim=1) == targets).all()):
                break
            loss = torch.nn.functional.cross_entropy(scores, targets)
            if extra_loss is not None:
                loss = loss + extra_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        optimizer.zero_grad(set_to_none=True)
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
