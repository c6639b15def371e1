"""The adapter protocol that locate-and-edit methods ask instead of naming a model family.

ROME, MEMIT, FT-L and GRACE are written once against :class:`LocateAdapter`. A model family (causal LMs in
``llm_editing.adapter``, the masked-entity KG model in ``deltakg.editing.locate.kge_adapter``) implements it:
which module is the FFN output projection of layer ``l`` and how its weight is stored, how edit requests
become model inputs with the position where the key is read and the value written, and how a target's loss
is computed from the model's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

__all__ = ["ModuleLayout", "Probe", "LocateAdapter", "KEY_POSITIONS", "as_locate_adapter",
           "register_adapter_factory", "weight_matrix", "add_to_weight"]

# where a request's key is read: the subject's last token (the ROME/MEMIT papers) or the prompt's last token
KEY_POSITIONS = ("subject_last", "prompt_last")


@dataclass(frozen=True)
class ModuleLayout:
    """Module-name templates of one model family (``{}`` is the layer index) and how the weight is stored."""

    ffn_out: str  # the FFN output projection (maps key k -> value v)
    block: str  # the module whose output is the hidden state after layer l (MEMIT's z)
    transposed: bool  # weight stored as (in, out), as GPT-2's Conv1D does, instead of nn.Linear's (out, in)
    num_layers: str  # the model.config attribute holding the number of layers


@dataclass
class Probe:
    """Model inputs with, per row, the position where keys are read/values written and the request it serves.

    ``targets`` (optional) is whatever :meth:`LocateAdapter.target_nll` needs to score each row (e.g. the
    target token ids and their positions for a causal LM, the target entity for the KG model).
    """

    inputs: dict[str, torch.Tensor]
    positions: torch.Tensor  # (rows,) long
    owners: torch.Tensor  # (rows,) long, index of the request a row belongs to
    targets: Any = None

    def __len__(self) -> int:
        return int(self.positions.shape[0])


@runtime_checkable
class LocateAdapter(Protocol):
    """What locate-and-edit methods need from a model family."""

    model: nn.Module
    layout: ModuleLayout
    model_type: str  # the key of per-model-type defaults (Hugging Face ``config.model_type``)

    def num_layers(self) -> int:
        """How many layers the model has."""

    def requests_count(self, requests: Any) -> int:
        """How many edit requests ``requests`` holds."""

    def select(self, requests: Any, indices: Sequence[int]) -> Any:
        """The requests at ``indices``, in the same form."""

    def context_prefixes(self, count: int, length: int, seed: int) -> list[str]:
        """Short context prefixes that keys are averaged over ([""] where the family has none)."""

    def key_probe(self, requests: Any, key_position: str, prefixes: Sequence[str]) -> Probe:
        """Each request under each prefix, with its key position."""

    def target_probe(self, requests: Any, key_position: str, prefixes: Sequence[str]) -> Probe:
        """Rows scoring each request's new target (teacher forced), positions = key positions."""

    def essence_probe(self, requests: Any, key_position: str) -> Probe | None:
        """Rows whose output distribution must not drift (ROME's "{subject} is a"); None where there are none."""

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's output scores for a probe's inputs."""

    def target_nll(self, probe: Probe, scores: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of each row's target, (rows,)."""

    def essence_log_probs(self, probe: Probe, scores: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the essence rows' predicted distribution, (rows, classes)."""

    def condition_inputs(self, requests: Any, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask of KE's condition text per request (``<old> >> <new> || <query>``)."""

    def condition_embedding(self) -> tuple[torch.Tensor, int]:
        """The input embedding table KE's condition encoder starts from, and its pad id."""

    def output_log_probs(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the output distributions that count, (rows, classes), for a stat batch's
        ``(inputs, mask)`` and the scores of :meth:`forward` on them (MEND's locality KL)."""

    def stat_batches(self, corpus: Iterable[Any], batch_size: int) -> Iterator[tuple[dict[str, torch.Tensor],
                                                                                    torch.Tensor]]:
        """Model inputs of a corpus and a (batch, positions) bool mask of the positions whose keys count."""

    def labels(self, requests: Any) -> list[str]:
        """One label per request (its new target), to tell edits of the same answer apart (GRACE)."""


_FACTORIES: list[tuple[type, Callable[[Any], LocateAdapter]]] = []


def register_adapter_factory(target_type: type, factory: Callable[[Any], LocateAdapter]) -> None:
    """Let editors accept ``target_type`` objects (e.g. the KG model's target) by wrapping them in an adapter."""
    _FACTORIES.append((target_type, factory))


def as_locate_adapter(target: Any) -> LocateAdapter:
    """``target`` itself when it implements the protocol, else the adapter registered for its type."""
    if isinstance(target, LocateAdapter):
        return target
    for target_type, factory in _FACTORIES:
        if isinstance(target, target_type):
            return factory(target)
    raise TypeError(f"{type(target).__name__} has no locate-and-edit adapter (see deltakg.editing.locate.adapter)")


def weight_matrix(adapter: LocateAdapter, layer: int) -> torch.Tensor:
    """The FFN output projection's weight as an (out, in) view, whatever the storage."""
    weight = adapter.model.get_submodule(adapter.layout.ffn_out.format(layer)).weight
    return weight.T if adapter.layout.transposed else weight


def weight_name(adapter: LocateAdapter, layer: int) -> str:
    """The parameter name of layer ``layer``'s FFN output projection weight."""
    return adapter.layout.ffn_out.format(layer) + ".weight"


def add_to_weight(adapter: LocateAdapter, layer: int, delta: torch.Tensor) -> None:
    """Add an (out, in) delta to the layer's projection (checked finite and shaped; GPT-2's transpose here)."""
    from ..weights import apply_delta

    weight = adapter.model.get_submodule(adapter.layout.ffn_out.format(layer)).weight
    apply_delta(weight, delta.T if adapter.layout.transposed else delta, name=weight_name(adapter, layer))


def resolve_layers(adapter: LocateAdapter, layers: Sequence[int]) -> list[int]:
    """Absolute, sorted layer indices (negative ones count from the end); out of range is an error."""
    n = adapter.num_layers()
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise ValueError(f"layer {bad[0]} is out of range for a model of {n} layers")
    return sorted({i % n for i in layers})
