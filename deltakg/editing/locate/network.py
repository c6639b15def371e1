"""What the trained editors (MEND, KE) share: gradient factors, edits swapped in functionally, one training loop.

A :class:`NetworkEditor` owns a small network that turns the fine-tuning gradient of an edit into an update of
chosen FFN output projections. Everything model-specific comes from the
:class:`~deltakg.editing.locate.adapter.LocateAdapter`, so one class edits the KG model and causal LMs.
:func:`train_network_editor` trains any of them: per step a few edits and a few unrelated inputs; the edited
model (the base weights plus the predicted updates, swapped in with ``torch.func.functional_call``, so the
base model is never written) must give the edits' targets while its output distribution on the unrelated
inputs stays, ``c_edit * NLL + c_loc * KL(pre || post)`` or, for configs with ``lagrangian``, KE's
``NLL + lambda * (KL - margin)`` with ``lambda >= 0`` raised by gradient ascent. The epoch with the lowest dev
loss is kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from deltakg.serialization import load_state_into, load_tensors, save_tensors, write_json
from kg_data.errors import KGDataError

from .adapter import KEY_POSITIONS, LocateAdapter, add_to_weight, resolve_layers, weight_name
from .base import LocateEditor

__all__ = ["NetworkConfig", "NetworkEditor", "train_network_editor", "gradient_factors", "OPTIMIZERS"]

STATE_FILE = "editor.safetensors"
CONFIG_FILE = "editor.json"

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr, centered=True),  # KE's choice
}


@dataclass
class NetworkConfig:
    """Settings every trained editor has; None fields take the model type's defaults."""

    layers: list[int] | None = None  # edited FFN output projections (negative count from the end)
    last_layers: int | None = None  # with layers unset: the last this many layers (all when the model has fewer)
    edit_weight: float = 1.0  # c_edit
    locality_weight: float = 1.0  # c_loc (without lagrangian)
    lr: float | None = None
    optimizer: str | None = None  # a key of OPTIMIZERS
    edits_per_step: int = 2
    locality_per_step: int = 8
    epochs: int = 20
    patience: int = 3  # epochs without a lower dev loss before training stops
    key_position: str = "prompt_last"  # the loss rows of an edit (a KG query has one position either way)
    pretrained: str | None = None  # a folder written by save_pretrained, loaded on first use
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("edits_per_step", "locality_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.key_position not in KEY_POSITIONS:
            raise ValueError(f"key_position must be one of {', '.join(KEY_POSITIONS)}, got {self.key_position!r}")


class NetworkEditor(LocateEditor):
    """A trained editor: ``self.net`` maps an edit's gradient to updates of the edited FFN output projections."""

    trainable = True
    config_class: ClassVar[type] = NetworkConfig

    def __init__(self, config: Any = None, corpus: Sequence[object] | None = None) -> None:
        super().__init__(config or self.config_class(), corpus)
        self.net: nn.Module | None = None
        self.names: list[str] = []  # the edited weights, in layer order
        self._shapes: dict[str, list[int]] = {}  # weight name -> (out, in)
        self._loaded: dict[str, torch.Tensor] | None = None
        self._saved_shapes: dict[str, list[int]] | None = None
        self._source = f"the {self.name} state"

    # ------------------------------------------------------------------------------------ what subclasses give
    @abstractmethod
    def build(self, adapter: LocateAdapter, config: Any, shapes: dict[str, list[int]]) -> nn.Module:
        """The editor network for these (out, in) weight shapes, freshly initialised."""

    @abstractmethod
    def deltas(self, adapter: LocateAdapter, requests: Any) -> dict[str, torch.Tensor]:
        """The (out, in) update of every edited weight for a batch (differentiable in the network)."""

    def warm_up(self, adapter: LocateAdapter, edits: Any, config: Any) -> None:
        """Before the first training step (e.g. MEND's factor statistics); default: nothing."""

    def training_summary(self) -> dict[str, Any]:
        """What the trained network learnt that a reader wants in the training metrics; default: nothing."""
        return {}

    def param_groups(self, config: Any) -> list[dict[str, Any]]:
        """Optimiser parameter groups (default: the whole network at ``config.lr``)."""
        return [{"params": list(self.net.parameters()), "lr": config.lr}]

    # ------------------------------------------------------------------------------------ persistence
    @classmethod
    def from_settings(cls, *, progress: bool = True, **settings: Any) -> "NetworkEditor":
        """An editor (untrained unless ``pretrained`` is set) with these config fields."""
        return cls(dataclasses.replace(cls.config_class(progress=progress), **settings))

    @classmethod
    def from_pretrained(cls, directory: str) -> "NetworkEditor":
        """A trained editor saved by :meth:`save_pretrained`."""
        folder = Path(directory)
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise KGDataError(f"{folder}: not a {cls.name} editor folder (no {CONFIG_FILE})", field="editor")
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("method") != cls.name:
                raise ValueError(f"it holds a {saved.get('method')!r} editor")
            config = cls.config_class(**{**saved["config"], "pretrained": None})
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise KGDataError(f"{path}: not a {cls.name} config ({err})", field="editor") from None
        editor = cls(config)
        editor._loaded = load_tensors(folder / STATE_FILE, written_by=f"{cls.__name__}.save_pretrained")
        editor._source = str(folder / STATE_FILE)
        editor._saved_shapes = saved["shapes"]
        return editor

    def save_pretrained(self, directory: str) -> None:
        """Write the config, the edited weights' shapes and the network state (safetensors; no pickle)."""
        if self.net is None:
            raise KGDataError(f"{self.name} has no network yet: train it or prepare it on a model first",
                              field="editor")
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(self.net.state_dict(), folder / STATE_FILE)
        config = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in ("pretrained", "progress")}
        write_json(folder / CONFIG_FILE, {"method": self.name, "config": config, "shapes": self._shapes})

    @classmethod
    def train_pretrained(cls, model, cases, stable, out, *, dev_cases=None, dev_stable=None,
                         max_time_minutes: float | None = None, progress: bool = True,
                         **options: Any) -> dict[str, Any]:
        """Train on a KG edit set's train cases with ``stable`` as the unrelated inputs; save to ``out``."""
        from ..target import KGETarget

        known = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(k for k, v in options.items() if v is not None and k not in known)
        if unknown:
            raise KGDataError(f"{cls.name} has no option {unknown[0]!r}; its options: {', '.join(sorted(known))}",
                              field="options")
        settings = {k: v for k, v in options.items() if v is not None}
        editor = cls(cls.config_class(progress=progress, **settings))
        target = KGETarget(model)
        dev = None
        if dev_cases:
            dev = (target.encode(list(dev_cases)), list(dev_stable) if dev_stable else list(stable))
        metrics = train_network_editor(editor, target, target.encode(list(cases)), list(stable), dev=dev,
                                       max_time_minutes=max_time_minutes)
        editor.save_pretrained(out)
        return metrics

    # ------------------------------------------------------------------------------------ set-up
    def layers(self, adapter: LocateAdapter) -> list[int]:
        """``layers`` when set, else the model's last ``last_layers`` layers."""
        config = self.resolved(adapter)
        if config.layers is not None:
            return resolve_layers(adapter, config.layers)
        n = adapter.num_layers()
        return list(range(max(0, n - (config.last_layers or 1)), n))

    def prepare(self, target: Any) -> None:
        """Build (or load) the network for this model's edited layers."""
        adapter = self.adapter(target)
        if self.config.pretrained and self._loaded is None:
            loaded = type(self).from_pretrained(self.config.pretrained)
            self._loaded, self._source, self._saved_shapes = loaded._loaded, loaded._source, loaded._saved_shapes
            self.config = dataclasses.replace(loaded.config, progress=self.config.progress)
        names = [weight_name(adapter, layer) for layer in self.layers(adapter)]
        if self.net is not None and self.names == names:
            return
        named = dict(adapter.model.named_parameters())
        shapes = {}
        for name in names:
            rows, cols = named[name].shape
            shapes[name] = [cols, rows] if adapter.layout.transposed else [rows, cols]
        if self._saved_shapes is not None and self._saved_shapes != shapes:
            raise KGDataError(f"{self._source}: the trained {self.name} edits {self._saved_shapes}; this model's "
                              f"edited weights are {shapes}", field="editor")
        self.names, self._shapes = names, shapes
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, without moving the caller's generator
            torch.manual_seed(self.resolved(adapter).seed)
            self.net = self.build(adapter, self.resolved(adapter), shapes).to(named[names[0]].device)
        if self._loaded is not None:
            load_state_into(self.net, self._loaded, self._source)
        self.net.eval()

    def parameter_counts(self, target: Any) -> dict[str, int]:
        """The edited weights and the editor network's parameters."""
        counts = super().parameter_counts(target)
        if self.net is not None:
            counts["trainable"] = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        return counts

    def edit(self, target: Any, cases: Any) -> None:
        """Add the network's update for the batch to the edited FFN output projections."""
        adapter = self.adapter(target)
        self.prepare(adapter)
        self.net.eval()
        with torch.no_grad():
            updates = self.deltas(adapter, cases)
        for layer in self.layers(adapter):
            add_to_weight(adapter, layer, updates[weight_name(adapter, layer)])


