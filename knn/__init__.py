"""knn: a k-NN datastore (torch / faiss), k-NN calibration of classifiers, a scikit-learn k-NN estimator and
k-NN calibrated text classification (``knn.text_tasks``, ``knn.text_model``, ``knn.text_classify``).

Public names are imported lazily, so that ``import knn`` stays cheap (faiss and scikit-learn load on use).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Datastore": "knn.datastore",
    "IndexConfig": "knn.search",
    "SearchBackend": "knn.search",
    "BACKENDS": "knn.search",
    "register_backend": "knn.search",
    "knn_distribution": "knn.calibration",
    "calibrated_loss": "knn.calibration",
    "interpolate": "knn.calibration",
    "choose_lambda": "knn.calibration",
    "accuracy": "knn.calibration",
    "LAMBDA_GRID": "knn.calibration",
    "KNNClassifier": "knn.estimator",
    "ClassifyConfig": "knn.text_classify",
    "run_classification": "knn.text_classify",
    "TextClassifier": "knn.text_model",
    "TASKS": "knn.text_tasks",
    "load_splits": "knn.text_tasks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'knn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
