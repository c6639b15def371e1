"""kNN-KGE: k-NN link prediction over a KG model's query representations, mixed with its entity distribution.

The datastore holds, for every training triple and both sides, the query representation the entity decoder
reads (:meth:`MaskedEntityModel.mask_states`: the transformed hidden state at the readout position) with the
hidden entity as label. A query's scores are the log of the mixture

    p = lambda * p_knn + (1 - lambda) * softmax(model scores),

with p_knn the k nearest entries' softmax(-d / T) weights summed per entity (:func:`knn.knn_distribution`).
Log-probabilities (``logaddexp``) rather than probabilities are returned so that entities whose model
probability underflows in float32 keep their order. A query never sees its own training entry (leave-one-out):
scoring a training triple excludes the entry it contributed, so training queries are judged as unseen ones.
k, T and lambda are chosen on the valid split (:func:`choose_hyperparameters`); test is only for reporting.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from kg_data.errors import KGDataError

from .calibration import LAMBDA_GRID, knn_distribution
from .datastore import Datastore
from .search import BACKENDS, METRICS

__all__ = ["KNNKGEConfig", "KNNLinkPredictor", "query_states", "mixture_scores", "choose_hyperparameters",
           "evaluate_knn", "evaluate_model_knn", "K_GRID", "TEMPERATURE_GRID"]

K_GRID = (4, 16, 64)
"""The valid grid for k."""
TEMPERATURE_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
"""The valid grid for T, as multiples of the median distance from a valid query to its largest-k neighbours
(distances scale with the model's representation, so absolute temperatures would not carry across models; the
nearest neighbour is no scale: training queries with the same known entity and relation lie at distance 0)."""


@dataclass
class KNNKGEConfig:
    """k, temperature and lambda of the mixture; the datastore's metric and search backend."""

    k: int = 16
    temperature: float = 1.0  # in the store's distance units (squared L2, or 1 - cos)
    lam: float = 0.5
    metric: str = "l2"
    backend: str = "torch"

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise KGDataError(f"expected an integer >= 1, got {self.k!r}", field="k")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise KGDataError(f"expected a number > 0, got {self.temperature!r}", field="temperature")
        if not (isinstance(self.lam, (int, float)) and 0.0 <= self.lam <= 1.0):
            raise KGDataError(f"expected a number in [0, 1], got {self.lam!r}", field="lam")
        if self.metric not in METRICS:
            raise KGDataError(f"expected one of {', '.join(METRICS)}, got {self.metric!r}", field="metric")
        if self.backend not in BACKENDS:
            raise KGDataError(f"expected one of {', '.join(BACKENDS)}, got {self.backend!r}", field="backend")


def _autocast(model: Any, precision: str):
    if precision not in ("fp32", "bf16"):
        raise KGDataError(f"must be fp32 or bf16, got {precision!r}", field="precision")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(model.entity_bias.device.type, dtype=torch.bfloat16)


@torch.no_grad()
def query_states(model: Any, triples: Tensor, side: str, *, chunk: int = 256, precision: str = "fp32",
                 progress: bool = False) -> Tensor:
    """The decoder's input for each query hiding ``side`` of ``triples``, (n, d) float32 on the CPU.

    Queries are encoded in chunks sorted by length (as :meth:`MaskedEntityModel.score`), in eval mode.
    """
    was_training = model.training
    model.eval()
    try:
        inputs = model.inputs(torch.as_tensor(triples), side)
        lengths = inputs["attention_mask"].sum(dim=1)
        order = torch.argsort(lengths, descending=True, stable=True)
        out = torch.empty(order.numel(), model.encoder.config.hidden_size)
        starts = range(0, order.numel(), chunk)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"{side} queries", unit="chunk", leave=False)
        with _autocast(model, precision):
            for start in starts:
                index = order[start:start + chunk]
                width = int(lengths[index].max())
                states = model.mask_states(inputs["input_ids"][index, :width],
                                           inputs["attention_mask"][index, :width], inputs["mask_positions"][index])
                out[index.cpu()] = states.float().cpu()
        return out
    finally:
        model.train(was_training)


def mixture_scores(model_scores: Tensor, p_knn: Tensor, lam: float) -> Tensor:
    """``log(lam * p_knn + (1 - lam) * softmax(model_scores))`` per row, float32 (b, E)."""
    if model_scores.shape != p_knn.shape:
        raise KGDataError(f"expected model scores and p_knn of one shape, got {tuple(model_scores.shape)} and "
                          f"{tuple(p_knn.shape)}", field="p_knn")
    if not 0.0 <= lam <= 1.0:
        raise KGDataError(f"expected a number in [0, 1], got {lam!r}", field="lam")
    log_model = torch.log_softmax(model_scores.float(), dim=1)
    if lam == 0.0:
        return log_model
    with torch.autocast(model_scores.device.type, enabled=False):
        knn_part = torch.log(p_knn.float()) + math.log(lam)
        if lam == 1.0:
            return knn_part
        return torch.logaddexp(knn_part, log_model + math.log1p(-lam))