# ---------------------------------------------------------------------------------------- gradient factors
@contextlib.contextmanager
def _capture(adapter: LocateAdapter, names: Sequence[str], store: dict[str, list[torch.Tensor]]) -> Iterator[None]:
    """Record each named weight's module input and output (the output kept in the graph for its gradient)."""
    handles = []
    for name in names:
        module = adapter.model.get_submodule(name[: -len(".weight")])

        def hook(mod, args, output, name=name):
            store[name] = [args[0], output]
        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def gradient_factors(adapter: LocateAdapter, requests: Any, names: Sequence[str], key_position: str
                     ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Per named weight, the rank-one factors of the gradient of the requests' summed target NLL on the current
    model: ``u`` (tokens, in) the layer's inputs and ``delta`` (tokens, out) the gradient at its outputs, over
    the real (non-pad) tokens; plus each token's request index. The model is unchanged."""
    probe = adapter.target_probe(requests, key_position, [""])
    store: dict[str, list[torch.Tensor]] = {}
    model = adapter.model
    was_training = model.training
    model.eval()
    named = dict(model.named_parameters())
    flags = {n: named[n].requires_grad for n in names}
    try:
        with torch.enable_grad(), _capture(adapter, names, store):
            for n in names:
                named[n].requires_grad_(True)  # so that the module outputs are in the graph
            loss = adapter.target_nll(probe, adapter.forward(probe.inputs)).sum()
            grads = torch.autograd.grad(loss, [store[n][1] for n in names], allow_unused=True)
    finally:
        for n, flag in flags.items():
            named[n].requires_grad_(flag)
        model.train(was_training)
    mask = probe.inputs["attention_mask"].bool()
    owners = probe.owners.view(-1, 1).expand_as(mask)[mask]
    factors = {}
    for n, grad in zip(names, grads):
        delta = torch.zeros_like(store[n][1]) if grad is None else grad
        factors[n] = (store[n][0].detach()[mask].float(), delta.detach()[mask].float())
    return factors, owners


# ---------------------------------------------------------------------------------------- training
class _Forward(nn.Module):
    """The adapter's forward as a module, so that ``functional_call`` can swap the edited weights in."""

    def __init__(self, adapter: LocateAdapter) -> None:
        super().__init__()
        self.model = adapter.model
        self._adapter = adapter

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._adapter.forward(inputs)


def patched_forward(adapter: LocateAdapter, deltas: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]):
    """The model's output with each named weight replaced by weight + delta (nothing is written)."""
    named = dict(adapter.model.named_parameters())
    params = {f"model.{name}": named[name] + (delta.T if adapter.layout.transposed else delta)
              for name, delta in deltas.items()}
    return functional_call(_Forward(adapter), params, (inputs,))


