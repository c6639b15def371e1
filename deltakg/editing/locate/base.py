"""What the locate-and-edit editors share: per-model-type defaults, the statistics they whiten with."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Sequence

import torch

from ..editor import Editor
from .adapter import LocateAdapter, as_locate_adapter, resolve_layers, weight_name
from .stats import model_fingerprint, second_moment

__all__ = ["LocateEditor", "resolve_config"]


def resolve_config(config: Any, defaults: Mapping[str, Mapping[str, Any]], model_type: str) -> Any:
    """``config`` with its unset (None) fields taken from ``defaults[model_type]`` (then ``defaults["*"]``)."""
    if model_type not in defaults and "*" not in defaults:
        raise ValueError(f"no {type(config).__name__} defaults for model_type {model_type!r}; known: "
                         f"{', '.join(sorted(defaults))} (or set every field)")
    table = {**defaults.get("*", {}), **defaults.get(model_type, {})}
    filled = {f.name: table[f.name] for f in dataclasses.fields(config)
              if getattr(config, f.name) is None and f.name in table}
    return dataclasses.replace(config, **filled)


class LocateEditor(Editor):
    """An editor whose math runs on a :class:`LocateAdapter`; ``config`` fields left None take model-type defaults."""

    families: ClassVar[tuple[str, ...]] = ("causal_lm", "kge")
    needs_stats: ClassVar[bool] = False  # whitens with key statistics (computed in prepare)
    defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def __init__(self, config: Any, corpus: Sequence[object] | None = None) -> None:
        self.config = config
        self.corpus = corpus
        self._stats: dict[tuple[str, int], torch.Tensor] = {}
        self._fingerprints: dict[int, str] = {}  # id(model) -> fingerprint of that model before its first edit

    @classmethod
    def from_settings(cls, *, progress: bool = True, **settings: Any) -> "LocateEditor":
        """An editor whose config has these fields set; the rest keep their model-type defaults."""
        if cls.needs_stats and not progress:
            settings.setdefault("progress", False)  # the key-statistics bar
        return cls(dataclasses.replace(cls().config, **settings))

    def adapter(self, target: Any) -> LocateAdapter:
        """The target as a locate adapter."""
        return as_locate_adapter(target)

    def resolved(self, adapter: LocateAdapter) -> Any:
        """The config with the model type's defaults filled in."""
        return resolve_config(self.config, self.defaults, adapter.model_type)

    def layers(self, adapter: LocateAdapter) -> list[int]:
        """The layers this editor writes."""
        config = self.resolved(adapter)
        return resolve_layers(adapter, config.layers if hasattr(config, "layers") else [config.layer])

    def touched(self, target: Any) -> list[str]:
        """The FFN output projection weights of the edited layers."""
        adapter = self.adapter(target)
        return [weight_name(adapter, layer) for layer in self.layers(adapter)]

    def prepare(self, target: Any) -> None:
        """Statistics of the unedited model (sequential edits keep using them); a no-op when done already."""
        adapter = self.adapter(target)
        if not self.needs_stats or id(adapter.model) in self._fingerprints:
            return
        self._fingerprints[id(adapter.model)] = model_fingerprint(adapter.model)
        for layer in self.layers(adapter):
            self.covariance(adapter, layer)

    def covariance(self, adapter: LocateAdapter, layer: int) -> torch.Tensor:
        """E[k k^T] (+ the config's ridge) of the layer's keys, float64, computed once per model and corpus.

        The ridge, ``ridge * mean(diag C) * I``, keeps C invertible when the corpus has fewer distinct keys
        than the key has dimensions (a small model's training text).
        """
        config = self.resolved(adapter)
        corpus = self.corpus if self.corpus is not None else getattr(adapter, "corpus", None)
        if not corpus:
            raise ValueError(f"{self.name} needs a statistics corpus: pass corpus=... to the editor or the adapter")
        if id(adapter.model) not in self._fingerprints:
            self.prepare(adapter)
        fingerprint = self._fingerprints[id(adapter.model)]
        key = (fingerprint, layer)
        if key not in self._stats:
            stats = second_moment(adapter, layer, corpus, max_keys=config.stats_keys, cache_dir=config.stats_dir,
                                  fingerprint=fingerprint, progress=config.progress)
            mom2 = stats.mom2
            eye = torch.eye(mom2.shape[0], dtype=mom2.dtype)
            self._stats[key] = mom2 + config.ridge * mom2.diagonal().mean() * eye
        return self._stats[key]