def _triple_keys(triples: Tensor, num_entities: int, num_relations: int) -> Tensor:
    h, r, t = triples.long().unbind(dim=1)
    return (h * num_relations + r) * num_entities + t


class KNNLinkPredictor:
    """A KG model with a datastore of its training queries; :meth:`score` is a drop-in for ``model.score``.

    Entry ids: tail query of the i-th (deduplicated, sorted) training triple -> id i, its head query -> n + i.
    """

    def __init__(self, model: Any, store: Datastore, triples: Tensor, config: KNNKGEConfig | None = None,
                 precision: str = "fp32") -> None:
        self.model, self.store, self.config, self.precision = model, store, config or KNNKGEConfig(), precision
        self.triples = triples
        self._num_relations = max(int(model.config.num_relations), 1)
        self._keys = _triple_keys(triples, model.config.num_entities, self._num_relations)
        if (self._keys[1:] <= self._keys[:-1]).any():
            raise KGDataError("store triples must be sorted and unique (use KNNLinkPredictor.build)", field="triples")
        if len(store) != 2 * triples.shape[0]:
            raise KGDataError(f"the store holds {len(store)} entries, expected two per triple "
                              f"({2 * triples.shape[0]})", field="store")

    @classmethod
    def build(cls, model: Any, triples: Tensor, config: KNNKGEConfig | None = None, *, precision: str = "fp32",
              chunk: int = 256, progress: bool = False) -> "KNNLinkPredictor":
        """Encode both queries of every (distinct) triple of ``triples`` into a datastore."""
        config = config or KNNKGEConfig()
        triples = torch.as_tensor(triples).long()
        if triples.dim() != 2 or triples.shape[1] != 3 or not triples.shape[0]:
            raise KGDataError(f"expected a non-empty (n, 3) array of id triples, got shape {tuple(triples.shape)}",
                              field="triples")
        num_entities, num_relations = model.config.num_entities, max(int(model.config.num_relations), 1)
        keys = torch.unique(_triple_keys(triples, num_entities, num_relations))
        unique = torch.stack([keys // (num_relations * num_entities), (keys // num_entities) % num_relations,
                              keys % num_entities], dim=1)
        tail = query_states(model, unique, "tail", chunk=chunk, precision=precision, progress=progress)
        head = query_states(model, unique, "head", chunk=chunk, precision=precision, progress=progress)
        store = Datastore(tail.shape[1], num_entities, metric=config.metric, backend=config.backend)
        store.add(torch.cat([tail, head]), torch.cat([unique[:, 2], unique[:, 0]]))
        return cls(model, store, unique, config, precision)

    def own_ids(self, triples: Tensor, side: str) -> Tensor:
        """Per query, the id of the entry it contributed to the store, or -1 (not a store triple)."""
        if side not in ("head", "tail"):
            raise KGDataError(f"expected 'head' or 'tail', got {side!r}", field="side")
        keys = _triple_keys(torch.as_tensor(triples).cpu(), self.model.config.num_entities, self._num_relations)
        pos = torch.searchsorted(self._keys, keys).clamp_max(self._keys.numel() - 1)
        found = self._keys[pos] == keys
        ids = pos + (0 if side == "tail" else self._keys.numel())
        return torch.where(found, ids, torch.full_like(ids, -1))

    def neighbours(self, states: Tensor, triples: Tensor, side: str, k: int) -> tuple[Tensor, Tensor]:
        """Distances and labels of each query's k nearest entries, its own entry left out, each (b, k)."""
        dist, ids = self.store.search(states, k, exclude=self.own_ids(triples, side))
        return dist, self.store.labels_of(ids.cpu()).to(dist.device)

    def knn_probs(self, states: Tensor, triples: Tensor, side: str) -> Tensor:
        """p_knn (b, E) of the queries (leave-one-out)."""
        dist, labels = self.neighbours(states, triples, side, self.config.k)
        return knn_distribution(dist, labels, self.store.n_classes, self.config.temperature)

    @torch.no_grad()
    def score(self, triples: Tensor, side: str) -> Tensor:
        """Mixture log-probabilities of every entity as the hidden ``side`` of each triple, (b, E)."""
        states = query_states(self.model, triples, side, precision=self.precision)
        model_scores = self.model.decode(states.to(self.model.entity_bias.device)).cpu()
        return mixture_scores(model_scores, self.knn_probs(states, triples, side), self.config.lam)


