"""Editing causal LMs through deltakg's one edit API: the registry, ``apply_edit``, bit-exact rollback.

The methods are the locate-and-edit editors of :mod:`deltakg.editing.locate` (FT-L, ROME, MEMIT, GRACE),
registered in :data:`deltakg.editing.editor.EDITORS` with ``"causal_lm"`` in their ``families``;
:func:`llm_editors` lists them and :func:`make_editor` builds one from its config fields.
:func:`run_llm_edits` applies requests per batch (each batch to the original model, measured, rolled back)
or sequentially (edits accumulate; measured once on the final model) and reports the metrics of
:func:`llm_editing.metrics.evaluate_requests` beside their pre-edit values.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from tqdm.auto import tqdm

from deltakg.editing import EDITORS, EditHandle, Editor, apply_edit
from kg_data.errors import KGDataError

from .adapter import CausalLMTarget
from .metrics import METRIC_KEYS, LocalityReference, MetricsConfig, evaluate_requests, locality_reference
from .requests import EditRequest

__all__ = ["llm_editors", "make_editor", "config_class", "run_llm_edits", "LLMEditReport", "FAMILY", "known_facts",
           "known_split", "KNOWN_PARTS", "dataset_requests"]

FAMILY = "causal_lm"


def llm_editors() -> dict[str, type[Editor]]:
    """The registered editors that edit causal LMs, by name."""
    return {name: cls for name, cls in sorted(EDITORS.items()) if FAMILY in cls.families}


def config_class(cls: type[Editor]) -> type | None:
    """The config dataclass an editor's constructor takes as ``config`` (its ``config_class`` where it declares
    one, else the constructor's type hint; None when it takes none)."""
    import inspect
    import typing

    declared = getattr(cls, "config_class", None)
    if declared is not None and dataclasses.is_dataclass(declared):
        return declared
    hints = typing.get_type_hints(cls.__init__)
    hint = hints.get("config")
    for arg in typing.get_args(hint) or (hint,):
        if dataclasses.is_dataclass(arg):
            return arg
    if "config" in inspect.signature(cls.__init__).parameters:
        raise TypeError(f"{cls.__name__}.__init__'s config has no dataclass type hint")
    return None


def make_editor(name: str, options: Mapping[str, Any] | None = None, corpus: Sequence[str] | None = None) -> Editor:
    """The causal-LM editor ``name`` with config fields ``options`` (unknown names are one clear error)."""
    methods = llm_editors()
    if name not in methods:
        raise KGDataError(f"unknown causal-LM edit method {name!r}; choose one of {', '.join(methods)}", field="method")
    cls = methods[name]
    options = dict(options or {})
    config_cls = config_class(cls)
    if config_cls is None:
        if options:
            raise KGDataError(f"method {name!r} takes no options, got {', '.join(options)}", field="config")
        return cls(corpus=corpus)
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = [k for k in options if k not in known]
    if unknown:
        raise KGDataError(f"{name} has no option {unknown[0]!r}; its options: {', '.join(sorted(known))}",
                          field="config")
    try:
        config = config_cls(**options)
    except (TypeError, ValueError) as err:
        raise KGDataError(f"{name}: {err}", field="config") from None
    return cls(config=config, corpus=corpus)


@dataclass
class LLMEditReport:
    """Metrics after editing, the same before (``pre``), time per edit and the handles of applied edits."""

    metrics: dict[str, Any]
    pre: dict[str, Any]
    per_request: list[dict[str, Any]]
    handles: list[EditHandle] = field(default_factory=list)

    def rollback(self) -> None:
        """Undo every edit still applied (sequential runs), newest first."""
        for handle in reversed(self.handles):
            if not handle.rolled_back:
                handle.rollback()

    def to_dict(self) -> dict[str, Any]:
        """The metrics with ``pre`` beside them (the ``deltakg llm-edit --json`` object)."""
        return {**self.metrics, "pre": self.pre}


