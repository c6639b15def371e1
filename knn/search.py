"""Nearest-neighbour search backends behind one small protocol, found by name in a registry.

A backend holds the (already normalised) keys with their stable ids and answers top-k queries with distances
in the metric's convention: squared L2 for ``"l2"``, ``1 - cos`` for ``"cosine"`` (keys and queries arrive
unit-normalised, so the inner product is the cosine). Exclusion (leave-one-out) is not a backend concern: the
datastore asks for a few more neighbours and filters them, one implementation for every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from kg_data.errors import KGDataError

__all__ = ["IndexConfig", "SearchBackend", "TorchExactSearch", "FaissSearch", "BACKENDS", "register_backend",
           "INDEX_KINDS", "METRICS"]

METRICS = ("l2", "cosine")
INDEX_KINDS = ("flat", "ivf", "hnsw")


@dataclass
class IndexConfig:
    """Which index a backend builds, with the parameters of the approximate ones (faiss only)."""

    kind: str = "flat"
    """``"flat"`` (exact), ``"ivf"`` (inverted lists over a k-means quantiser) or ``"hnsw"`` (graph)."""
    nlist: int = 1024
    """IVF: number of k-means cells (about sqrt(n) to 4 sqrt(n); the store needs at least this many keys)."""
    nprobe: int = 32
    """IVF: cells visited per query (recall against speed)."""
    hnsw_m: int = 32
    """HNSW: neighbours per node in the graph."""
    ef_construction: int = 80
    """HNSW: candidate list size while building."""
    ef_search: int = 64
    """HNSW: candidate list size while searching (at least k)."""

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise KGDataError(f"expected one of {', '.join(INDEX_KINDS)}, got {self.kind!r}", field="index.kind")
        for name in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise KGDataError(f"expected an integer >= 1, got {value!r}", field=f"index.{name}")


class SearchBackend(ABC):
    """Top-k search over keys with stable int64 ids; subclasses register under a name in :data:`BACKENDS`."""

    name: str = ""

    def __init__(self, metric: str, index: IndexConfig) -> None:
        self.metric = metric
        self.index = index

    @abstractmethod
    def rebuild(self, keys: torch.Tensor, ids: torch.Tensor) -> None:
        """Replace the whole content by ``keys`` (n, d) with ``ids`` (n,), ascending."""

    @abstractmethod
    def add(self, new_keys: torch.Tensor, new_ids: torch.Tensor, keys: torch.Tensor, ids: torch.Tensor) -> None:
        """Append ``new_keys`` (ids larger than every id held); ``keys``/``ids`` are the store's content after."""

    @abstractmethod
    def remove(self, ids: torch.Tensor, keys: torch.Tensor, kept_ids: torch.Tensor) -> None:
        """Delete ``ids``; ``keys``/``kept_ids`` are the store's content after the deletion (for rebuilding)."""

    @abstractmethod
    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, k) distances ascending and the (q, k) ids; an approximate index may return id -1 at distance inf."""


BACKENDS: dict[str, type[SearchBackend]] = {}


def register_backend(cls: type[SearchBackend]) -> type[SearchBackend]:
    """Class decorator: make a backend available to :class:`knn.Datastore` under ``cls.name``."""
    BACKENDS[cls.name] = cls
    return cls


@register_backend
class TorchExactSearch(SearchBackend):
    """Exact search in torch: blocked matmul against the keys with a running top-k (on the keys' device).

    Memory stays bounded by ``query_block x key_block`` scores whatever the store size; for L2 the ranking uses
    ``|k|^2 - 2 q.k`` and adds ``|q|^2`` only to the k selected.
    """

    name = "torch"
    query_block = 1024
    key_block = 32768

    def __init__(self, metric: str, index: IndexConfig) -> None:
        if index.kind != "flat":
            raise KGDataError(f"the torch backend searches exactly (index kind 'flat'), got {index.kind!r}; "
                              "use backend='faiss' for an approximate index", field="index.kind")
        super().__init__(metric, index)
        self._keys = torch.empty(0, 0)
        self._ids = torch.empty(0, dtype=torch.long)
        self._sqnorm = torch.empty(0)

    def rebuild(self, keys: torch.Tensor, ids: torch.Tensor) -> None:
        self._keys, self._ids = keys, ids
        self._sqnorm = keys.pow(2).sum(dim=1) if self.metric == "l2" else torch.empty(0)

    def add(self, new_keys: torch.Tensor, new_ids: torch.Tensor, keys: torch.Tensor, ids: torch.Tensor) -> None:
        # the keys are the datastore's own tensor (no copy); only the norms are incremental work
        if self.metric == "l2":
            self._sqnorm = torch.cat([self._sqnorm, new_keys.pow(2).sum(dim=1)])
        self._keys, self._ids = keys, ids

    def remove(self, ids: torch.Tensor, keys: torch.Tensor, kept_ids: torch.Tensor) -> None:
        self.rebuild(keys, kept_ids)

    @torch.no_grad()
    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self._keys.shape[0]
        queries = queries.to(self._keys.device, self._keys.dtype)
        out_d, out_i = [], []
        for q in queries.split(self.query_block):
            best_s = best_p = None
            for start in range(0, n, self.key_block):
                block = self._keys[start:start + self.key_block]
                if self.metric == "l2":
                    scores = torch.addmm(self._sqnorm[start:start + block.shape[0]], q, block.T, alpha=-2.0)
                else:  # unit vectors: rank by -q.k
                    scores = torch.mm(q, block.T).neg_()
                s, p = scores.topk(min(k, block.shape[0]), dim=1, largest=False, sorted=False)
                p += start
                if best_s is not None:
                    s, pick = torch.cat([best_s, s], 1).topk(k, dim=1, largest=False, sorted=False)
                    p = torch.cat([best_p, p], 1).gather(1, pick)
                best_s, best_p = s, p
            best_s, order = best_s.sort(dim=1)
            best_p = best_p.gather(1, order)
            if self.metric == "l2":
                dist = (best_s + q.pow(2).sum(dim=1, keepdim=True)).clamp_min_(0.0)
            else:
                dist = best_s.add_(1.0)
            out_d.append(dist)
            out_i.append(self._ids[best_p])
        return torch.cat(out_d), torch.cat(out_i)


@register_backend
class FaissSearch(SearchBackend):
    """faiss on the CPU: ``IndexFlatL2``/``IndexFlatIP`` (exact), ``IndexIVFFlat`` or ``IndexHNSWFlat``.

    Stable ids live in the index (``add_with_ids``; flat and HNSW through ``IndexIDMap2``). HNSW cannot delete,
    so a removal rebuilds it; IVF trains its quantiser on the keys present at the first build (seeded, so a
    reload rebuilds the same index) and keeps it when keys are added later (call ``Datastore.rebuild`` after the
    store has changed a lot).
    """

    name = "faiss"

    def __init__(self, metric: str, index: IndexConfig) -> None:
        import faiss

        super().__init__(metric, index)
        self._faiss = faiss
        self._index = None

    def _new_index(self, dim: int, keys: np.ndarray):
        faiss = self._faiss
        inner = self.metric == "cosine"
        faiss_metric = faiss.METRIC_INNER_PRODUCT if inner else faiss.METRIC_L2
        kind = self.index.kind
        if kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(dim) if inner else faiss.IndexFlatL2(dim))
        if kind == "hnsw":
            graph = faiss.IndexHNSWFlat(dim, self.index.hnsw_m, faiss_metric)
            graph.hnsw.efConstruction = self.index.ef_construction
            graph.hnsw.efSearch = self.index.ef_search
            return faiss.IndexIDMap2(graph)
        if keys.shape[0] < self.index.nlist:
            raise KGDataError(f"an IVF index with nlist={self.index.nlist} needs at least that many keys to train "
                              f"its quantiser, the store holds {keys.shape[0]}", field="index.nlist")
        quantizer = faiss.IndexFlatIP(dim) if inner else faiss.IndexFlatL2(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, self.index.nlist, faiss_metric)
        ivf.train(keys)
        ivf.nprobe = self.index.nprobe
        self._quantizer = quantizer  # the index does not own it: keep it alive as long as the index
        return ivf

    def rebuild(self, keys: torch.Tensor, ids: torch.Tensor) -> None:
        array = _as_faiss(keys)
        self._index = self._new_index(keys.shape[1], array)
        if array.shape[0]:
            self._index.add_with_ids(array, ids.numpy())

    def add(self, new_keys: torch.Tensor, new_ids: torch.Tensor, keys: torch.Tensor, ids: torch.Tensor) -> None:
        self._index.add_with_ids(_as_faiss(new_keys), new_ids.numpy())

    def remove(self, ids: torch.Tensor, keys: torch.Tensor, kept_ids: torch.Tensor) -> None:
        if self.index.kind == "hnsw":
            self.rebuild(keys, kept_ids)
        else:
            self._index.remove_ids(self._faiss.IDSelectorBatch(ids.numpy()))

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        # read the search-time knobs on every call, so that changing ``store.index`` needs no rebuild
        if self.index.kind == "hnsw":
            self._faiss.downcast_index(self._index.index).hnsw.efSearch = max(self.index.ef_search, k)
        elif self.index.kind == "ivf":
            self._index.nprobe = min(self.index.nprobe, self.index.nlist)
        dist, ids = self._index.search(_as_faiss(queries), k)
        dist, ids = torch.from_numpy(dist), torch.from_numpy(ids)
        if self.metric == "cosine":
            dist = 1.0 - dist
        # faiss pads a short answer with id -1 (and a huge or -huge distance): report inf
        return dist.masked_fill_(ids < 0, float("inf")), ids


def _as_faiss(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