@dataclass
class _Encoded:
    """One split's triples with both sides' query states and model scores, for scoring them many times."""

    triples: Tensor
    states: dict[str, Tensor]
    model_scores: dict[str, Tensor]


def _encode_split(predictor: KNNLinkPredictor, triples: Tensor, progress: bool) -> _Encoded:
    states, scores = {}, {}
    device = predictor.model.entity_bias.device
    for side in ("head", "tail"):
        states[side] = query_states(predictor.model, triples, side, precision=predictor.precision, progress=progress)
        with torch.no_grad():
            scores[side] = torch.cat([predictor.model.decode(part.to(device)).cpu()
                                      for part in states[side].split(1024)])
    return _Encoded(triples, states, scores)


def _mrr(encoded: _Encoded, filter_index: Any, side_scores: dict[str, Tensor]) -> float:
    from deltakg.kge.evaluation import evaluate_scores

    return evaluate_scores(encoded.triples, head_scores=side_scores["head"], tail_scores=side_scores["tail"],
                           filter_index=filter_index).metrics()["mrr"]


def choose_hyperparameters(predictor: KNNLinkPredictor, triples: Tensor, filter_index: Any, *,
                           ks: Sequence[int] = K_GRID, temperatures: Sequence[float] = TEMPERATURE_GRID,
                           lambdas: Sequence[float] = LAMBDA_GRID, relative_temperature: bool = True,
                           progress: bool = False) -> dict[str, Any]:
    """The (k, T, lambda) of the grid with the best filtered MRR on ``triples`` (the valid split); sets them.

    Neighbours are searched once with the largest k (a smaller k is a prefix of them); T multiplies the median
    distance to those neighbours (:data:`TEMPERATURE_GRID`; with ``relative_temperature=False`` the
    temperatures are taken as they are). Ties go to the smaller lambda, then the smaller k and T. Returns the choice,
    the model alone's MRR and every grid point's MRR.
    """
    if not ks or not temperatures or not lambdas:
        raise KGDataError("expected non-empty grids of k, temperature and lambda", field="grid")
    encoded = _encode_split(predictor, triples, progress)
    k_max = min(max(ks), len(predictor.store) - 1)
    found = {side: predictor.neighbours(encoded.states[side], triples, side, k_max) for side in ("head", "tail")}
    distances = torch.cat([found[side][0].flatten() for side in found])
    scale = float(distances[torch.isfinite(distances)].median().clamp_min(1e-12)) if relative_temperature else 1.0
    model_mrr = _mrr(encoded, filter_index, encoded.model_scores)
    grid: list[dict[str, Any]] = []
    points = list(itertools.product(sorted(set(ks)), sorted(set(temperatures))))
    if progress:
        from tqdm.auto import tqdm

        points = tqdm(points, desc="k-NN grid (valid)", unit="(k, T)", leave=False)
    for k, factor in points:
        k_used = min(k, k_max)
        p_knn = {side: knn_distribution(dist[:, :k_used], labels[:, :k_used], predictor.store.n_classes,
                                        factor * scale) for side, (dist, labels) in found.items()}
        for lam in sorted(set(lambdas)):
            mixed = {side: mixture_scores(encoded.model_scores[side], p_knn[side], lam) for side in p_knn}
            grid.append({"k": k_used, "temperature_factor": factor, "temperature": factor * scale,
                         "lambda": lam, "mrr": _mrr(encoded, filter_index, mixed)})
    best = max(grid, key=lambda g: (g["mrr"], -g["lambda"], -g["k"], -g["temperature_factor"]))
    predictor.config = KNNKGEConfig(k=best["k"], temperature=best["temperature"], lam=best["lambda"],
                                    metric=predictor.config.metric, backend=predictor.config.backend)
    return {"k": best["k"], "temperature": best["temperature"], "temperature_factor": best["temperature_factor"],
            "lambda": best["lambda"], "distance_scale": scale, "valid_mrr": best["mrr"],
            "valid_model_mrr": model_mrr, "queries": 2 * int(triples.shape[0]), "grid": grid}