def _summary(per: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in METRIC_KEYS:
        values = [p[key] for p in per if p.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    return out


def run_llm_edits(editor: Editor, target: CausalLMTarget, requests: Sequence[EditRequest], *, batch_size: int = 1,
                  sequential: bool = False, metrics: MetricsConfig = MetricsConfig(),
                  progress: bool = False) -> LLMEditReport:
    """Edit ``requests`` in batches; report reliability ... fluency after (and ``pre``: before) and time per edit.

    Per-batch mode: each batch is applied to the original model, measured and rolled back. Sequential mode:
    edits accumulate and every request is measured on the final model; ``report.rollback()`` restores the
    original model bit-exactly.
    """
    requests = target.encode(requests)
    if batch_size <= 0:
        raise KGDataError(f"batch_size must be > 0, got {batch_size}", field="batch_size")
    model, tokenizer = target.model, target.tokenizer
    reference = locality_reference(model, tokenizer, requests, metrics)
    pre = evaluate_requests(model, tokenizer, requests, reference=reference, config=metrics)
    editor.prepare(target)
    handles: list[EditHandle] = []
    per: list[dict[str, Any]] = []
    batches = range(0, len(requests), batch_size)
    for start in tqdm(batches, desc=f"{editor.name} edits", unit="batch", disable=not progress, leave=False):
        batch = requests[start:start + batch_size]
        handle = apply_edit(editor, target, batch, check=False)
        handles.append(handle)
        if not sequential:
            part = LocalityReference(reference.tokens[start:start + batch_size])
            per.extend(evaluate_requests(model, tokenizer, batch, reference=part, config=metrics)["per_request"])
            handle.rollback()
    if sequential:
        per = evaluate_requests(model, tokenizer, requests, reference=reference, config=metrics)["per_request"]
    summary = _summary(per)
    summary.update(time_per_edit_s=sum(h.seconds for h in handles) / len(requests), method=editor.name,
                   edits=len(requests), batch_size=batch_size, sequential=sequential)
    pre_summary = {key: pre[key] for key in METRIC_KEYS}
    return LLMEditReport(summary, pre_summary, per, handles if sequential else [])


def known_facts(model: Any, tokenizer: Any, facts: Sequence[Any], *, batch_size: int = 64) -> list[Any]:
    """The facts whose answer the model generates exactly (greedy) from the prompt: the facts it knows."""
    from .metrics import exact_match

    hits = exact_match(model, tokenizer, [f.prompt for f in facts], [f.answer for f in facts],
                       MetricsConfig(batch_size=batch_size, fluency_tokens=0))
    return [f for f, hit in zip(facts, hits) if hit]


KNOWN_PARTS = ("train", "dev", "test")
_SPLIT_SEED = 20_260_516  # one fixed split of a model's known facts, whatever seed draws edits inside a part


def known_split(known: Sequence[Any], part: str, *, train_fraction: float = 0.15,
                dev_fraction: float = 0.15) -> list[Any]:
    """One part of a model's known facts, split once by a fixed shuffle into disjoint train / dev / test parts.

    ``train``: what trainable editors (MEND) learn from; ``dev``: where settings and checkpoints are chosen;
    ``test``: the only part results are reported on.
    """
    if part not in KNOWN_PARTS:
        raise KGDataError(f"unknown part {part!r}; choose one of {', '.join(KNOWN_PARTS)}", field="split")
    if not (0 <= train_fraction and 0 <= dev_fraction and train_fraction + dev_fraction < 1):
        raise KGDataError(f"train and dev fractions must be >= 0 and sum to < 1, got {train_fraction} + "
                          f"{dev_fraction}", field="split")
    order = list(known)
    random.Random(_SPLIT_SEED).shuffle(order)
    first, second = round(train_fraction * len(order)), round((train_fraction + dev_fraction) * len(order))
    return {"train": order[:first], "dev": order[first:second], "test": order[second:]}[part]


def dataset_requests(model: Any, tokenizer: Any, facts: Sequence[Any], n_edits: int, *, seed: int = 0,
                     n_locality: int = 1) -> list[EditRequest]:
    """Edits of ``n_edits`` facts the model knows, to other answers of their relation; locality = other known facts."""
    from .facts import edit_requests

    known = known_facts(model, tokenizer, facts)
    if not known:
        raise KGDataError("the model generates none of the dataset's facts: nothing it knows to edit", field="model")
    return edit_requests(known, n_edits, seed=seed, n_locality=n_locality)