def _unrelated(adapter: LocateAdapter, corpus: Sequence[Any], size: int) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
    """The corpus in batches with the unedited model's output log-probabilities (the model is frozen while an
    editor trains, so they are computed once per batch, not once per step)."""
    batches = []
    with torch.no_grad():
        for inputs, mask in adapter.stat_batches(corpus, size):
            batches.append((inputs, mask, adapter.output_log_probs(adapter.forward(inputs), mask)))
    return batches


def _losses(editor: NetworkEditor, adapter: LocateAdapter, requests: Any,
            loc: tuple[dict, torch.Tensor, torch.Tensor] | None, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    deltas = editor.deltas(adapter, requests)
    probe = adapter.target_probe(requests, config.key_position, [""])
    edit_loss = adapter.target_nll(probe, patched_forward(adapter, deltas, probe.inputs)).mean()
    if loc is None:
        return edit_loss, torch.zeros(())
    inputs, mask, pre = loc
    post = adapter.output_log_probs(patched_forward(adapter, deltas, inputs), mask)
    return edit_loss, (pre.exp() * (pre - post)).sum(dim=-1).mean()


def train_network_editor(editor: NetworkEditor, target: Any, edits: Any, locality: Sequence[Any], *,
                         dev: tuple[Any, Sequence[Any]] | None = None,
                         max_time_minutes: float | None = None) -> dict[str, Any]:
    """Train ``editor``'s network on ``edits`` (requests in the adapter's form) with ``locality`` (a corpus the
    adapter batches: stable facts, or texts) as the unrelated inputs; the best epoch on ``dev`` (edits,
    unrelated inputs) is kept. The model is never changed. Returns the training metrics and history."""
    adapter = editor.adapter(target)
    editor.prepare(adapter)
    if adapter.requests_count(edits) == 0:
        raise KGDataError(f"{editor.name} needs edit requests to train on", field="cases")
    flags = [(p, p.requires_grad) for p in adapter.model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)  # the base model is frozen; only the editor network learns
    try:
        return _train(editor, adapter, editor.resolved(adapter), edits, locality, dev, max_time_minutes)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _state(editor: NetworkEditor) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in editor.net.state_dict().items()}