def evaluate_knn(predictor: KNNLinkPredictor, triples: Tensor, filter_index: Any, *,
                 progress: bool = False) -> dict[str, Any]:
    """Filtered realistic-rank metrics of the model alone and of the kNN mixture on ``triples``, one encoding.

    Both go through :func:`deltakg.kge.evaluation.evaluate_ranking` (the score function looks each batch up in
    the split's precomputed states). Returns ``{"model": metrics, "knn": metrics, "config": ...}``.
    """
    from deltakg.kge.evaluation import evaluate_ranking

    encoded = _encode_split(predictor, triples, progress)
    keys = _triple_keys(triples, predictor.model.config.num_entities, predictor._num_relations)
    order = torch.argsort(keys)
    sorted_keys = keys[order]

    def rows(batch: Tensor) -> Tensor:
        batch_keys = _triple_keys(batch.cpu(), predictor.model.config.num_entities, predictor._num_relations)
        return order[torch.searchsorted(sorted_keys, batch_keys)]

    def model_fn(batch: Tensor, side: str) -> Tensor:
        return encoded.model_scores[side][rows(batch)]

    def knn_fn(batch: Tensor, side: str) -> Tensor:
        index = rows(batch)
        p_knn = predictor.knn_probs(encoded.states[side][index], batch, side)
        return mixture_scores(encoded.model_scores[side][index], p_knn, predictor.config.lam)

    num_entities = predictor.model.config.num_entities
    model = evaluate_ranking(model_fn, triples, num_entities, filter_index=filter_index, progress=progress)
    mixed = evaluate_ranking(knn_fn, triples, num_entities, filter_index=filter_index, progress=progress)
    return {"model": model.to_dict(), "knn": mixed.to_dict(), "config": asdict(predictor.config)}


def evaluate_model_knn(model: Any, kg: Any, split: str = "test", *, k: int | None = None, lam: float | None = None,
                       temperature: float | None = None, filtered: bool = True, valid_subset: int | None = 1000,
                       seed: int = 0, precision: str = "fp32", progress: bool = False) -> dict[str, Any]:
    """kNN-KGE on one split of ``kg``: a store over the training queries, (k, T, lambda) chosen on valid.

    Settings given are kept; the others are chosen on ``valid_subset`` seeded valid triples (all with None).
    Returns the model alone's metrics at the top level (as ``evaluate_model``) and ``"knn"``: the mixture's
    metrics, the settings with how each was set, and the valid grid's best scores.
    """
    import time

    from deltakg.kge.evaluation import FilterIndex

    if split not in kg.splits:
        raise KGDataError(f"dataset {kg.name!r} has no split {split!r} (has {', '.join(kg.splits)})", field="split")
    model.check_vocabulary(kg)
    started = time.perf_counter()
    filter_index = FilterIndex.from_kg(kg) if filtered else None
    predictor = KNNLinkPredictor.build(model, kg.splits["train"], precision=precision, progress=progress)
    chosen: dict[str, Any] | None = None
    if k is None or lam is None or temperature is None:
        if "valid" not in kg.splits:
            raise KGDataError(f"dataset {kg.name!r} has no valid split to choose k / lambda / T on: pass them",
                              field="split")
        valid = kg.splits["valid"]
        if valid_subset is not None and valid.shape[0] > valid_subset:
            generator = torch.Generator().manual_seed(seed)
            valid = valid[torch.randperm(valid.shape[0], generator=generator)[:valid_subset]]
        chosen = choose_hyperparameters(
            predictor, valid, filter_index, ks=(k,) if k is not None else K_GRID,
            temperatures=TEMPERATURE_GRID if temperature is None else (temperature,),
            relative_temperature=temperature is None, lambdas=(lam,) if lam is not None else LAMBDA_GRID,
            progress=progress)
    else:
        predictor.config = KNNKGEConfig(k=k, temperature=temperature, lam=lam)
    result = evaluate_knn(predictor, kg.splits[split], filter_index, progress=progress)
    settings = {"k": predictor.config.k, "lambda": predictor.config.lam, "temperature": predictor.config.temperature,
                "metric": predictor.config.metric, "store_entries": len(predictor.store)}
    how = {name: ("given" if value is not None else "chosen on valid")
           for name, value in (("k", k), ("lambda", lam), ("temperature", temperature))}
    knn = {**result["knn"], **settings, "set_by": how,
           "mrr_minus_model": result["knn"]["mrr"] - result["model"]["mrr"]}
    if chosen is not None:
        knn["valid"] = {key: chosen[key] for key in ("valid_mrr", "valid_model_mrr", "queries", "distance_scale",
                                                     "temperature_factor")}
        knn["valid"]["grid_points"] = len(chosen["grid"])
    payload = dict(result["model"])
    payload.update(dataset=kg.name, split=split, filtered=filtered, rank="realistic", precision=precision,
                   queries=2 * int(kg.splits[split].shape[0]), knn=knn, seconds=time.perf_counter() - started)
    return payload
