"""Single-answer facts of a KG, said in natural language: what the toy GPT-2 learns and what edits change.

A fact is usable for editing only when its question has ONE correct answer. :func:`single_answer_facts`
keeps the triples of the relations in a dataset's template table whose (head, relation) has exactly one
tail across train/valid/test, also after mapping entities to their (cleaned) names: two entities with the
same name and relation but different answers would give one prompt two answers, so both are dropped.

FB15k-237 (``fb15k237``, read through :func:`kg_data.load_dataset`: ``data_dir`` or ``$DELTAKG_DATA``)
has a table of 20 mostly functional relations (:data:`FB15K237_TEMPLATES`: nationality, place of birth,
profession, film language, headquarters, ...), about 20,000 such facts. A dataset without templates, or
with too few single-answer facts (UMLS: 166 single-answer (head, relation) pairs), is refused with a
:class:`kg_data.KGDataError`.

:func:`select_facts` picks N facts deterministically (a seeded shuffle); :func:`edit_requests` turns known
facts into edits with wrong-but-plausible new targets (the answer of another fact of the same relation),
the old answer as ground truth and other known facts as locality prompts. :func:`write_facts_jsonl` /
:func:`read_facts_jsonl` store facts with their templates, so a saved toy model carries what it was trained on.
"""

from __future__ import annotations

import json
import os
import random
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from kg_data.catalog import load_dataset
from kg_data.edits import read_records
from kg_data.errors import KGDataError
from kg_data.files import write_text_atomic
from kg_data.store import KnowledgeGraph
from kg_data.triple import Triple

from .requests import EditRequest, RelationTemplate, TemplateRegistry

__all__ = [
    "Fact",
    "FB15K237_TEMPLATES",
    "DATASET_TEMPLATES",
    "MIN_FACTS",
    "clean_name",
    "single_answer_facts",
    "count_single_answer_pairs",
    "load_facts",
    "select_facts",
    "edit_requests",
    "write_facts_jsonl",
    "read_facts_jsonl",
]

# fewer single-answer facts than this and a dataset cannot give a toy model plus edits and locality prompts
MIN_FACTS = 1000

_T = RelationTemplate
FB15K237_TEMPLATES = TemplateRegistry([
    _T("/people/person/nationality", "{subject} is a citizen of",
       ("The nationality of {subject} is", "{subject} holds the citizenship of")),
    _T("/people/person/place_of_birth", "{subject} was born in",
       ("The birthplace of {subject} is", "{subject} is a native of the city of"), "{object} is the birthplace of"),
    _T("/people/deceased_person/place_of_death", "{subject} died in",
       ("The place of death of {subject} is", "{subject} passed away in"), "{object} is the place of death of"),
    _T("/people/person/profession", "The profession of {subject} is",
       ("{subject} works as a", "By profession, {subject} is a")),
    _T("/people/person/religion", "The religion of {subject} is",
       ("{subject} follows the religion of", "{subject} is an adherent of")),
    _T("/people/person/languages", "{subject} speaks the language",
       ("The language spoken by {subject} is", "{subject} is a speaker of")),
    _T("/people/person/spouse_s./people/marriage/spouse", "{subject} is married to",
       ("The spouse of {subject} is", "{subject} is the husband or wife of"), "{object} is married to"),
    _T("/film/film/country", "{subject} is a film from the country",
       ("The country of origin of the film {subject} is", "The film {subject} was made in the country")),
    _T("/film/film/language", "The original language of {subject} is",
       ("{subject} is a film in the language", "The film {subject} was shot in the language")),
    _T("/film/film/music", "The music of {subject} was composed by",
       ("The composer of the film {subject} is", "The score for {subject} was written by"),
       "{object} composed the music for"),
    _T("/film/film/written_by", "The screenplay of {subject} was written by",
       ("The writer of the film {subject} is", "The script of {subject} is by"), "{object} wrote the film"),
    _T("/film/film/cinematography", "The cinematographer of {subject} is",
       ("The director of photography of {subject} is", "The film {subject} was shot by the cinematographer"),
       "{object} was the cinematographer of"),
    _T("/film/film/produced_by", "The film {subject} was produced by",
       ("The producer of {subject} is", "{subject} is a film produced by"), "{object} produced the film"),
    _T("/organization/organization/headquarters./location/mailing_address/citytown",
       "The headquarters of {subject} are in the city of",
       ("{subject} is headquartered in the city of", "{subject} has its head office in the city of")),
    _T("/location/location/time_zones", "The time zone of {subject} is",
       ("{subject} lies in the time zone", "The local time in {subject} follows the")),
    _T("/base/biblioness/bibs_location/country", "{subject} is a place in the country of",
       ("{subject} is located in the country", "The country in which {subject} lies is")),
    _T("/base/aareas/schema/administrative_area/administrative_parent", "{subject} is an administrative part of",
       ("The administrative parent of {subject} is", "{subject} is governed as a part of")),
    _T("/sports/sports_team/sport", "The sport played by {subject} is",
       ("{subject} is a team that plays", "{subject} competes in the sport of")),
    _T("/music/artist/origin", "The musical artist {subject} comes from",
       ("The music act {subject} originated in", "The hometown of the musician {subject} is")),
    _T("/tv/tv_program/country_of_origin", "{subject} is a television show from",
       ("The TV series {subject} was made in", "The country of origin of the TV show {subject} is")),
])

