"""Edit requests for causal LMs: a triple through a relation template, or an EasyEdit-style record.

An :class:`EditRequest` is what every LLM edit method and metric consumes:

- ``prompt``: the text the model continues (``"The nationality of Jeremy Irons is"``, no trailing space);
- ``target_new``: the continuation the edit installs (scored as ``prompt + " " + target_new``);
- ``ground_truth``: the continuation the model gives now, or ``None`` when unknown;
- ``subject``: a substring of ``prompt`` (ROME/MEMIT read their key at its last token);
- ``rephrase_prompts``: other wordings of ``prompt`` that must give ``target_new`` too (generalization);
- ``locality``: ``{name: [(prompt, answer), ...]}`` unrelated facts whose outputs must not change;
- ``portability``: ``{name: [(prompt, answer), ...]}`` consequences of the edit (e.g. the reversed relation);
- ``triple``: the :class:`kg_data.Triple` ``(subject, relation, target_new)`` it was built from, if any.

A :class:`RelationTemplate` verbalises one relation: a ``prompt`` with ``{subject}``, ``rephrasings`` (same
placeholder) and, where natural, a ``reverse`` template with ``{object}`` whose answer is the subject.
:class:`TemplateRegistry` maps relation labels to templates; :func:`requests_from_triples` builds requests
from new facts ``(head, relation, new tail)``.

Records accepted by :func:`request_from_dict` (and so by :func:`load_requests_jsonl` / :func:`load_requests`):

- the EasyEdit editor format (also what :meth:`EditRequest.to_dict` writes): ``prompt``, ``target_new``,
  ``ground_truth``, ``subject``, ``rephrase_prompt`` (a string or a list), ``locality`` and ``portability``
  as ``{name: {"prompt": str | list, "ground_truth": str | list}}`` (lists of pairs are accepted too);
- EasyEdit's CounterFact files: the above with ``locality_prompt`` / ``locality_ground_truth``;
- EasyEdit's ZsRE files: ``src``, ``alt``, ``answers``, ``rephrase``, ``loc``, ``loc_ans``, ``subject``;
- ROME's CounterFact: ``requested_rewrite`` {``prompt`` with ``{}``, ``subject``, ``target_new.str``,
  ``target_true.str``}, ``paraphrase_prompts``, ``neighborhood_prompts`` (answered by ``target_true``);
- a triple: ``{"triple": [head, relation, new tail], "ground_truth": old tail?}``, verbalised by the
  registry passed as ``templates`` (entity names as written; pass ``names`` to map labels to names).

A bad record raises one :class:`kg_data.KGDataError` naming the file, line and field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from kg_data.edits import read_records
from kg_data.errors import KGDataError
from kg_data.files import write_text_atomic
from kg_data.formats import _read_text
from kg_data.triple import Triple

__all__ = [
    "EditRequest",
    "RelationTemplate",
    "TemplateRegistry",
    "requests_from_triples",
    "request_from_dict",
    "load_requests_jsonl",
    "load_requests",
    "save_requests_jsonl",
]

Pairs = dict[str, list[tuple[str, str]]]


def _text(value: Any, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise KGDataError(f"expected a string, got {type(value).__name__} {value!r}", field=name)
    if not allow_empty and not value.strip():
        raise KGDataError("must not be empty", field=name)
    return value


def _check_pairs(groups: Mapping[str, Sequence[tuple[str, str]]], name: str) -> Pairs:
    out: Pairs = {}
    for key, pairs in groups.items():
        if not isinstance(key, str) or not key:
            raise KGDataError(f"group names must be non-empty strings, got {key!r}", field=name)
        checked = []
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise KGDataError(f"expected a (prompt, answer) pair, got {pair!r}", field=f"{name}.{key}[{i}]")
            checked.append((_text(pair[0], f"{name}.{key}[{i}].prompt"), _text(pair[1], f"{name}.{key}[{i}].answer")))
        out[key] = checked
    return out


@dataclass
class EditRequest:
    """One factual edit of a causal LM (see the module docstring for the fields)."""

    prompt: str
    target_new: str
    ground_truth: str | None = None
    subject: str = ""
    rephrase_prompts: list[str] = field(default_factory=list)
    locality: Pairs = field(default_factory=dict)
    portability: Pairs = field(default_factory=dict)
    triple: Triple | None = None

    def __post_init__(self) -> None:
        _text(self.prompt, "prompt")
        _text(self.target_new, "target_new")
        _text(self.subject, "subject")
        if self.ground_truth is not None:
            _text(self.ground_truth, "ground_truth")
        if self.subject not in self.prompt:
            raise KGDataError(f"subject {self.subject!r} is not a substring of the prompt {self.prompt!r}",
                              field="subject")
        if self.target_new.strip() != self.target_new:
            # scoring joins prompt + " " + target: surrounding spaces would shift the tokens
            raise KGDataError(f"target_new {self.target_new!r} has leading or trailing spaces", field="target_new")
        if self.ground_truth is not None and self.ground_truth == self.target_new:
            raise KGDataError(f"ground_truth equals target_new {self.target_new!r}: nothing to edit",
                              field="ground_truth")
        if isinstance(self.rephrase_prompts, str) or not isinstance(self.rephrase_prompts, (list, tuple)):
            raise KGDataError(f"expected a list of strings, got {self.rephrase_prompts!r}", field="rephrase_prompts")
        self.rephrase_prompts = [_text(p, f"rephrase_prompts[{i}]") for i, p in enumerate(self.rephrase_prompts)]
        self.locality = _check_pairs(self.locality, "locality")
        self.portability = _check_pairs(self.portability, "portability")

    def to_dict(self) -> dict[str, Any]:
        """The EasyEdit editor record of this request (lists for every group), read back by :func:`request_from_dict`."""
        def groups(pairs: Pairs) -> dict[str, dict[str, list[str]]]:
            return {k: {"prompt": [p for p, _ in v], "ground_truth": [a for _, a in v]} for k, v in pairs.items()}

        record: dict[str, Any] = {
            "prompt": self.prompt, "target_new": self.target_new, "ground_truth": self.ground_truth,
            "subject": self.subject, "rephrase_prompt": list(self.rephrase_prompts),
            "locality": groups(self.locality), "portability": groups(self.portability),
        }
        if self.triple is not None:
            record["triple"] = list(self.triple)
        return record


# ---------------------------------------------------------------------------------------------- templates
@dataclass(frozen=True)
class RelationTemplate:
    """How one relation is said: ``prompt``/``rephrasings`` with ``{subject}``, ``reverse`` with ``{object}``."""

    relation: str
    prompt: str
    rephrasings: tuple[str, ...] = ()
    reverse: str | None = None

    def __post_init__(self) -> None:
        if not self.relation:
            raise ValueError("RelationTemplate.relation must be non-empty")
        for text in (self.prompt, *self.rephrasings):
            if text.count("{subject}") != 1 or text != text.strip():
                raise ValueError(f"template {text!r} of {self.relation!r} needs exactly one {{subject}} and no "
                                 f"surrounding spaces")
        if self.reverse is not None and (self.reverse.count("{object}") != 1 or self.reverse != self.reverse.strip()):
            raise ValueError(f"reverse template {self.reverse!r} of {self.relation!r} needs exactly one {{object}}")
        object.__setattr__(self, "rephrasings", tuple(self.rephrasings))

    def render(self, subject: str) -> str:
        """The prompt for ``subject``."""
        return self.prompt.format(subject=subject)

    def render_rephrasings(self, subject: str) -> list[str]:
        """The rephrased prompts for ``subject``."""
        return [text.format(subject=subject) for text in self.rephrasings]

    def render_reverse(self, obj: str) -> str | None:
        """The reversed-relation prompt for ``obj`` (answered by the subject), or None."""
        return None if self.reverse is None else self.reverse.format(object=obj)


class TemplateRegistry(Mapping[str, RelationTemplate]):
    """Relation label -> :class:`RelationTemplate`; an unknown relation is a :class:`KGDataError`."""

    def __init__(self, templates: Iterable[RelationTemplate] = ()) -> None:
        self._templates: dict[str, RelationTemplate] = {}
        for template in templates:
            self.register(template)

    def register(self, template: RelationTemplate) -> RelationTemplate:
        """Add ``template`` (a relation may be registered once)."""
        if template.relation in self._templates:
            raise ValueError(f"relation {template.relation!r} already has a template")
        self._templates[template.relation] = template
        return template

    def __getitem__(self, relation: str) -> RelationTemplate:
        try:
            return self._templates[relation]
        except KeyError:
            raise KGDataError(f"relation {relation!r} has no template (known: {len(self._templates)} relations; "
                              f"register a RelationTemplate for it)", field="relation") from None

    def __contains__(self, relation: object) -> bool:
        return relation in self._templates

    def __iter__(self) -> Iterator[str]:
        return iter(self._templates)

    def __len__(self) -> int:
        return len(self._templates)


def _namer(names: Mapping[str, str] | Callable[[str], str] | None) -> Callable[[str], str]:
    if names is None:
        return lambda label: label
    if callable(names):
        return names
    return lambda label: names.get(label, label)


def requests_from_triples(
    triples: Sequence[Triple],
    templates: Mapping[str, RelationTemplate],
    *,
    ground_truths: Sequence[str | None] | None = None,
    names: Mapping[str, str] | Callable[[str], str] | None = None,
    locality_facts: Sequence[Triple] = (),
    n_locality: int = 1,
) -> list[EditRequest]:
    """One request per new fact ``(head, relation, new tail)``.

    ``ground_truths`` are the old tails (labels), aligned with ``triples``. ``names`` maps entity labels to
    the names used in text. Each request gets ``n_locality`` facts from ``locality_facts`` (taken in order,
    round-robin, skipping those about the same subject) under the locality name ``"unrelated"``, and a
    ``"reverse"`` portability prompt when the relation's template has one (answer: the subject).
    """
    if ground_truths is not None and len(ground_truths) != len(triples):
        raise ValueError(f"ground_truths has {len(ground_truths)} entries for {len(triples)} triples")
    if n_locality < 0:
        raise ValueError(f"n_locality must be >= 0, got {n_locality}")
    name = _namer(names)
    local_pool = [(t, templates[t.relation]) for t in locality_facts]
    cursor = 0
    requests = []
    for i, triple in enumerate(triples):
        template = templates[triple.relation]
        subject = name(triple.head)
        target = name(triple.tail)
        old = None if ground_truths is None or ground_truths[i] is None else name(ground_truths[i])
        unrelated: list[tuple[str, str]] = []
        tried = 0
        while len(unrelated) < n_locality and local_pool and tried < len(local_pool):
            fact, fact_template = local_pool[cursor % len(local_pool)]
            cursor += 1
            tried += 1
            if fact.head != triple.head:
                unrelated.append((fact_template.render(name(fact.head)), name(fact.tail)))
        reverse = template.render_reverse(target)
        requests.append(EditRequest(
            prompt=template.render(subject), target_new=target, ground_truth=old, subject=subject,
            rephrase_prompts=template.render_rephrasings(subject),
            locality={"unrelated": unrelated} if unrelated else {},
            portability={"reverse": [(reverse, subject)]} if reverse is not None else {},
            triple=triple,
        ))
    return requests


# ---------------------------------------------------------------------------------------------- records
def _pairs_of(value: Any, name: str) -> Pairs:
    if not isinstance(value, dict):
        raise KGDataError(f"expected an object {{name: {{prompt, ground_truth}}}}, got {value!r}", field=name)
    out: Pairs = {}
    for key, group in value.items():
        where = f"{name}.{key}"
        if isinstance(group, list):  # [[prompt, answer], ...]
            out[key] = [tuple(pair) if isinstance(pair, list) else pair for pair in group]
            continue
        if not isinstance(group, dict) or "prompt" not in group or "ground_truth" not in group:
            raise KGDataError("expected {prompt, ground_truth} or a list of [prompt, answer]", field=where)
        prompts, answers = group["prompt"], group["ground_truth"]
        if isinstance(prompts, str):
            prompts = [prompts]
        if isinstance(answers, str):
            answers = [answers]
        elif isinstance(answers, list) and len(prompts) == 1 and len(answers) > 1 and all(isinstance(a, str) for a in answers):
            answers = [answers[0]]  # one prompt with several accepted answers: score the first
        if not isinstance(prompts, list) or not isinstance(answers, list) or len(prompts) != len(answers):
            raise KGDataError(f"prompt and ground_truth must be strings or lists of equal length, got "
                              f"{group['prompt']!r} / {group['ground_truth']!r}", field=where)
        # EasyEdit nests answers one level deeper for some datasets ([["Paris"]]): take the first
        answers = [a[0] if isinstance(a, list) and a else a for a in answers]
        out[key] = list(zip(prompts, answers))
    return out


def _first(value: Any, name: str) -> Any:
    if isinstance(value, list):
        if not value:
            raise KGDataError("empty list", field=name)
        return value[0]
    return value


def _fields_easyedit(d: dict) -> dict[str, Any]:
    rephrase = d.get("rephrase_prompt", d.get("rephrase_prompts", []))
    fields: dict[str, Any] = {
        "prompt": d.get("prompt"), "target_new": _first(d.get("target_new"), "target_new"),
        "ground_truth": _first(d.get("ground_truth"), "ground_truth"), "subject": d.get("subject"),
        "rephrase_prompts": [rephrase] if isinstance(rephrase, str) else (rephrase or []),
        "locality": _pairs_of(d.get("locality") or {}, "locality"),
        "portability": _pairs_of(d.get("portability") or {}, "portability"),
    }
    if "locality_prompt" in d:  # EasyEdit's CounterFact files
        fields["locality"].setdefault("neighborhood", []).append(
            (d["locality_prompt"], _first(d.get("locality_ground_truth"), "locality_ground_truth")))
    return fields


def _fields_zsre(d: dict) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "prompt": d.get("src"), "target_new": _first(d.get("alt"), "alt"),
        "ground_truth": _first(d.get("answers"), "answers") if d.get("answers") is not None else None,
        "subject": d.get("subject"), "rephrase_prompts": [d["rephrase"]] if "rephrase" in d else [],
        "locality": {"nq": [(d["loc"], _first(d.get("loc_ans"), "loc_ans"))]} if "loc" in d else {},
        "portability": _pairs_of(d.get("portability") or {}, "portability"),
    }
    return fields


def _fields_rome_counterfact(d: dict) -> dict[str, Any]:
    rewrite = d["requested_rewrite"]
    if not isinstance(rewrite, dict):
        raise KGDataError(f"expected an object, got {rewrite!r}", field="requested_rewrite")
    subject = rewrite.get("subject")
    template = rewrite.get("prompt")
    if not isinstance(template, str) or "{}" not in template:
        raise KGDataError(f"expected a prompt template with '{{}}', got {template!r}", field="requested_rewrite.prompt")

    def text(key: str) -> Any:
        value = rewrite.get(key)
        return value.get("str") if isinstance(value, dict) else value

    true = text("target_true")
    return {
        "prompt": template.format(subject) if isinstance(subject, str) else template,
        "target_new": text("target_new"), "ground_truth": true, "subject": subject,
        "rephrase_prompts": list(d.get("paraphrase_prompts") or []),
        "locality": {"neighborhood": [(p, true) for p in d.get("neighborhood_prompts") or []]} if true else {},
        "portability": {},
    }


_RECORD_KINDS: tuple[tuple[str, Callable[[dict], dict[str, Any]]], ...] = (
    ("requested_rewrite", _fields_rome_counterfact),
    ("src", _fields_zsre),
    ("prompt", _fields_easyedit),
)


def _from_triple_record(d: dict, templates: Mapping[str, RelationTemplate] | None,
                        names: Mapping[str, str] | Callable[[str], str] | None) -> EditRequest:
    value = d["triple"]
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) and v for v in value)):
        raise KGDataError(f"expected [head, relation, new tail] as 3 non-empty strings, got {value!r}", field="triple")
    triple = Triple(*value)
    if templates is None or triple.relation not in templates:
        raise KGDataError(f"relation {triple.relation!r} has no template: give the record a prompt, or pass "
                          f"templates that cover it", field="triple")
    old = d.get("ground_truth")
    if old is not None and not isinstance(old, str):
        raise KGDataError(f"expected a string, got {old!r}", field="ground_truth")
    request = requests_from_triples([triple], templates, ground_truths=[old], names=names)[0]
    extra = {k: _pairs_of(d[k], k) for k in ("locality", "portability") if k in d}
    for key, pairs in extra.items():
        getattr(request, key).update(_check_pairs(pairs, key))
    return request


def request_from_dict(
    d: Mapping[str, Any],
    *,
    templates: Mapping[str, RelationTemplate] | None = None,
    names: Mapping[str, str] | Callable[[str], str] | None = None,
) -> EditRequest:
    """An :class:`EditRequest` from one record in any format of the module docstring."""
    if not isinstance(d, Mapping):
        raise KGDataError(f"expected a JSON object, got {type(d).__name__}")
    d = dict(d)
    if "triple" in d and "prompt" not in d and "src" not in d:
        return _from_triple_record(d, templates, names)
    for key, fields_of in _RECORD_KINDS:
        if key in d:
            fields = fields_of(d)
            break
    else:
        raise KGDataError("unknown record: expected 'prompt' (EasyEdit), 'src' (ZsRE), 'requested_rewrite' "
                          "(CounterFact) or 'triple'", field="prompt")
    for key in ("prompt", "target_new", "subject"):
        if fields[key] is None:
            raise KGDataError("missing", field=key)
    triple = d.get("triple")
    if triple is not None:
        if not (isinstance(triple, list) and len(triple) == 3 and all(isinstance(v, str) and v for v in triple)):
            raise KGDataError(f"expected [head, relation, tail] as 3 non-empty strings, got {triple!r}", field="triple")
        triple = Triple(*triple)
    return EditRequest(**fields, triple=triple)


def _located(err: KGDataError, path: str | os.PathLike, line: int | None) -> KGDataError:
    return KGDataError(err.reason, path=path, line=line, field=err.field)


def load_requests_jsonl(
    path: str | os.PathLike,
    *,
    templates: Mapping[str, RelationTemplate] | None = None,
    names: Mapping[str, str] | Callable[[str], str] | None = None,
) -> list[EditRequest]:
    """Read a jsonl file of request records (one object per line); errors name the file, line and field."""
    requests = []
    for record in read_records(path):
        try:
            requests.append(request_from_dict(record.data, templates=templates, names=names))
        except KGDataError as err:
            raise _located(err, path, record.line) from None
    if not requests:
        raise KGDataError("no records (expected one JSON object per line)", path=path)
    return requests


def load_requests(
    path: str | os.PathLike,
    *,
    templates: Mapping[str, RelationTemplate] | None = None,
    names: Mapping[str, str] | Callable[[str], str] | None = None,
) -> list[EditRequest]:
    """Read a jsonl file, or a JSON array as EasyEdit ships ZsRE / CounterFact (errors say ``[index]``)."""
    text = _read_text(path)
    if not text.lstrip().startswith("["):
        return load_requests_jsonl(path, templates=templates, names=names)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise KGDataError(f"invalid JSON: {err.msg}", path=path, line=err.lineno) from None
    if not records:
        raise KGDataError("empty array: no records", path=path)
    requests = []
    for index, record in enumerate(records):
        try:
            requests.append(request_from_dict(record, templates=templates, names=names))
        except KGDataError as err:
            raise KGDataError(err.reason, path=path, field=f"[{index}]" + (f".{err.field}" if err.field else "")) from None
    return requests


def save_requests_jsonl(path: str | os.PathLike, requests: Iterable[EditRequest]) -> Path:
    """Write requests as EasyEdit editor records, one per line (read back by :func:`load_requests_jsonl`)."""
    path = Path(path)
    write_text_atomic(path, "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in requests))
    return path
