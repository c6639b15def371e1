"""Edit metrics of deltaKG (METHODS.md §2), from RAW ranks over all entities.

rank = 1 + the number of entities scored strictly higher than the target (no filtering).

- Succ@k: fraction of edit cases whose target ranks <= k after the edit.
- RK@k: stable facts with rank <= k after the edit / stable facts with rank <= k before.
- ER_roc = |R_edit - R_origin| / R_origin over the edit cases' mean ranks (higher is better).
- RK_roc = |R_s_edit - R_s_origin| / R_s_edit over the stable facts' mean ranks (lower is better).
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["raw_ranks", "succ_at", "rk_at", "er_roc", "rk_roc", "edit_metrics"]


def raw_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1 + #entities scored strictly higher`` than each target, as float (b,)."""
    target_scores = scores.gather(1, targets.view(-1, 1).to(scores.device))
    return (1 + (scores > target_scores).sum(dim=1)).double().cpu()


def succ_at(ranks_after: torch.Tensor, k: int) -> float:
    """Succ@k."""
    return float((ranks_after <= k).double().mean()) if ranks_after.numel() else float("nan")


def rk_at(stable_before: torch.Tensor, stable_after: torch.Tensor, k: int) -> float:
    """RK@k: how many of the stable facts ranked <= k before still are."""
    before = int((stable_before <= k).sum())
    return float((stable_after <= k).sum()) / before if before else float("nan")


def er_roc(edit_before: torch.Tensor, edit_after: torch.Tensor) -> float:
    """ER_roc: relative change of the edit cases' mean rank (higher is better)."""
    origin = float(edit_before.mean())
    return abs(float(edit_after.mean()) - origin) / origin


def rk_roc(stable_before: torch.Tensor, stable_after: torch.Tensor) -> float:
    """RK_roc: relative change of the stable facts' mean rank, over the edited mean (lower is better)."""
    edited = float(stable_after.mean())
    return abs(edited - float(stable_before.mean())) / edited


def edit_metrics(
    edit_before: torch.Tensor,
    edit_after: torch.Tensor,
    stable_before: torch.Tensor,
    stable_after: torch.Tensor,
    ks: Sequence[int] = (1, 3),
) -> dict[str, float]:
    """All edit metrics as one dict: succ@k, er_roc, rk@k, rk_roc."""
    out = {f"succ@{k}": succ_at(edit_after, k) for k in ks}
    out["er_roc"] = er_roc(edit_before, edit_after)
    out.update({f"rk@{k}": rk_at(stable_before, stable_after, k) for k in ks})
    out["rk_roc"] = rk_roc(stable_before, stable_after)
    return out
