"""k-NN calibration (Revisit-KNN): the k-NN label distribution, the calibrated training loss and the mixture.

Shapes: q queries, k neighbours, C classes. Everything is batched (one scatter, one gather): no Python loop
over examples or neighbours. The formulas follow METHODS.md §4, without the original's bugs (loss averaged
once, inference as a mixture of probabilities).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from kg_data.errors import KGDataError

__all__ = ["knn_distribution", "calibrated_loss", "interpolate", "choose_lambda", "accuracy", "LAMBDA_GRID",
           "LOSS_WEIGHTS"]

LAMBDA_GRID = tuple(round(0.1 * i, 1) for i in range(1, 10))
"""The dev grid for lambda: 0.1, 0.2, ..., 0.9."""


def knn_distribution(distances: torch.Tensor, neighbour_labels: torch.Tensor, n_classes: int,
                     temperature: float) -> torch.Tensor:
    """p_knn (q, C): weights ``softmax_j(-d_j / T)`` over the k neighbours, summed per neighbour label.

    A neighbour at distance ``inf`` (an approximate index that found fewer than k) gets weight 0; a row with no
    neighbour at all is uniform.
    """
    if distances.shape != neighbour_labels.shape or distances.dim() != 2:
        raise KGDataError(f"expected distances and neighbour_labels of one (q, k) shape, got "
                          f"{tuple(distances.shape)} and {tuple(neighbour_labels.shape)}", field="neighbour_labels")
    if not temperature > 0:
        raise KGDataError(f"expected a number > 0, got {temperature!r}", field="temperature")
    found = torch.isfinite(distances)
    if torch.isnan(distances).any():
        raise KGDataError("distances hold NaN", field="distances")
    labels = neighbour_labels.long()
    if ((labels[found] < 0) | (labels[found] >= n_classes)).any():
        raise KGDataError(f"neighbour labels must lie in [0, {n_classes})", field="neighbour_labels")
    logits = (-distances.float() / temperature).masked_fill(~found, float("-inf"))
    # an empty row would be NaN under softmax: give it zero logits, then overwrite it with the uniform row
    empty = ~found.any(dim=1)
    weights = torch.softmax(logits.masked_fill(empty[:, None], 0.0), dim=1).masked_fill(~found, 0.0)
    probs = torch.zeros(distances.shape[0], n_classes, dtype=weights.dtype, device=weights.device)
    probs.scatter_add_(1, labels.clamp(0, n_classes - 1), weights)
    probs[empty] = 1.0 / n_classes
    return probs


def _ce_weight(p_y: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    return 1.0 + alpha * -torch.log(p_y).clamp_min(-100.0)


def _focal_weight(p_y: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    return (1.0 - p_y).pow(gamma)


LOSS_WEIGHTS: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "ce": _ce_weight,
    "focal": _focal_weight,
}
"""Per-example weight on the cross-entropy, by loss kind, as a function of p_knn(y), alpha and gamma."""


def calibrated_loss(logits: torch.Tensor, labels: torch.Tensor, p_knn: torch.Tensor, alpha: float = 1e-4,
                    kind: str = "ce", gamma: float = 2.0) -> torch.Tensor:
    """The k-NN calibrated training loss, averaged once over the batch.

    ``"ce"``: ``CE * (1 + alpha * -log p_knn(y))`` (log clamped at -100); ``"focal"``: ``(1 - p_knn(y))^gamma * CE``.
    ``p_knn`` is a constant of the step (built from the datastore without gradient), so it is detached.
    """
    if kind not in LOSS_WEIGHTS:
        raise KGDataError(f"expected one of {', '.join(LOSS_WEIGHTS)}, got {kind!r}", field="kind")
    if logits.dim() != 2 or p_knn.shape != logits.shape:
        raise KGDataError(f"expected logits and p_knn of one (batch, classes) shape, got {tuple(logits.shape)} "
                          f"and {tuple(p_knn.shape)}", field="p_knn")
    if labels.shape != (logits.shape[0],):
        raise KGDataError(f"expected {logits.shape[0]} labels, got shape {tuple(labels.shape)}", field="labels")
    if ((labels < 0) | (labels >= logits.shape[1])).any():
        raise KGDataError(f"labels must lie in [0, {logits.shape[1]})", field="labels")
    ce = F.cross_entropy(logits, labels, reduction="none")
    p_y = p_knn.detach().to(ce.dtype).gather(1, labels[:, None]).squeeze(1)
    return (LOSS_WEIGHTS[kind](p_y, alpha, gamma) * ce).mean()


def interpolate(p_model: torch.Tensor, p_knn: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * p_knn + (1 - lam) * p_model``: a mixture of two distributions, so rows still sum to 1."""
    if p_model.shape != p_knn.shape:
        raise KGDataError(f"expected p_model and p_knn of one shape, got {tuple(p_model.shape)} and "
                          f"{tuple(p_knn.shape)}", field="p_knn")
    if not 0.0 <= lam <= 1.0:
        raise KGDataError(f"expected a number in [0, 1], got {lam!r}", field="lam")
    return lam * p_knn + (1.0 - lam) * p_model


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose most probable class is the label."""
    return (probs.argmax(dim=1) == labels).float().mean().item()


def choose_lambda(p_model: torch.Tensor, p_knn: torch.Tensor, labels: torch.Tensor,
                  metric: Callable[[torch.Tensor, torch.Tensor], float] = accuracy,
                  grid: tuple[float, ...] = LAMBDA_GRID) -> tuple[float, dict[float, float]]:
    """The lambda of ``grid`` whose mixture scores best on dev under ``metric(probs, labels)`` (higher is better;
    ties go to the smaller lambda, the one closer to the model alone), and every grid point's score."""
    if not grid:
        raise KGDataError("expected a non-empty grid of lambdas", field="grid")
    scores = {lam: metric(interpolate(p_model, p_knn, lam), labels) for lam in grid}
    best = max(grid, key=lambda lam: (scores[lam], -lam))
    return best, scores
