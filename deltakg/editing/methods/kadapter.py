"""K-Adapter (Wang et al. 2021) on the KG model: a frozen model plus trained adapters, as in the deltaKG paper.

Adapters read the hidden states of the encoder's first and last layer (each: down-projection, a small
2-layer transformer, up-projection, residual, the previous adapter's output added to its input); the last
adapter's output is concatenated with the last hidden state and projected back to the hidden size, which the
frozen model then decodes as before. The adapters are trained per edit batch on the edit facts plus replayed
stable facts (the paper: edit + stable facts, AdamW lr 5e-5).

Departure: the final projection starts as ``[0 | I]`` (the adapter half zero), so that a model with fresh
adapters computes exactly what it computed before (the paper starts it random, which changes every prediction
before any edit); its gradient, and so every adapter's after the first step, is non-zero.

Replayed stable facts come from the edit set's ``stable_train`` pool (``deltakg benchmark-edits`` and
``deltakg edit`` hand it over through :meth:`KAdapter.set_replay`; a single-pool set replays nothing, since
its facts are the ones RK is measured on); without them the adapters train on the edits alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from kg_data.edits import StableFact
from kg_data.errors import KGDataError

from ..editor import Editor, register_editor
from ..target import EncodedFacts, KGETarget
from .ft import fit_edit_batch

__all__ = ["KAdapter", "KAdapterConfig", "AdapterStack"]

ADAPTER_ATTR = "kadapter"  # the model attribute holding the adapters (so snapshots and rollback cover them)


@dataclass
class KAdapterConfig:
    """Adapter placement and size, and their optimisation per edit batch."""

    layers: list[int] = field(default_factory=lambda: [0, -1])  # the paper: first and last layer
    size: int = 64  # adapter width
    transformer_layers: int = 2
    heads: int = 4
    lr: float = 5e-5  # the paper's AdamW learning rate
    steps: int = 20
    replay: int = 8  # stable facts replayed beside the edits at each step (the paper's batches: 8 + 2)
    stop_when_done: bool = True  # stop once every target ranks first, as FT does
    seed: int = 0  # adapter initialisation and the replay draw

    def __post_init__(self) -> None:
        if (self.size < 1 or self.transformer_layers < 1 or self.heads < 1 or self.size % self.heads
                or self.steps < 1 or not self.lr > 0 or self.replay < 0 or not self.layers):
            raise KGDataError(f"K-Adapter needs size divisible by heads, transformer_layers, steps >= 1, lr > 0, "
                              f"replay >= 0 and some layers, got {asdict(self)}", field="k-adapter")


class AdapterStack(nn.Module):
    """The adapters and the final projection; reads the encoder layers' outputs through forward hooks."""

    def __init__(self, hidden: int, layers: Sequence[int], config: KAdapterConfig) -> None:
        super().__init__()
        self.layers = list(layers)
        self.down = nn.ModuleList(nn.Linear(hidden, config.size) for _ in self.layers)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoder(nn.TransformerEncoderLayer(config.size, config.heads, 4 * config.size,
                                                             dropout=0.0, batch_first=True),
                                  config.transformer_layers, enable_nested_tensor=False)
            for _ in self.layers)
        self.up = nn.ModuleList(nn.Linear(config.size, hidden) for _ in self.layers)
        self.proj = nn.Linear(2 * hidden, hidden)
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.weight[:, hidden:].copy_(torch.eye(hidden))
            self.proj.bias.zero_()
        self._mask: torch.Tensor | None = None
        self._states: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []

    def attach(self, model: nn.Module) -> None:
        """Hook the encoder: remember its padding mask and the adapted layers' outputs; rewrite the last one."""
        layer_modules = model.encoder.encoder.layer
        last = len(layer_modules) - 1
        self._handles.append(model.encoder.register_forward_pre_hook(self._remember_mask, with_kwargs=True))
        for index in sorted(set(self.layers) | {last}):
            self._handles.append(layer_modules[index].register_forward_hook(self._layer_hook(index, index == last)))

    def detach(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _remember_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._mask = kwargs.get("attention_mask")
        self._states = {}

    def _layer_hook(self, index: int, is_last: bool):
        def hook(module: nn.Module, args: tuple, out: Any) -> Any:
            hidden = out[0] if isinstance(out, tuple) else out
            if index in self.layers:
                self._states[index] = hidden
            if not is_last:
                return None
            fused = self.fuse(hidden)
            return (fused, *out[1:]) if isinstance(out, tuple) else fused
        return hook

    def fuse(self, last: torch.Tensor) -> torch.Tensor:
        """``proj([adapters(states); last])`` at every position."""
        if self._mask is None or len(self._states) != len(self.layers):
            raise RuntimeError("K-Adapter needs the full encoder pass (it reads every adapted layer's output); "
                               "the model's sparse last layer is on?")
        pad = ~self._mask.bool()
        previous: torch.Tensor | float = 0.0
        for i, layer in enumerate(self.layers):
            x = self._states[layer] + previous
            previous = x + self.up[i](self.blocks[i](self.down[i](x), src_key_padding_mask=pad))
        self._states = {}
        return self.proj(torch.cat([previous, last], dim=-1))


@register_editor
class KAdapter(Editor):
    """AdamW steps on the edits' (plus replayed stable facts') cross-entropy through added adapters only."""

    name = "k-adapter"
    summary = "K-Adapter: adapters on the first and last layer's states, trained on the edit batch (+ stable replay)"
    replays_stable_train = True

    def __init__(self, config: KAdapterConfig | None = None, **overrides: Any) -> None:
        base = asdict(config) if config is not None else {}
        self.config = KAdapterConfig(**{**base, **overrides})
        self._replay: list[StableFact] = []
        self._encoded_replay: dict[int, EncodedFacts] = {}

    def set_replay(self, facts: Sequence[StableFact]) -> None:
        """Stable facts to replay beside each edit batch (an edit set's ``stable_train``; never its test pool)."""
        self._replay = list(facts)
        self._encoded_replay = {}

    def _adapters(self, model: nn.Module) -> AdapterStack | None:
        return getattr(model, ADAPTER_ATTR, None)

    def prepare(self, target: KGETarget) -> None:
        """Add the adapters once, seeded, and hook them into the encoder."""
        model = target.model
        if self._adapters(model) is not None:
            return
        if getattr(model, "sparse_last_layer", False):
            raise ValueError("K-Adapter reads every position of the last layer: turn the model's sparse_last_layer off")
        n = model.encoder.config.num_hidden_layers
        layers = []
        for i in self.config.layers:
            if not -n <= i < n:
                raise KGDataError(f"layer {i} is out of range for an encoder of {n} layers", field="layers")
            layers.append(i % n)
        generator_state = torch.get_rng_state()
        torch.manual_seed(self.config.seed)
        try:
            stack = AdapterStack(model.encoder.config.hidden_size, sorted(set(layers)), self.config)
        finally:
            torch.set_rng_state(generator_state)
        stack.to(model.entity_bias.device).eval()
        setattr(model, ADAPTER_ATTR, stack)
        stack.attach(model)

    def touched(self, target: KGETarget) -> list[str]:
        """The adapters' weights."""
        self.prepare(target)
        return [n for n, _ in target.model.named_parameters() if n.startswith(ADAPTER_ATTR + ".")]

    def parameter_counts(self, target: KGETarget) -> dict[str, int]:
        """The adapter weights K-Adapter adds and trains."""
        named = dict(target.model.named_parameters())
        return {"added": sum(named[n].numel() for n in self.touched(target))}

    def _replay_facts(self, target: KGETarget) -> EncodedFacts | None:
        if not self._replay or not self.config.replay:
            return None
        key = id(target.model)
        if key not in self._encoded_replay:
            self._encoded_replay[key] = target.encode(self._replay)
        return self._encoded_replay[key]

    def edit(self, target: KGETarget, cases: EncodedFacts) -> None:
        """Train the adapters on the batch (dropout off, base weights without gradients)."""
        model = target.model
        replay = self._replay_facts(target)
        # the same replay draws for every batch: edits of one set differ only in their own facts
        generator = torch.Generator().manual_seed(self.config.seed)

        def replay_loss() -> torch.Tensor:
            kept = replay.select(torch.randperm(len(replay), generator=generator)[: self.config.replay])
            return torch.nn.functional.cross_entropy(model(**target.inputs(kept)),
                                                     kept.targets.to(model.entity_bias.device))

        fit_edit_batch(target, cases, sorted(self.touched(target)),
                       lambda params: torch.optim.AdamW(params, lr=self.config.lr),
                       steps=self.config.steps, stop_when_done=self.config.stop_when_done,
                       extra_loss=None if replay is None else replay_loss)
