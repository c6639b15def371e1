"""A scikit-learn k-NN classifier over precomputed features, backed by :class:`knn.Datastore`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .datastore import Datastore

__all__ = ["KNNClassifier"]


class KNNClassifier(ClassifierMixin, BaseEstimator):
    """k-NN classifier: ``predict_proba`` is the temperature-softmax k-NN distribution of :func:`knn_distribution`.

    ``index`` is a :class:`knn.IndexConfig` (or its fields as a dict) for the faiss backend's approximate indexes.
    """

    def __init__(self, n_neighbors: int = 16, metric: str = "l2", temperature: float = 10.0, backend: str = "torch",
                 index: Any = None) -> None:
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.temperature = temperature
        self.backend = backend
        self.index = index

    def fit(self, X: Any, y: Any) -> "KNNClassifier":
        """Store the training features and labels (labels may be any hashable values)."""
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        self.store_ = Datastore.build(torch.from_numpy(np.asarray(X, dtype=np.float32)),
                                      torch.from_numpy(encoded.astype(np.int64)), len(self.classes_),
                                      metric=self.metric, backend=self.backend, index=self.index)
        return self

    def _queries(self, X: Any) -> torch.Tensor:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        return torch.from_numpy(np.asarray(X, dtype=np.float32))

    def kneighbors(self, X: Any, n_neighbors: int | None = None, return_distance: bool = True):
        """Distances (squared L2 or 1 - cos) and row indices of the training samples nearest to each row of X."""
        dist, ids = self.store_.search(self._queries(X), n_neighbors or self.n_neighbors)
        return (dist.numpy(), ids.numpy()) if return_distance else ids.numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, n_classes) k-NN distribution, columns in the order of ``classes_``."""
        queries = self._queries(X)
        k = min(self.n_neighbors, len(self.store_))
        return self.store_.knn_probs(queries, k, self.temperature).numpy().astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row."""
        probs = self.predict_proba(X)
        return self.classes_[probs.argmax(axis=1)]
