"""Edit requests (triples through templates, EasyEdit/ZsRE/CounterFact records) and single-answer facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kg_data import KGDataError, KnowledgeGraph, Triple
from llm_editing.facts import (
    FB15K237_TEMPLATES, Fact, clean_name, edit_requests, load_facts, read_facts_jsonl, select_facts,
    single_answer_facts, write_facts_jsonl,
)
from llm_editing.requests import (
    EditRequest, RelationTemplate, TemplateRegistry, load_requests, load_requests_jsonl, request_from_dict,
    requests_from_triples, save_requests_jsonl,
)

BORN = RelationTemplate("born_in", "{subject} was born in", ("The birthplace of {subject} is",),
                        "{object} is the birthplace of")
CITIZEN = RelationTemplate("citizen_of", "{subject} is a citizen of")
TEMPLATES = TemplateRegistry([BORN, CITIZEN])


# ---------------------------------------------------------------------------------------------- EditRequest
def test_request_checks_its_fields() -> None:
    ok = EditRequest("Ada Lovelace was born in", "Paris", "London", "Ada Lovelace")
    assert ok.rephrase_prompts == [] and ok.locality == {} and ok.triple is None
    cases = [
        (dict(prompt="Ada was born in", target_new="Paris", subject="Grace"), "subject"),
        (dict(prompt="Ada was born in", target_new="  ", subject="Ada"), "target_new"),
        (dict(prompt="Ada was born in", target_new=" Paris", subject="Ada"), "target_new"),
        (dict(prompt="Ada was born in", target_new="Paris", ground_truth="Paris", subject="Ada"), "ground_truth"),
        (dict(prompt="Ada was born in", target_new="Paris", subject="Ada", rephrase_prompts="x"), "rephrase_prompts"),
        (dict(prompt="Ada was born in", target_new="Paris", subject="Ada", locality={"u": [("q", "")]}),
         "locality.u[0].answer"),
    ]
    for kwargs, field in cases:
        with pytest.raises(KGDataError) as err:
            EditRequest(**kwargs)
        assert err.value.field == field, kwargs


def test_templates_validate_and_registry_names_unknown_relations() -> None:
    with pytest.raises(ValueError, match="subject"):
        RelationTemplate("r", "no placeholder")
    with pytest.raises(ValueError, match="object"):
        RelationTemplate("r", "{subject} x", reverse="no object")
    with pytest.raises(ValueError, match="already"):
        TemplateRegistry([BORN, BORN])
    with pytest.raises(KGDataError, match="'died_in' has no template") as err:
        TEMPLATES["died_in"]
    assert err.value.field == "relation"
    assert list(TEMPLATES) == ["born_in", "citizen_of"] and len(TEMPLATES) == 2


def test_requests_from_triples_fill_every_field() -> None:
    names = {"ada": "Ada Lovelace", "paris": "Paris", "london": "London", "bob": "Bob Marley", "jm": "Jamaica"}
    edits = [Triple("ada", "born_in", "paris"), Triple("bob", "citizen_of", "london")]
    local = [Triple("ada", "citizen_of", "london"), Triple("bob", "born_in", "jm")]
    reqs = requests_from_triples(edits, TEMPLATES, ground_truths=["london", None], names=names,
                                 locality_facts=local, n_locality=1)
    first, second = reqs
    assert first.prompt == "Ada Lovelace was born in" and first.target_new == "Paris"
    assert first.ground_truth == "London" and first.subject == "Ada Lovelace" and first.triple == edits[0]
    assert first.rephrase_prompts == ["The birthplace of Ada Lovelace is"]
    assert first.portability == {"reverse": [("Paris is the birthplace of", "Ada Lovelace")]}
    # the locality fact about Ada herself is skipped: it is not unrelated to the edit
    assert first.locality == {"unrelated": [("Bob Marley was born in", "Jamaica")]}
    assert second.ground_truth is None and second.portability == {}
    assert second.locality == {"unrelated": [("Ada Lovelace is a citizen of", "London")]}
    with pytest.raises(KGDataError, match="no template"):
        requests_from_triples([Triple("ada", "died_in", "paris")], TEMPLATES)


# ---------------------------------------------------------------------------------------------- records
def test_easyedit_zsre_and_counterfact_records() -> None:
    easy = request_from_dict({
        "prompt": "Ada was born in", "target_new": "Paris", "ground_truth": ["London"], "subject": "Ada",
        "rephrase_prompt": "Ada's birthplace is",
        "locality": {"nq": {"prompt": "Who wrote Hamlet?", "ground_truth": ["Shakespeare"]}},
        "portability": {"one_hop": {"prompt": ["Ada's home country is"], "ground_truth": [["France"]]}},
    })
    assert easy.ground_truth == "London" and easy.rephrase_prompts == ["Ada's birthplace is"]
    assert easy.locality == {"nq": [("Who wrote Hamlet?", "Shakespeare")]}
    assert easy.portability == {"one_hop": [("Ada's home country is", "France")]}
    counterfact = request_from_dict({"prompt": "Ada was born in", "target_new": "Paris", "ground_truth": "London",
                                     "subject": "Ada", "locality_prompt": "Bob was born in",
                                     "locality_ground_truth": "Kingston"})
    assert counterfact.locality == {"neighborhood": [("Bob was born in", "Kingston")]}
    zsre = request_from_dict({"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?",
                              "alt": "University of Michigan", "answers": ["Illinois Institute of Technology"],
                              "rephrase": "What university did Watts Humphrey take part in?",
                              "loc": "nq question: who played desmond doss father", "loc_ans": "Hugo Weaving"})
    assert zsre.prompt.startswith("What university") and zsre.target_new == "University of Michigan"
    assert zsre.ground_truth == "Illinois Institute of Technology"
    assert zsre.locality == {"nq": [("nq question: who played desmond doss father", "Hugo Weaving")]}
    rome = request_from_dict({
        "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                              "target_new": {"str": "English"}, "target_true": {"str": "French"}},
        "paraphrase_prompts": ["Danielle Darrieux spoke the language"],
        "neighborhood_prompts": ["The native language of Montesquieu is"],
    })
    assert rome.prompt == "The mother tongue of Danielle Darrieux is" and rome.ground_truth == "French"
    assert rome.locality == {"neighborhood": [("The native language of Montesquieu is", "French")]}
    triple = request_from_dict({"triple": ["Ada", "born_in", "Paris"], "ground_truth": "London"}, templates=TEMPLATES)
    assert triple.prompt == "Ada was born in" and triple.triple == Triple("Ada", "born_in", "Paris")


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_bad_records_name_file_line_and_field(tmp_path: Path) -> None:
    good = {"prompt": "Ada was born in", "target_new": "Paris", "subject": "Ada"}
    cases = [
        ({**good, "subject": "Grace"}, "subject", "not a substring"),
        ({**good, "target_new": ""}, "target_new", "must not be empty"),
        ({"triple": ["Ada", "died_in", "Paris"]}, "triple", "has no template"),
        ({"prompt": "Ada was born in", "subject": "Ada"}, "target_new", "missing"),
        ({"what": 1}, "prompt", "unknown record"),
    ]
    for number, (bad, field, message) in enumerate(cases):
        path = _jsonl(tmp_path / f"bad{number}.jsonl", [good, bad])
        with pytest.raises(KGDataError) as err:
            load_requests_jsonl(path, templates=TEMPLATES)
        assert (err.value.path, err.value.line, err.value.field) == (str(path), 2, field), bad
        assert message in str(err.value) and str(err.value).startswith(f"{path}:2: field '{field}'")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(KGDataError, match="invalid JSON") as err:
        load_requests_jsonl(broken)
    assert err.value.line == 2
    array = tmp_path / "zsre.json"
    array.write_text(json.dumps([good, {**good, "subject": "Grace"}]))
    with pytest.raises(KGDataError) as err:
        load_requests(array)
    assert err.value.field == "[1].subject" and err.value.path == str(array)


def test_requests_round_trip_through_jsonl(tmp_path: Path) -> None:
    reqs = requests_from_triples([Triple("Ada", "born_in", "Paris")], TEMPLATES, ground_truths=["London"],
                                 locality_facts=[Triple("Bob", "citizen_of", "Jamaica")])
    path = save_requests_jsonl(tmp_path / "edits.jsonl", reqs)
    assert load_requests_jsonl(path) == reqs
    assert load_requests(path) == reqs


# ---------------------------------------------------------------------------------------------- facts
def test_clean_name() -> None:
    assert clean_name("  Academy Award for  Best   Film ") == "Academy Award for Best Film"
    assert clean_name("St. Louis  MO-IL , Area") == "St. Louis MO-IL, Area"
    assert clean_name("Actor-GB") == "Actor"


def _kg() -> KnowledgeGraph:
    train = [("ada", "born_in", "london"), ("bob", "born_in", "kingston"),
             ("carl", "born_in", "paris"), ("carl", "born_in", "lyon"),        # two answers: not single-answer
             ("dan1", "born_in", "paris"), ("dan2", "born_in", "lyon"),        # one name, two answers: ambiguous
             ("eve", "born_in", "rome"), ("ada", "citizen_of", "uk"), ("ada", "unknown_rel", "uk")]
    texts = {"ada": "Ada", "bob": "Bob", "carl": "Carl", "dan1": "Dan", "dan2": "Dan", "eve": "Eve",
             "london": "London", "kingston": "Kingston", "paris": "Paris", "lyon": "Lyon", "rome": "Rome",
             "uk": "United  Kingdom"}
    return KnowledgeGraph.from_labeled({"train": train, "valid": [("eve", "citizen_of", "uk")], "test": []},
                                       entity_texts=texts)


def test_single_answer_facts_drop_multi_answer_and_ambiguous_names() -> None:
    facts = single_answer_facts(_kg(), TEMPLATES)
    assert [(f.subject, f.triple.relation, f.answer) for f in facts] == [
        ("Ada", "born_in", "London"), ("Ada", "citizen_of", "United Kingdom"), ("Bob", "born_in", "Kingston"),
        ("Eve", "born_in", "Rome"), ("Eve", "citizen_of", "United Kingdom")]
    assert facts[0].sentences() == ["Ada was born in London.", "The birthplace of Ada is London."]
    assert select_facts(facts, 3, seed=1) == select_facts(facts, 3, seed=1)
    assert sorted(map(id, select_facts(facts, None))) == sorted(map(id, facts))
    with pytest.raises(KGDataError, match="only 5") as err:
        select_facts(facts, 6)
    assert err.value.field == "n_facts"


def test_edit_requests_use_other_answers_of_the_relation() -> None:
    facts = single_answer_facts(_kg(), TEMPLATES)
    reqs = edit_requests(facts, 3, seed=0, n_locality=2)
    assert len(reqs) == 3 and reqs == edit_requests(facts, 3, seed=0, n_locality=2)
    by_prompt = {f.prompt: f for f in facts}
    born_answers = {f.answer for f in facts if f.triple.relation == "born_in"}
    for r in reqs:
        fact = by_prompt[r.prompt]
        # citizen_of has one distinct answer: nothing plausible to change it to
        assert fact.triple.relation == "born_in" and r.target_new in born_answers - {fact.answer}
        assert r.ground_truth == fact.answer and r.triple.head == fact.triple.head
        assert r.portability == {"reverse": [(f"{r.target_new} is the birthplace of", fact.subject)]}
        assert r.locality["unrelated"] and all(not p.startswith(fact.subject) for p, _ in r.locality["unrelated"])
    with pytest.raises(KGDataError, match="only 3 facts can be edited"):
        edit_requests(facts, 4)


def test_facts_jsonl_round_trip_and_errors(tmp_path: Path) -> None:
    facts = single_answer_facts(_kg(), TEMPLATES)
    path = write_facts_jsonl(tmp_path / "facts.jsonl", facts)
    assert read_facts_jsonl(path) == facts
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    record["template"]["prompt"] = "no placeholder"
    path.write_text("\n".join([lines[0], json.dumps(record)]) + "\n")
    with pytest.raises(KGDataError) as err:
        read_facts_jsonl(path)
    assert (err.value.line, err.value.field) == (2, "template")


def test_umls_is_refused() -> None:
    with pytest.raises(KGDataError, match="single-answer .* no relation templates") as err:
        load_facts("umls")
    assert err.value.field == "dataset"


def test_fb15k237_facts(fb15k237_dir: Path) -> None:
    facts = load_facts("fb15k237", fb15k237_dir)
    assert len(facts) > 15_000
    assert {f.triple.relation for f in facts} <= set(FB15K237_TEMPLATES)
    prompts = [f.prompt for f in facts]
    assert len(set(prompts)) == len(prompts)  # one answer per question
    assert all(isinstance(f, Fact) and "  " not in f.subject and not f.answer.endswith("-GB") for f in facts)
    chosen = select_facts(facts, 100, seed=0)
    assert chosen == select_facts(load_facts("fb15k237", fb15k237_dir), 100, seed=0)
