"""k-NN memory: edits as datastore entries (query representation -> new answer) mixed into the KG model's output.

An edit adds, per case, the representation the entity decoder reads for the edited query
(:meth:`MaskedEntityModel.mask_states`) with the target entity as label, to a :class:`knn.Datastore`
attached to the model. At every forward pass the k nearest entries of each query are looked up; entries
farther than their radius (Euclidean) are ignored, and a query with no entry in reach keeps the model's
scores bit for bit. Radii start at ``radius`` and shrink when an edit of another label lands nearby
(:meth:`EditMemory.add`), so that nearby edits do not answer for each other. A query with entries in reach gets the log of the kNN-KGE mixture
``lam * p_knn + (1 - lam) * softmax(scores)`` (:func:`knn.link_prediction.mixture_scores`); with ``lam > 0.5``
the label of the entries in reach is the top answer. No weight is written: rolling an edit back
deletes its entries, which leaves the store (and so the model's outputs) exactly as before.

A later edit of the same query with another target supersedes the earlier one (the newest answer wins);
rollback restores radii too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kg_data.errors import KGDataError

from ..editor import Editor, register_editor
from ..target import EncodedFacts, KGETarget

__all__ = ["KNNMemory", "KNNMemoryConfig", "MemorySnapshot", "EditMemory"]


@dataclass
class KNNMemoryConfig:
    """Settings of the k-NN memory editor."""

    k: int = 8  # entries looked up per query
    lam: float = 0.75  # weight of p_knn in the mixture (> 0.5: one entry in reach decides the top answer)
    radius: float | None = None  # initial Euclidean reach of an entry; None: radius_scale x distance_scale()
    radius_scale: float = 0.5
    temperature: float | None = None  # of softmax(-d^2 / T) over the entries in reach; None: radius^2
    calibration_queries: int = 512  # seeded random queries whose spacing sets the automatic radius

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise KGDataError(f"expected an integer >= 1, got {self.k!r}", field="k")
        if not (isinstance(self.lam, (int, float)) and 0.0 < self.lam <= 1.0):
            raise KGDataError(f"expected a number in (0, 1], got {self.lam!r}", field="lam")
        for name in ("radius", "temperature"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise KGDataError(f"expected a number > 0 (or None), got {value!r}", field=name)
        if not (isinstance(self.radius_scale, (int, float)) and self.radius_scale > 0):
            raise KGDataError(f"expected a number > 0, got {self.radius_scale!r}", field="radius_scale")
        if not isinstance(self.calibration_queries, int) or self.calibration_queries < 2:
            raise KGDataError(f"expected an integer >= 2, got {self.calibration_queries!r}",
                              field="calibration_queries")


class EditMemory:
    """One model's datastore of edits and the two forward hooks that read it."""

    def __init__(self, model: nn.Module, radius: float, config: KNNMemoryConfig) -> None:
        from knn import Datastore

        self.model, self.radius, self.config = model, float(radius), config
        self.temperature = config.temperature or self.radius ** 2
        self.store = Datastore(model.encoder.config.hidden_size, model.config.num_entities, metric="l2")
        self.radii = torch.empty(0)  # per store row; shrunk by conflicting later edits, -1 once superseded
        self._states: torch.Tensor | None = None
        # the decoder's input is read where it is computed, then the model's output is mixed at the end
        self._handles = [model.transform.register_forward_hook(self._remember),
                         model.register_forward_hook(self._mix)]

    def _remember(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        self._states = out

    def _mix(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        from knn import knn_distribution
        from knn.link_prediction import mixture_scores

        states, self._states = self._states, None
        if not len(self.store) or states is None or states.shape[0] != out.shape[0]:
            return out
        queries = states.detach().float().cpu()
        # the search ranks by |k|^2 - 2 q.k, whose float32 cancellation error (~1e-5 for unit-variance states of
        # a few hundred dimensions) exceeds the radii of nearby conflicting edits: take a wider candidate pool,
        # re-measure it directly and keep the k nearest
        _, ids = self.store.search(queries, min(max(4 * self.config.k, 64), len(self.store)))
        rows = torch.searchsorted(self.store.ids, ids.cpu())
        dist = (self.store.keys[rows] - queries[:, None, :]).pow(2).sum(dim=-1)
        dist, order = dist.topk(min(self.config.k, dist.shape[1]), dim=1, largest=False)
        rows = rows.gather(1, order)
        radii = self.radii[rows]
        reach = (radii >= 0) & (dist <= radii ** 2)
        hit = reach.any(dim=1).nonzero().squeeze(1)
        if not hit.numel():
            return out
        p_knn = knn_distribution(dist[hit].masked_fill(~reach[hit], math.inf), self.store.labels[rows[hit]],
                                 self.store.n_classes, self.temperature)
        hit = hit.to(out.device)
        mixed = out.clone()
        mixed[hit] = mixture_scores(out[hit], p_knn.to(out.device), self.config.lam).to(out.dtype)
        return mixed

    @torch.no_grad()
    def add(self, key: torch.Tensor, label: int) -> None:
        """Add one entry; entries of other labels in reach of each other get their radii shrunk (GRACE's rule).

        Another label within ``max(its radius, the new radius)``: both radii become at most half their
        distance, so neither reaches the other's query. An entry of another label at (nearly) the same key
        is the same query edited anew: it is superseded (radius -1) and the newest edit answers.
        """
        radius = self.radius
        if len(self.store):
            dist = torch.linalg.vector_norm(self.store.keys - key[None].to(self.store.keys.device), dim=1).cpu()
            conflict = (self.store.labels != label) & (self.radii >= 0) & (dist <= self.radii.clamp_min(radius))
            if bool(conflict.any()):
                near = dist[conflict]
                same = near <= 1e-3 * self.radius
                self.radii[conflict] = torch.where(same, torch.full_like(near, -1.0),
                                                   torch.minimum(self.radii[conflict], near / 2))
                if bool((~same).any()):
                    radius = min(radius, float(near[~same].min()) / 2)
        self.store.add(key[None], torch.tensor([label]))
        self.radii = torch.cat([self.radii, torch.tensor([radius])])

    def remove_hooks(self) -> None:
        """Detach the memory from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


class MemorySnapshot:
    """The memory now; ``restore`` deletes every entry added since (the store's ids only grow)."""

    names: list[str] = []

    def __init__(self, memory: EditMemory) -> None:
        self.memory = memory
        self._next_id = memory.store._next_id
        self._radii = memory.radii.clone()

    def restore(self) -> None:
        """Delete the entries added after the snapshot and put every radius back."""
        store = self.memory.store
        later = store.ids[store.ids >= self._next_id]
        if later.numel():
            store.remove(later)
        self.memory.radii = self._radii.clone()


@torch.no_grad()
def _states(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return model.mask_states(**inputs).float().cpu()
    finally:
        model.train(was_training)


@register_editor
class KNNMemory(Editor):
    """k-NN memory: each edit is a datastore entry mixed into the scores of queries within its radius."""

    name = "knn"
    summary = "k-NN memory: an entry (query representation -> target) per edit, mixed into nearby queries' scores"
    families = ("kge",)

    def __init__(self, k: int = 8, lam: float = 0.75, radius: float | None = None, radius_scale: float = 0.5,
                 temperature: float | None = None, calibration_queries: int = 512) -> None:
        self.config = KNNMemoryConfig(k=k, lam=lam, radius=radius, radius_scale=radius_scale,
                                      temperature=temperature, calibration_queries=calibration_queries)
        self._memories: dict[int, EditMemory] = {}

    def memory(self, target: KGETarget) -> EditMemory:
        """The memory attached to the target's model (attached, with its radius set, on first use)."""
        model = target.model
        memory = self._memories.get(id(model))
        if memory is None:
            radius = self.config.radius or self.config.radius_scale * self.distance_scale(target)
            memory = EditMemory(model, radius, self.config)
            self._memories[id(model)] = memory
        return memory

    def distance_scale(self, target: KGETarget) -> float:
        """Median distance from a seeded random query to its nearest distinct one (the unit of the radius).

        Queries with the same known entity and relation share one representation; those zero distances are
        left out, so the scale says how far apart *different* queries lie in this model.
        """
        from ..locate.kge_adapter import random_queries

        model = target.model
        rows = torch.tensor(random_queries(model.config.num_entities, model.config.num_relations,
                                           self.config.calibration_queries), dtype=torch.long)
        states = _states(model, target.inputs(EncodedFacts(rows[:, :3], rows[:, 3], rows[:, 2])))
        dist = torch.cdist(states.double(), states.double())
        dist = dist.masked_fill(dist <= 1e-6 * float(dist.max().clamp_min(1e-12)), math.inf)
        nearest = dist.min(dim=1).values
        nearest = nearest[torch.isfinite(nearest)]
        if not nearest.numel():
            raise KGDataError("every calibration query has the same representation: pass radius=...",
                              field="radius")
        return float(nearest.median())

    def detach(self, target: KGETarget) -> None:
        """Remove the memory from the model (it computes exactly what it did before any edit)."""
        memory = self._memories.pop(id(target.model), None)
        if memory is not None:
            memory.remove_hooks()

    def prepare(self, target: KGETarget) -> None:
        """Attach the (empty) memory."""
        self.memory(target)

    def touched(self, target: KGETarget) -> list[str]:
        """No weight is written."""
        return []

    def snapshot(self, target: KGETarget) -> MemorySnapshot:
        """The memory's entries now."""
        return MemorySnapshot(self.memory(target))

    def parameter_counts(self, target: KGETarget) -> dict[str, int]:
        """Numbers held by the memory (keys, labels and radii)."""
        store = self.memory(target).store
        return {"edited": 0, "added": int(store.keys.numel() + 2 * store.labels.numel())}

    def edit(self, target: KGETarget, cases: EncodedFacts) -> None:
        """Add one entry per case: the edited query's representation, labelled with its target."""
        memory = self.memory(target)
        for key, label in zip(_states(target.model, target.inputs(cases)), cases.targets.tolist()):
            memory.add(key, label)
