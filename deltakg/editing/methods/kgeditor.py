"""KGEditor (deltaKG): KE's hypernetwork pointed at added side-FFN slots only; the base model stays frozen.

The slots' weights never train directly: an edit computes the fine-tuning gradient of the slot matrices
for each case, the hypernetwork turns (condition text, gradient) into an update, and the update is added
to the slot weights. Training the hypernetwork (:mod:`deltakg.editing.methods.kgeditor_training`) uses the
KL Lagrangian on stable facts.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call

from deltakg.serialization import load_state_into, load_tensors, save_tensors, write_json
from kg_data.errors import KGDataError
from kg_data.formats import read_json_object

from ..editor import Editor, register_editor
from ..gradients import per_edit_gradients
from ..hypernetwork import KEHypernetwork
from ..slot_cache import LastLayerSlotCache
from ..slots import add_slots, resolve_layers, slot_parameter_names
from ..target import EncodedFacts, KGETarget
from ..weights import apply_delta

__all__ = ["KGEditorConfig", "KGEditor"]


@dataclass
class KGEditorConfig:
    """KGEditor hyperparameters (defaults per dataset in ``deltakg/configs/kgeditor.json``)."""

    layers: list[int] = field(default_factory=lambda: [-1])
    extra: int = 128
    lstm_hidden: int = 128
    cond_dim: int = 1024
    hidden: int = 128
    max_condition_length: int = 64
    init_step: float = 100.0
    normalize_grad: bool = True
    calibrate: bool = True
    max_scale: float = 4.0
    rounds: int = 6
    whiten: bool = True
    whiten_ridge: float = 0.01
    edit_keys: bool = False
    protect_weight: float = 100.0
    train_condition_embedding: bool = False
    cache_last_layer: bool = True
    margin: float = 0.1
    lr: float = 1e-4
    lambda_lr: float = 0.1
    edits_per_step: int = 2
    stable_per_step: int = 8
    epochs: int = 40
    patience: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.extra < 1:
            raise ValueError(f"extra must be >= 1, got {self.extra}")
        if not self.layers:
            raise ValueError("layers must name at least one layer")

    @classmethod
    def for_dataset(cls, dataset: str, **overrides: Any) -> "KGEditorConfig":
        """The defaults for ``dataset`` from the packaged config file, then ``overrides``."""
        table = json.loads(resources.files("deltakg").joinpath("configs/kgeditor.json").read_text())
        values = {**table.get("default", {}), **table.get(dataset.lower(), {})}
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown KGEditor option(s): {', '.join(sorted(unknown))}")
        return cls(**values)


@register_editor
class KGEditor(Editor):
    """Hypernetwork-generated updates of side-FFN slot weights."""

    name = "kgeditor"
    summary = "KGEditor (deltaKG): a trained hypernetwork writes whitened, calibrated updates of added FFN slots"
    trainable = True

    @classmethod
    def train_pretrained(cls, model, cases, stable, out, *, dev_cases=None, dev_stable=None,
                         max_time_minutes: float | None = None, progress: bool = True,
                         **options: Any) -> dict[str, Any]:
        """Train the hypernetwork (``options``: KGEditorConfig overrides, ``None`` keeps the dataset default)."""
        from .kgeditor_training import train_kgeditor

        config = KGEditorConfig.for_dataset(model.config.dataset, **options)
        _, metrics = train_kgeditor(model, cases, stable, out, config=config, dev_cases=dev_cases,
                                    dev_stable=dev_stable, max_time_minutes=max_time_minutes, progress=progress)
        return metrics

    def __init__(self, config: KGEditorConfig | None = None, *, state: dict[str, torch.Tensor] | None = None,
                 slot_init: dict[str, torch.Tensor] | None = None) -> None:
        self.config = config or KGEditorConfig()
        self.hypernet: KEHypernetwork | None = None
        self._state, self._slot_init = state, slot_init
        self._state_path = "the hypernetwork state"  # named in a mismatch error; the file when loaded from one
        self.slot_names: list[str] = []
        # per ``up`` weight: the slot keys' second moment plus the ridge, and its inverse (see :meth:`fit_keys`)
        self.key_moment: dict[str, torch.Tensor] = {}
        self.key_inverse: dict[str, torch.Tensor] = {}
        self._cache_checked = False  # whether a slot cache on the prepared model matched the model's scores

    # ----------------------------------------------------------------------------------------- set-up
    def prepare(self, target: KGETarget) -> None:
        """Add the slots (with their saved initial weights) and build the hypernetwork for this model."""
        model = target.model
        self._cache_checked = False
        if self.slot_names and set(self.slot_names) <= set(slot_parameter_names(model)):
            return
        if slot_parameter_names(model):
            raise ValueError("the model already holds slots from another editor; load a fresh model")
        generator_state = torch.get_rng_state()
        torch.manual_seed(self.config.seed)  # slot initialisation is part of the editor: seeded
        self.slot_names = add_slots(model, self.config.layers, self.config.extra)
        torch.set_rng_state(generator_state)
        named = dict(model.named_parameters())
        if self._slot_init is not None:
            with torch.no_grad():
                for name in self.slot_names:
                    if name not in self._slot_init or self._slot_init[name].shape != named[name].shape:
                        raise KGDataError(f"the editor's saved slots do not fit this model (slot {name})", field="editor")
                    named[name].copy_(self._slot_init[name])
        self._slot_init = {name: named[name].detach().clone() for name in self.slot_names}
        words = model.encoder.get_input_embeddings().weight
        shapes = {name: tuple(named[name].shape) for name in self.edited_names}
        if self._state is None and self.hypernet is not None:
            # prepared before (e.g. the editor training returned, now on a fresh copy of the model): keep what
            # it learnt instead of building a new, untrained hypernetwork
            self._state = {k: v.detach().clone() for k, v in self.hypernet.state_dict().items()}
        self.hypernet = KEHypernetwork(
            words, shapes, pad_id=model.config.special_ids["pad"], lstm_hidden=self.config.lstm_hidden,
            cond_dim=self.config.cond_dim, hidden=self.config.hidden, init_step=self.config.init_step,
            normalize=self.config.normalize_grad,
        ).to(words.device)
        # a trainable copy of the word table is KE's choice; frozen it costs far less per step on a CPU
        self.hypernet.encoder.embedding.weight.requires_grad_(self.config.train_condition_embedding)
        if self._state is not None:
            load_state_into(self.hypernet, self._state, self._state_path)
        self.hypernet.eval()
        if self.config.whiten and not self.key_moment:
            self.fit_keys(target)

    @property
    def edited_names(self) -> list[str]:
        """The slot weights edits write: the ``up`` (value) matrices, plus ``down`` (keys) with ``edit_keys``.

        Beyond the paper, which updates both: once ``up`` is non-zero a key update moves the keys of every
        query passing the slot (and invalidates the key statistics of :meth:`fit_keys`), which is what
        damaged unrelated facts in repeated and sequential edits.
        """
        return [n for n in self.slot_names if self.config.edit_keys or n.endswith(".up.weight")]

    @property
    def slot_paths(self) -> list[str]:
        """Module paths of the slots (each holds ``down``, ``up`` and the ``edit_keys`` buffer)."""
        return [name[: -len(".up.weight")] for name in self.slot_names if name.endswith(".up.weight")]

    def touched(self, target: KGETarget) -> list[str]:
        """The slot weights edits write, and the slots' memory of edited keys."""
        memory = [f"{path}.edit_keys" for path in self.slot_paths]
        return self.edited_names + (memory if self.config.whiten and self.config.protect_weight > 0 else [])

    def parameter_counts(self, target: KGETarget) -> dict[str, int]:
        """Hypernetwork parameters (trained) and slot parameters (added to the model)."""
        named = dict(target.model.named_parameters())
        return {
            "trainable": sum(p.numel() for p in self.hypernet.parameters() if p.requires_grad) if self.hypernet else 0,
            "added": sum(named[n].numel() for n in self.slot_names),
        }

    # ----------------------------------------------------------------------------------------- editing
    def condition_inputs(self, target: KGETarget, cases: EncodedFacts) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask of the cases' condition texts (in the base vocabulary)."""
        encoded = target.model.tokenizer(
            target.condition_texts(cases), padding=True, truncation=True,
            max_length=self.config.max_condition_length, return_tensors="pt",
        )
        device = target.model.entity_bias.device
        return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)

    @torch.no_grad()
    def fit_keys(self, target: KGETarget, facts: EncodedFacts | None = None, *, samples: int = 4096,
                 batch_size: int = 256) -> None:
        """Estimate, per slot, the second moment ``C`` of its keys ``down(x)`` at the mask position; edits then
        use ``G C^-1``.

        Beyond the paper: an update ``G C^-1`` of ``up`` (instead of ``G``) changes the slot's output for a
        key ``k'`` by ``k'^T C^-1 k``, the least-squares choice that disturbs the typical key least (ROME's
        covariance trick applied to the slot); raw keys share a large common component, so an unwhitened
        update leaks into every query. The keys are those of ``facts``' queries or, by default, of
        ``samples`` random (entity, relation, side) queries drawn with the editor's seed, which needs no data
        beyond the model's vocabularies (and none of the facts used to judge the edits). ``whiten_ridge``
        times the mean eigenvalue is added to the diagonal.
        """
        model = target.model
        if facts is None:
            generator = torch.Generator().manual_seed(self.config.seed)
            n_ent, n_rel = model.config.num_entities, model.config.num_relations
            entity = torch.randint(n_ent, (samples,), generator=generator)
            triples = torch.stack([entity, torch.randint(n_rel, (samples,), generator=generator), entity], dim=1)
            sides = torch.randint(2, (samples,), generator=generator)
            facts = EncodedFacts(triples, sides, entity)
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for start in range(0, len(facts), batch_size):
            keys = self.slot_keys(target, facts.select(slice(start, start + batch_size)))
            for path, k in keys.items():
                sums[path] = sums.get(path, 0) + k.double().T @ k.double()
            count += min(batch_size, len(facts) - start)
        for path, total in sums.items():
            moment = total / max(count, 1)
            ridge = self.config.whiten_ridge * float(moment.diagonal().mean())
            moment = moment + ridge * torch.eye(moment.shape[0], dtype=moment.dtype, device=moment.device)
            self.key_moment[f"{path}.up.weight"] = moment.float()
        self.key_inverse = _inverses(self.key_moment)

    @torch.no_grad()
    def slot_keys(self, target: KGETarget, facts: EncodedFacts) -> dict[str, torch.Tensor]:
        """Per slot (module path), the keys ``down(x)`` at the facts' mask positions, (b, extra)."""
        model = target.model
        keys: dict[str, torch.Tensor] = {}
        was_training = model.training
        model.eval()
        try:
            inputs = target.inputs(facts)
            with self._capturing_keys(target, keys):
                model(**inputs)
        finally:
            model.train(was_training)
        return _at_mask(keys, inputs["mask_positions"])

    def slot_gradients(self, target: KGETarget, cases: EncodedFacts,
                       cache: LastLayerSlotCache | None = None) -> dict[str, torch.Tensor]:
        """Per-edit gradients of the slot weights, whitened on the key side where :meth:`fit_keys` ran.

        ``cache``: the cases' :meth:`slot_cache` (the same gradients without an encoder pass).
        """
        grads = cache.per_case_gradients(self.edited_names) if cache is not None else \
            per_edit_gradients(target, cases, self.edited_names)
        if self.config.whiten:
            named_buffers = dict(target.model.named_buffers())
            for name, inverse in self.key_inverse.items():
                memory = named_buffers[f"{name[: -len('.up.weight')]}.edit_keys"]  # key_inverse is keyed by up
                if bool(memory.any()):  # earlier edits held by the slot: keep their keys out of the update
                    inverse = torch.linalg.inv(self.key_moment[name].to(memory.device) + memory)
                grads[name] = grads[name] @ inverse.to(grads[name].device)
        return grads

    def slot_cache(self, target: KGETarget, facts: EncodedFacts) -> LastLayerSlotCache | None:
        """The facts' cached last-layer state when the slot sits in the encoder's last layer (else ``None``)."""
        last = target.model.encoder.config.num_hidden_layers - 1
        if not (self.config.cache_last_layer and self.layers_of(target) == [last]):
            return None
        # the model's layout decides whether the cache is exact: checked on the first capture after prepare()
        cache = LastLayerSlotCache.capture(target, self.slot_paths[0], facts, check=not self._cache_checked)
        self._cache_checked = True
        return cache

    @torch.no_grad()
    def remember(self, target: KGETarget, cases: EncodedFacts, *, keys: dict[str, torch.Tensor] | None = None) -> None:
        """Add the edited cases' keys, weighted by ``protect_weight``, to their slots' memory.

        Beyond the paper (which never edits sequentially): later updates are whitened against the keys of
        the edits a slot already holds, so they leave those edits (nearly) unchanged, as MEMIT keeps earlier
        edits in its covariance term. The memory is a model buffer: rollback restores it with the weights.
        ``keys``: per slot path, the cases' (b, extra) keys at their mask positions if already computed.
        """
        if not (self.config.whiten and self.config.protect_weight > 0):
            return
        at_mask = self.slot_keys(target, cases) if keys is None else keys
        named_buffers = dict(target.model.named_buffers())
        scale = self.config.protect_weight
        for path, keys_ in at_mask.items():
            memory = named_buffers[f"{path}.edit_keys"]
            reference = float(self.key_moment[f"{path}.up.weight"].diagonal().mean())
            # relative to the typical key: keys are normalised to the moment's mean eigenvalue
            keys_ = keys_.double() / keys_.double().norm(dim=1, keepdim=True).clamp(min=1e-12)
            memory.add_((scale * reference * keys_.T @ keys_).to(memory.dtype))

    def condition(self, target: KGETarget, cases: EncodedFacts) -> torch.Tensor:
        """The cases' condition vectors (the hypernetwork's reading of their condition texts)."""
        return self.hypernet.encoder(*self.condition_inputs(target, cases))

    def updates(self, target: KGETarget, cases: EncodedFacts, cache: LastLayerSlotCache | None = None,
                condition: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The hypernetwork's slot updates for a batch (differentiable w.r.t. the hypernetwork).

        ``condition``: the cases' :meth:`condition` if already encoded (it does not change between rounds).
        """
        grads = self.slot_gradients(target, cases, cache)
        return self.hypernet.updates(self.condition(target, cases) if condition is None else condition, grads)

    def edit(self, target: KGETarget, cases: EncodedFacts) -> None:
        """Add the hypernetwork's updates (scaled by :meth:`calibrated_scale` when ``calibrate``) to the slots.

        With ``calibrate``, up to ``rounds`` updates are made, each from the gradients at the slots as the
        previous round left them, until every target ranks first (one round is KE's/the paper's edit). With
        a single last-layer slot, one encoder pass serves every round (:class:`LastLayerSlotCache`).
        """
        if self.hypernet is None:
            raise RuntimeError("call prepare() (or run_edits) before edit()")
        named = dict(target.model.named_parameters())
        cache = self.slot_cache(target, cases)
        # the cases' keys before the edit, for remember(): from the cache, else from the first gradient pass
        keys: dict[str, torch.Tensor] = {cache.path: cache.keys()} if cache is not None else {}
        with torch.no_grad():
            condition = self.condition(target, cases)
        for round_ in range(self.config.rounds if self.config.calibrate else 1):
            capture = self._capturing_keys(target, keys) if round_ == 0 and cache is None else contextlib.nullcontext()
            with torch.no_grad(), capture:
                deltas = self.updates(target, cases, cache, condition)
            with torch.no_grad():
                scale, done = self.calibrated_scale(target, cases, deltas, cache) if self.config.calibrate else (1.0, True)
            for name, delta in deltas.items():
                apply_delta(named[name], scale * delta, name=name)
            if done:
                break
        if cache is None and keys:
            keys = _at_mask(keys, target.inputs(cases)["mask_positions"])
        self.remember(target, cases, keys=keys or None)

    @contextlib.contextmanager
    def _capturing_keys(self, target: KGETarget, store: dict[str, torch.Tensor]):
        """While open, every forward pass writes each slot's (b, L, extra) keys into ``store`` by module path."""
        model = target.model

        def hook(path):
            def fn(module, args, output):
                store[path] = output.detach()
            return fn

        handles = [model.get_submodule(path).down.register_forward_hook(hook(path)) for path in self.slot_paths]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def calibrated_scale(self, target: KGETarget, cases: EncodedFacts, deltas: dict[str, torch.Tensor],
                         cache: LastLayerSlotCache | None = None) -> tuple[float, bool]:
        """The smallest multiple of the update that makes every case's target rank first, and whether one did.

        Beyond the paper: the hypernetwork's step is right on average but too long for some edits (needless
        damage to other facts) and too short for others (a failed edit). Like FT stopping once the targets
        rank first, the scale is searched by doubling or halving from 1 (then two bisection steps in log
        space), at the cost of a few forward passes of the edit batch. If no scale up to ``max_scale``
        succeeds, the one with the lowest edit loss is returned with ``False``. ``cache``: the cases'
        :meth:`slot_cache`, which makes each trial a few small products instead of an encoder pass.
        """
        model = target.model
        named = dict(model.named_parameters())
        inputs = target.inputs(cases) if cache is None else None
        targets = cases.targets.to(model.entity_bias.device)
        was_training = model.training
        model.eval()
        tried: dict[float, tuple[int, float]] = {}
        visited: list[float] = []

        def weights_at(scale: float) -> dict[str, torch.Tensor]:
            return {name: named[name] + scale * delta for name, delta in deltas.items()}

        def record(scale: float, scores: torch.Tensor) -> None:
            loss = float(torch.nn.functional.cross_entropy(scores, targets))
            tried[scale] = (int((scores.argmax(dim=1) == targets).sum()), loss)

        def prefetch(scales: list[float]) -> None:
            # with the cache, the trials the search may visit next share one decoder pass (the entity table
            # is read once, not once per trial); the search itself, and so its result, is unchanged
            scales = [s for s in scales if s not in tried]
            if cache is None or not scales:
                return
            for scale, scores in zip(scales, cache.scores_many([weights_at(s) for s in scales])):
                record(scale, scores)

        def hits(scale: float) -> int:
            if scale not in tried:
                params = weights_at(scale)
                record(scale, cache.scores(params) if cache is not None else
                       functional_call(model, params, args=(), kwargs=inputs))
            visited.append(scale)
            return tried[scale][0]

        try:
            need = len(cases)
            lo, hi = None, None  # the largest failing and the smallest succeeding scale seen
            scale = 1.0
            octaves, up = [1.0], 1.0
            while up < self.config.max_scale:
                up *= 2
                octaves.append(up)
            octaves += [2.0 ** -k for k in range(1, _DOWN_OCTAVES + 1)]
            prefetch(octaves)
            if hits(scale) == need:
                hi = scale
                while scale > 2.0 ** -_DOWN_OCTAVES:
                    scale /= 2
                    if hits(scale) < need:
                        lo = scale
                        break
                    hi = scale
            else:
                lo = scale
                while scale < self.config.max_scale:
                    scale *= 2
                    if hits(scale) == need:
                        hi = scale
                        break
                    lo = scale
            if hi is None:
                return min(visited, key=lambda s: tried[s][1]), False
            if lo is not None:
                mid = (lo * hi) ** 0.5
                prefetch([mid, (lo * mid) ** 0.5, (mid * hi) ** 0.5])
                for _ in range(2):
                    mid = (lo * hi) ** 0.5
                    if hits(mid) == need:
                        hi = mid
                    else:
                        lo = mid
            return hi, True
        finally:
            model.train(was_training)

    # ----------------------------------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``kgeditor.json``, the hypernetwork, the slots' initial weights and the key statistics."""
        if self.hypernet is None:
            raise RuntimeError("nothing to save: the editor has not been prepared on a model")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"method": self.name, "config": asdict(self.config), "slots": self.slot_names}
        save_tensors(self.hypernet.state_dict(), directory / "hypernetwork.safetensors")
        save_tensors(self._slot_init, directory / "slots.safetensors")
        if self.key_moment:
            save_tensors(self.key_moment, directory / "keys.safetensors")
        write_json(directory / "kgeditor.json", meta)  # last: a folder without it is not an editor yet
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "KGEditor":
        """Load an editor written by :meth:`save_pretrained` (it is prepared on the model at edit time)."""
        directory = Path(directory)
        meta_path = directory / "kgeditor.json"
        meta = read_json_object(meta_path, written_by="deltakg train-editor")
        if meta.get("method") != cls.name:
            raise KGDataError(f"an editor of method {meta.get('method')!r}, expected {cls.name!r}", path=meta_path)
        try:
            config = KGEditorConfig(**meta["config"])
        except (TypeError, KeyError) as err:
            raise KGDataError(f"not a kgeditor config of this deltakg version: {err}", path=meta_path) from None
        written_by = "deltakg train-editor"
        editor = cls(config, state=load_tensors(directory / "hypernetwork.safetensors", written_by=written_by),
                     slot_init=load_tensors(directory / "slots.safetensors", written_by=written_by))
        editor._state_path = str(directory / "hypernetwork.safetensors")
        if (directory / "keys.safetensors").is_file():
            editor.key_moment = load_tensors(directory / "keys.safetensors", written_by=written_by)
            editor.key_inverse = _inverses(editor.key_moment)
        return editor

    def layers_of(self, target: KGETarget) -> list[int]:
        """The absolute layer indices holding slots."""
        return resolve_layers(target.model, self.config.layers)


_DOWN_OCTAVES = 6  # the step search halves the hypernetwork's step down to 1/64 at most


def _at_mask(keys: dict[str, torch.Tensor], positions: torch.Tensor) -> dict[str, torch.Tensor]:
    # (b, L, extra) keys -> (b, extra) keys at each query's mask position
    rows = torch.arange(positions.shape[0], device=positions.device)
    return {path: k[rows, positions.to(k.device)] for path, k in keys.items()}


def _inverses(moments: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # from the stored float32 moments, so that a saved and reloaded editor computes bit-identical updates
    return {name: torch.linalg.inv(m.double()).float() for name, m in moments.items()}