# datasets whose relations have templates: the catalog name -> table (a dataset absent here has none)
DATASET_TEMPLATES: dict[str, TemplateRegistry] = {"fb15k237": FB15K237_TEMPLATES}


def clean_name(text: str) -> str:
    """An entity text as it appears in a sentence: NFC, single spaces, no space before punctuation.

    FB15k-237's texts mark 147 entities with a ``-GB`` suffix (``Actor-GB``): not part of the name.
    """
    text = unicodedata.normalize("NFC", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"-GB$", "", text)
    return re.sub(r" ([,;:])", r"\1", text)


@dataclass(frozen=True)
class Fact:
    """A single-answer fact: the labelled ``triple``, the ``subject``/``answer`` names and its template."""

    triple: Triple
    subject: str
    answer: str
    template: RelationTemplate

    @property
    def prompt(self) -> str:
        """The question of the fact (its template with the subject)."""
        return self.template.render(self.subject)

    @property
    def rephrase_prompts(self) -> list[str]:
        """Other wordings of :attr:`prompt`."""
        return self.template.render_rephrasings(self.subject)

    def sentences(self) -> list[str]:
        """The fact said with every wording: ``prompt + " " + answer + "."`` (the toy model's training text)."""
        return [f"{p} {self.answer}." for p in (self.prompt, *self.rephrase_prompts)]

    def to_dict(self) -> dict[str, Any]:
        """A self-contained record (the template included), read back by :meth:`from_dict`."""
        t = self.template
        return {"triple": list(self.triple), "subject": self.subject, "answer": self.answer, "prompt": self.prompt,
                "template": {"prompt": t.prompt, "rephrasings": list(t.rephrasings), "reverse": t.reverse}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Fact":
        """The fact of a :meth:`to_dict` record; a bad record raises :class:`KGDataError` naming the field."""
        triple = d.get("triple")
        if not (isinstance(triple, list) and len(triple) == 3 and all(isinstance(v, str) and v for v in triple)):
            raise KGDataError(f"expected [head, relation, tail] as 3 non-empty strings, got {triple!r}", field="triple")
        for key in ("subject", "answer"):
            if not isinstance(d.get(key), str) or not d[key].strip():
                raise KGDataError(f"expected a non-empty string, got {d.get(key)!r}", field=key)
        spec = d.get("template")
        if not isinstance(spec, dict):
            raise KGDataError(f"expected an object {{prompt, rephrasings, reverse}}, got {spec!r}", field="template")
        try:
            template = RelationTemplate(triple[1], spec.get("prompt") or "", tuple(spec.get("rephrasings") or ()),
                                        spec.get("reverse"))
        except (ValueError, TypeError, AttributeError) as err:
            raise KGDataError(str(err), field="template") from None
        return cls(Triple(*triple), d["subject"], d["answer"], template)


def _name_of(kg: KnowledgeGraph) -> Any:
    return lambda label: clean_name(kg.entity_text(label))


def count_single_answer_pairs(kg: KnowledgeGraph) -> int:
    """Number of (head, relation) pairs of ``kg`` with exactly one tail across all splits."""
    tails: dict[tuple[int, int], set[int]] = defaultdict(set)
    for h, r, t in kg.all_triples().tolist():
        tails[(h, r)].add(t)
    return sum(1 for ts in tails.values() if len(ts) == 1)


def single_answer_facts(kg: KnowledgeGraph, templates: Mapping[str, RelationTemplate]) -> list[Fact]:
    """The facts of ``kg``'s templated relations whose question has one answer (sorted by triple)."""
    name = _name_of(kg)
    rel_ids = {kg.relations.id(r): r for r in templates if r in kg.relations}
    # answers per (subject NAME, relation): entities sharing a name must agree, or the prompt is ambiguous
    answers: dict[tuple[str, int], set[str]] = defaultdict(set)
    by_pair: dict[tuple[str, int], set[tuple[int, int]]] = defaultdict(set)
    ent = kg.entities.labels
    for h, r, t in kg.all_triples().tolist():
        if r in rel_ids:
            key = (name(ent[h]), r)
            answers[key].add(name(ent[t]))
            by_pair[key].add((h, t))
    facts = []
    for (subject, r), names in answers.items():
        pairs = by_pair[(subject, r)]
        if len(names) != 1 or len({h for h, _ in pairs}) != 1 or len(pairs) != 1 or not subject:
            continue
        (h, t), = pairs
        answer = next(iter(names))
        if not answer or answer == subject:
            continue
        facts.append(Fact(Triple(ent[h], rel_ids[r], ent[t]), subject, answer, templates[rel_ids[r]]))
    facts.sort(key=lambda f: f.triple)
    return facts


def load_facts(
    dataset: str,
    data_dir: str | os.PathLike | None = None,
    *,
    templates: Mapping[str, RelationTemplate] | None = None,
    min_facts: int = MIN_FACTS,
) -> list[Fact]:
    """All single-answer facts of a catalog dataset (``templates`` default: the dataset's own table)."""
    key = dataset.lower().replace("-", "").replace("_", "")
    kg = load_dataset(dataset, data_dir)
    if templates is None:
        templates = DATASET_TEMPLATES.get(key)
    if templates is None:
        raise KGDataError(
            f"{kg.name} has {count_single_answer_pairs(kg):,} single-answer (head, relation) pairs and no relation "
            f"templates; edits of a language model need facts with ONE correct answer said in natural language: "
            f"use {', '.join(DATASET_TEMPLATES)} (or pass templates)", field="dataset")
    facts = single_answer_facts(kg, templates)
    if len(facts) < min_facts:
        raise KGDataError(f"{kg.name} has only {len(facts):,} single-answer facts in templated relations "
                          f"(need >= {min_facts:,})", field="dataset")
    return facts


def select_facts(facts: Sequence[Fact], n: int | None, *, seed: int = 0) -> list[Fact]:
    """``n`` facts chosen by a seeded shuffle (all when ``n`` is None); same inputs, same facts."""
    order = list(facts)
    random.Random(seed).shuffle(order)
    if n is None:
        return order
    if n > len(order):
        raise KGDataError(f"asked for {n:,} facts, only {len(order):,} are available", field="n_facts")
    return order[:n]


def editable_facts(facts: Sequence[Fact]) -> list[Fact]:
    """The facts whose relation has another answer among ``facts`` to be edited to (in order)."""
    answers: dict[str, set[str]] = defaultdict(set)
    for fact in facts:
        answers[fact.triple.relation].add(fact.answer)
    return [f for f in facts if len(answers[f.triple.relation]) > 1]


def edit_requests(
    facts: Sequence[Fact],
    n_edits: int,
    *,
    seed: int = 0,
    n_locality: int = 1,
) -> list[EditRequest]:
    """Edits of ``n_edits`` of ``facts`` (seeded), each to the answer of another fact of the same relation.

    The new target is drawn from the answers of the relation's other facts in ``facts`` (so, weighted by how
    often an answer occurs: plausible); the ground truth is the fact's answer. Locality prompts are facts of
    ``facts`` not edited, ``n_locality`` per request, none about the edited subject. Relations with a single
    distinct answer cannot be edited this way and are skipped.
    """
    rng = random.Random(seed)
    answers: dict[str, list[str]] = defaultdict(list)
    tails: dict[tuple[str, str], str] = {}
    for fact in facts:
        answers[fact.triple.relation].append(fact.answer)
        tails[(fact.triple.relation, fact.answer)] = fact.triple.tail
    editable = editable_facts(facts)
    if n_edits > len(editable):
        raise KGDataError(f"asked for {n_edits:,} edits, only {len(editable):,} facts can be edited", field="n_edits")
    order = list(editable)
    rng.shuffle(order)
    chosen = order[:n_edits]
    editable_ids = {id(f) for f in editable}
    unrelated = order[n_edits:] + [f for f in facts if id(f) not in editable_ids]
    requests = []
    cursor = 0
    for fact in chosen:
        pool = answers[fact.triple.relation]
        new = fact.answer
        while new == fact.answer:
            new = pool[rng.randrange(len(pool))]
        local: list[tuple[str, str]] = []
        tried = 0
        while len(local) < n_locality and tried < len(unrelated):
            other = unrelated[cursor % len(unrelated)]
            cursor += 1
            tried += 1
            if other.subject != fact.subject:
                local.append((other.prompt, other.answer))
        reverse = fact.template.render_reverse(new)
        requests.append(EditRequest(
            prompt=fact.prompt, target_new=new, ground_truth=fact.answer, subject=fact.subject,
            rephrase_prompts=fact.rephrase_prompts, locality={"unrelated": local} if local else {},
            portability={"reverse": [(reverse, fact.subject)]} if reverse is not None else {},
            triple=Triple(fact.triple.head, fact.triple.relation, tails[(fact.triple.relation, new)]),
        ))
    return requests


def write_facts_jsonl(path: str | os.PathLike, facts: Iterable[Fact]) -> Path:
    """Write facts one JSON object per line (see :meth:`Fact.to_dict`)."""
    path = Path(path)
    write_text_atomic(path, "".join(json.dumps(f.to_dict(), ensure_ascii=False) + "\n" for f in facts))
    return path


def read_facts_jsonl(path: str | os.PathLike) -> list[Fact]:
    """Read facts written by :func:`write_facts_jsonl`; a bad line names the file, line and field."""
    facts = []
    for record in read_records(path):
        try:
            facts.append(Fact.from_dict(record.data))
        except KGDataError as err:
            raise KGDataError(err.reason, path=path, line=record.line, field=err.field) from None
    return facts
