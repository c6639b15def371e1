"""The k-NN datastore: float keys with integer labels and stable ids, searched exactly or approximately.

Keys and queries pass through the same normalisation (unit length for ``"cosine"``, none for ``"l2"``), so the
distances a search returns are squared L2 or ``1 - cos``. Ids returned by :meth:`Datastore.add` stay valid
across later adds and removals; ``search(..., exclude=ids)`` leaves given ids out per query (leave-one-out).
Saved as ``datastore.safetensors`` (keys, labels, ids) plus ``datastore.json`` (settings): no pickle.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from kg_data.errors import KGDataError

from .calibration import knn_distribution
from .search import BACKENDS, METRICS, IndexConfig, SearchBackend

__all__ = ["Datastore"]

_TENSORS = "datastore.safetensors"
_SETTINGS = "datastore.json"
_FORMAT = 1


class Datastore:
    """Keys (n, d) -> labels in ``[0, n_classes)``, with top-k search under ``metric`` through ``backend``."""

    def __init__(self, dim: int, n_classes: int, metric: str = "l2", backend: str = "torch",
                 index: IndexConfig | dict[str, Any] | None = None) -> None:
        for name, value in (("dim", dim), ("n_classes", n_classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise KGDataError(f"expected an integer >= 1, got {value!r}", field=name)
        if metric not in METRICS:
            raise KGDataError(f"expected one of {', '.join(METRICS)}, got {metric!r}", field="metric")
        if backend not in BACKENDS:
            raise KGDataError(f"expected one of {', '.join(BACKENDS)}, got {backend!r}", field="backend")
        self.dim, self.n_classes, self.metric, self.backend = dim, n_classes, metric, backend
        self.index = index if isinstance(index, IndexConfig) else IndexConfig(**(index or {}))
        self._search: SearchBackend = BACKENDS[backend](metric, self.index)
        self._built = False  # the backend is built at the first search (an IVF index trains on what is there)
        self.keys = torch.empty(0, dim)
        self.labels = torch.empty(0, dtype=torch.long)
        self.ids = torch.empty(0, dtype=torch.long)  # ascending, so that id -> row is a searchsorted
        self._next_id = 0

    @classmethod
    def build(cls, keys: Any, labels: Any, n_classes: int | None = None, **options: Any) -> "Datastore":
        """A datastore holding ``keys`` and ``labels`` (``n_classes`` defaults to max label + 1)."""
        keys_t = _as_keys(keys, "keys")
        labels_t = _as_labels(labels)
        if n_classes is None:
            n_classes = int(labels_t.max()) + 1 if labels_t.numel() else 1
        store = cls(keys_t.shape[1], n_classes, **options)
        store.add(keys_t, labels_t)
        return store

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __repr__(self) -> str:
        return (f"Datastore(n={len(self)}, dim={self.dim}, n_classes={self.n_classes}, metric={self.metric!r}, "
                f"backend={self.backend!r}, index={self.index.kind!r})")

    def __getstate__(self) -> dict[str, Any]:
        # a faiss index cannot be pickled (copy.deepcopy, joblib): drop the backend, rebuilt at the next search
        state = dict(self.__dict__)
        state["_search"], state["_built"] = None, False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._search = BACKENDS[self.backend](self.metric, self.index)

    # ------------------------------------------------------------------------------------------ content
    def add(self, keys: Any, labels: Any) -> torch.Tensor:
        """Append keys (n, d) with labels (n,); returns their stable ids (n,)."""
        keys_t = self._prepare(keys, "keys")
        labels_t = _as_labels(labels)
        if labels_t.shape[0] != keys_t.shape[0]:
            raise KGDataError(f"expected one label per key ({keys_t.shape[0]}), got {labels_t.shape[0]}",
                              field="labels")
        if labels_t.numel() and (labels_t.min() < 0 or labels_t.max() >= self.n_classes):
            bad = labels_t[(labels_t < 0) | (labels_t >= self.n_classes)][0].item()
            raise KGDataError(f"labels must lie in [0, {self.n_classes}), got {bad}", field="labels")
        new_ids = torch.arange(self._next_id, self._next_id + keys_t.shape[0])
        self._next_id += keys_t.shape[0]
        if not len(self):  # keep the device of the first keys (a torch search then runs there)
            self.keys = self.keys.to(keys_t.device)
        self.keys = torch.cat([self.keys, keys_t.to(self.keys.device)])
        self.labels = torch.cat([self.labels, labels_t])
        self.ids = torch.cat([self.ids, new_ids])
        if self._built:
            self._search.add(keys_t, new_ids, self.keys, self.ids)
        return new_ids

    def remove(self, ids: Any) -> None:
        """Delete the entries with these ids (each must be present)."""
        ids_t = _as_ids(ids, "ids").unique()
        rows = self._rows(ids_t, "ids")
        keep = torch.ones(len(self), dtype=torch.bool)
        keep[rows] = False
        self.keys = self.keys[keep.to(self.keys.device)]
        self.labels, self.ids = self.labels[keep], self.ids[keep]
        if self._built:
            self._search.remove(ids_t, self.keys, self.ids)

    def labels_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Labels of ``ids`` (any shape); id -1 (nothing found) maps to label -1."""
        missing = ids < 0
        rows = torch.searchsorted(self.ids, ids.clamp_min(0).contiguous()).clamp_max(max(len(self) - 1, 0))
        return self.labels[rows].masked_fill(missing, -1)

    def rebuild(self) -> None:
        """Rebuild the search index from the current content (e.g. retrain an IVF quantiser after many adds)."""
        self._search.rebuild(self.keys, self.ids)
        self._built = True

    # ------------------------------------------------------------------------------------------ search
    def search(self, queries: Any, k: int, exclude: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (distances ascending, ids) per query, each (q, k).

        ``exclude``: ids to leave out, (q,) one per query or (q, m) padded with -1 (leave-one-out passes the
        queries' own ids).
        """
        q = self._prepare(queries, "queries")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise KGDataError(f"expected an integer >= 1, got {k!r}", field="k")
        excluded = self._exclusion(exclude, q.shape[0])
        width = 0 if excluded is None else excluded.shape[1]
        most_excluded = int((excluded >= 0).sum(dim=1).max()) if width and q.shape[0] else 0
        if k > len(self) - most_excluded:
            raise KGDataError(f"k={k} is larger than the store ({len(self)} entries"
                              + (f", {most_excluded} excluded for some query" if most_excluded else "") + ")",
                              field="k")
        if not self._built:
            self.rebuild()
        dist, ids = self._search.search(q, min(k + width, len(self)))
        if excluded is None:
            return dist, ids
        # drop excluded hits, then keep the first k in distance order (a stable sort keeps ties as found)
        hit = (ids[:, :, None] == excluded.to(ids.device)[:, None, :]).any(dim=2) & (ids >= 0)
        dist = dist.masked_fill(hit, float("inf"))
        dist, order = dist.sort(dim=1, stable=True)
        ids = ids.gather(1, order).masked_fill(torch.isinf(dist), -1)
        return dist[:, :k], ids[:, :k]

    def knn_probs(self, queries: Any, k: int, temperature: float, exclude: Any = None) -> torch.Tensor:
        """p_knn (q, n_classes) of the queries' k nearest entries (see :func:`knn.knn_distribution`)."""
        dist, ids = self.search(queries, k, exclude=exclude)
        return knn_distribution(dist, self.labels_of(ids.cpu()).to(dist.device), self.n_classes, temperature)

    # ------------------------------------------------------------------------------------------ save / load
    def save(self, directory: str | PathLike) -> Path:
        """Write ``datastore.safetensors`` and ``datastore.json`` into ``directory`` (created if absent)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        save_file({"keys": self.keys.detach().cpu().contiguous(), "labels": self.labels.contiguous(),
                   "ids": self.ids.contiguous()}, str(path / _TENSORS))
        settings = {"format": _FORMAT, "dim": self.dim, "n_classes": self.n_classes, "metric": self.metric,
                    "backend": self.backend, "index": asdict(self.index), "next_id": self._next_id}
        (path / _SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | PathLike, backend: str | None = None) -> "Datastore":
        """A datastore saved by :meth:`save` (optionally searched through another ``backend``)."""
        path = Path(directory)
        settings_path, tensors_path = path / _SETTINGS, path / _TENSORS
        for file in (settings_path, tensors_path):
            if not file.is_file():
                raise KGDataError("datastore file not found", path=file)
        try:
            settings = json.loads(settings_path.read_text())
        except json.JSONDecodeError as error:
            raise KGDataError(f"not valid JSON: {error.msg}", path=settings_path, line=error.lineno) from None
        for field in ("format", "dim", "n_classes", "metric", "backend", "index", "next_id"):
            if field not in settings:
                raise KGDataError("missing", path=settings_path, field=field)
        if settings["format"] != _FORMAT:
            raise KGDataError(f"unknown format {settings['format']!r} (expected {_FORMAT})", path=settings_path,
                              field="format")
        try:
            tensors = load_file(str(tensors_path))
        except Exception as error:  # safetensors raises its own error types for a corrupt file
            raise KGDataError(f"not a safetensors file ({error})", path=tensors_path) from None
        for name in ("keys", "labels", "ids"):
            if name not in tensors:
                raise KGDataError("tensor missing", path=tensors_path, field=name)
        store = cls(settings["dim"], settings["n_classes"], metric=settings["metric"],
                    backend=backend or settings["backend"], index=settings["index"])
        keys, labels, ids = tensors["keys"], tensors["labels"], tensors["ids"]
        n = keys.shape[0]
        if keys.shape != (n, store.dim) or labels.shape != (n,) or ids.shape != (n,):
            raise KGDataError(f"inconsistent shapes keys {tuple(keys.shape)}, labels {tuple(labels.shape)}, ids "
                              f"{tuple(ids.shape)} for dim {store.dim}", path=tensors_path, field="keys")
        if n and ((ids[1:] <= ids[:-1]).any() or ids[-1] >= settings["next_id"] or ids[0] < 0):
            raise KGDataError("ids must be ascending, >= 0 and below next_id", path=tensors_path, field="ids")
        if n and (labels.min() < 0 or labels.max() >= store.n_classes):
            raise KGDataError(f"labels must lie in [0, {store.n_classes})", path=tensors_path, field="labels")
        if not torch.isfinite(keys).all():
            raise KGDataError("keys hold NaN or inf", path=tensors_path, field="keys")
        store.keys, store.labels, store.ids = keys, labels.long(), ids.long()
        store._next_id = int(settings["next_id"])
        return store

    # ------------------------------------------------------------------------------------------ helpers
    def _prepare(self, x: Any, name: str) -> torch.Tensor:
        """Checked float32 (n, dim) rows, unit-normalised under the cosine metric (keys and queries alike)."""
        x = _as_keys(x, name)
        if x.shape[1] != self.dim:
            raise KGDataError(f"expected {self.dim} columns (the store's dimension), got {x.shape[1]}", field=name)
        if self.metric == "cosine":
            norm = x.norm(dim=1, keepdim=True)
            if (norm == 0).any():
                raise KGDataError("a zero vector has no direction under the cosine metric", field=name)
            x = x / norm
        return x

    def _rows(self, ids: torch.Tensor, name: str) -> torch.Tensor:
        rows = torch.searchsorted(self.ids, ids.contiguous())
        present = (rows < len(self)) & (self.ids[rows.clamp_max(max(len(self) - 1, 0))] == ids) if len(self) else \
            torch.zeros_like(ids, dtype=torch.bool)
        if not present.all():
            raise KGDataError(f"id {ids[~present][0].item()} is not in the store", field=name)
        return rows

    def _exclusion(self, exclude: Any, n_queries: int) -> torch.Tensor | None:
        if exclude is None:
            return None
        ids = _as_ids(exclude, "exclude")
        if ids.dim() == 1:
            ids = ids[:, None]
        if ids.dim() != 2 or ids.shape[0] != n_queries:
            raise KGDataError(f"expected ids of shape ({n_queries},) or ({n_queries}, m), got {tuple(ids.shape)}",
                              field="exclude")
        if (ids < -1).any():
            raise KGDataError("ids must be >= 0 (or -1 as padding)", field="exclude")
        given = ids[ids >= 0]
        if given.numel():
            self._rows(given.unique(), "exclude")
        return ids


def _as_keys(x: Any, name: str) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.dim() != 2:
        raise KGDataError(f"expected a 2-d (n, dim) array, got shape {tuple(t.shape)}", field=name)
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise KGDataError(f"expected floating-point values, got {t.dtype}", field=name)
    t = t.detach().float()
    if not torch.isfinite(t).all():
        row = int((~torch.isfinite(t)).any(dim=1).nonzero()[0])
        raise KGDataError(f"row {row} holds NaN or inf", field=name)
    return t


def _as_labels(x: Any) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.dim() != 1:
        raise KGDataError(f"expected a 1-d array of labels, got shape {tuple(t.shape)}", field="labels")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise KGDataError(f"expected integer labels, got {t.dtype}", field="labels")
    return t.detach().cpu().long()


def _as_ids(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise KGDataError(f"expected integer ids, got {t.dtype}", field=name)
    return t.detach().cpu().long()