def _train(editor: NetworkEditor, adapter: LocateAdapter, config: Any, edits: Any, locality: Sequence[Any],
           dev: tuple[Any, Sequence[Any]] | None, max_time_minutes: float | None) -> dict[str, Any]:
    n_edits = adapter.requests_count(edits)
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    optimizer = OPTIMIZERS[config.optimizer](editor.param_groups(config), lr=config.lr)
    lagrangian = bool(getattr(config, "lagrangian", False))
    multiplier = 0.0  # KE's Lagrange multiplier on (KL - margin)
    deadline = time.monotonic() + 60 * max_time_minutes if max_time_minutes else None
    editor.warm_up(adapter, edits, config)

    def objective(edit_loss: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        if lagrangian:
            return config.edit_weight * edit_loss + multiplier * (kl - config.margin)
        return config.edit_weight * edit_loss + config.locality_weight * kl

    dev_loc_batches = _unrelated(adapter, dev[1], config.locality_per_step) if dev is not None and dev[1] else []

    def dev_loss() -> dict[str, float]:
        if dev is None:
            return {}
        dev_edits, loc_batches = dev[0], dev_loc_batches
        editor.net.eval()
        edit_total, kl_total, steps = 0.0, 0.0, 0
        count = adapter.requests_count(dev_edits)
        for i, start in enumerate(range(0, count, config.edits_per_step)):
            batch = adapter.select(dev_edits, list(range(start, min(start + config.edits_per_step, count))))
            with torch.no_grad():
                e, k = _losses(editor, adapter, batch, loc_batches[i % len(loc_batches)] if loc_batches else None,
                               config)
            edit_total, kl_total, steps = edit_total + float(e), kl_total + float(k), steps + 1
        # selection weighs locality with c_loc in both objectives (a Lagrangian's multiplier is not a fixed weight)
        return {"dev_edit_nll": edit_total / steps, "dev_kl": kl_total / steps,
                "dev_loss": (config.edit_weight * edit_total + config.locality_weight * kl_total) / steps}

    history: list[dict[str, float]] = []
    best, best_state, stale, stopped = math.inf, None, 0, "epochs"
    started = time.perf_counter()
    first = dev_loss()
    if first:
        best, best_state = first["dev_loss"], _state(editor)
    history.append({"epoch": 0, **first})
    order = list(range(n_edits))
    bar = tqdm(total=config.epochs, desc=editor.name, disable=not config.progress, unit="epoch")
    for epoch in range(1, config.epochs + 1):
        rng.shuffle(order)
        loc_items = list(locality)
        rng.shuffle(loc_items)
        loc_batches = _unrelated(adapter, loc_items, config.locality_per_step) if loc_items else []
        editor.net.train()
        totals, steps = {"edit_nll": 0.0, "kl": 0.0}, 0
        for i, start in enumerate(range(0, n_edits, config.edits_per_step)):
            batch = adapter.select(edits, order[start:start + config.edits_per_step])
            edit_loss, kl = _losses(editor, adapter, batch, loc_batches[i % len(loc_batches)] if loc_batches else None,
                                    config)
            loss = objective(edit_loss, kl)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if lagrangian:
                multiplier = max(0.0, multiplier + config.lambda_lr * (float(kl.detach()) - config.margin))
            totals["edit_nll"] += float(edit_loss.detach())
            totals["kl"] += float(kl.detach())
            steps += 1
            if deadline is not None and time.monotonic() > deadline:
                stopped = "time"
                break
        row = {"epoch": epoch, **{k: v / max(steps, 1) for k, v in totals.items()}, **dev_loss()}
        if lagrangian:
            row["lagrange"] = multiplier
        history.append(row)
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k != "epoch"})
        if dev is not None:
            if row["dev_loss"] < best:
                best, best_state, stale = row["dev_loss"], _state(editor), 0
            else:
                stale += 1
                if stale >= config.patience:
                    stopped = "patience"
                    break
        if stopped == "time":
            break
    bar.close()
    if best_state is not None:
        editor.net.load_state_dict(best_state)
    editor.net.eval()
    best_epoch = min(history, key=lambda r: r.get("dev_loss", math.inf))["epoch"] if dev is not None else \
        history[-1]["epoch"]
    return {"epochs_run": history[-1]["epoch"], "best_epoch": best_epoch, "stopped": stopped,
            "seconds": round(time.perf_counter() - started, 2), "history": history, **editor.training_summary()}
