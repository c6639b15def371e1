"""knn-classify: text task loaders (hand-written files, bad input), encoding, the prompt head, micro-F1, the
training module's datastore and pseudo-labels, and the CLI's JSON contract (tiny encoder on hand-made CB files;
MiniLM on the real few-shot TREC files, skipped when ../shared/data/text is absent)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from deltakg.cli import main
from kg_data import KGDataError
from knn.text_classify import ClassifyConfig, choose_mixture, micro_f1, run_classification
from knn.text_model import TextClassifier, encode
from knn.text_tasks import (TASKS, TextExample, get_task, load_splits, read_glue_tsv, read_jsonl, read_label_csv,
                            read_label_lines, read_semeval, resolve_text_dir, sample_per_class)

TEXT_DIR = Path(os.environ.get("DELTAKG_TEXT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "text"))


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------ loaders
def test_label_csv_and_lines(tmp_path):
    (tmp_path / "a.csv").write_text('1,"a, quoted sentence"\n0,plain\n')
    rows = read_label_csv(tmp_path / "a.csv", 2)
    assert [(r.fields["sentence"], r.label) for r in rows] == [("a, quoted sentence", 1), ("plain", 0)]
    (tmp_path / "b.txt").write_bytes("4 caf\xe9 society\n\n0 bad\n".encode("latin-1"))
    rows = read_label_lines(tmp_path / "b.txt", 5, encoding="latin-1")
    assert [(r.fields["sentence"], r.label) for r in rows] == [("caf\xe9 society", 4), ("bad", 0)]


@pytest.mark.parametrize("content, line, field", [
    ('0,ok\n7,too big\n', 2, "label"),
    ('0,ok\n1\n', 2, None),
    ('0,ok\n1,""\n', 2, "sentence"),
])
def test_bad_csv_names_file_line_and_field(tmp_path, content, line, field):
    path = tmp_path / "train.csv"
    path.write_text(content)
    with pytest.raises(KGDataError) as info:
        read_label_csv(path, 5)
    assert info.value.path == str(path) and info.value.line == line and info.value.field == field
    assert f"train.csv:{line}" in str(info.value)


def test_jsonl_reader_and_its_errors(tmp_path):
    labels = {"entailment": 0, "contradiction": 1, "neutral": 2}
    good = tmp_path / "cb.jsonl"
    good.write_text('{"premise": "p", "hypothesis": "h", "label": "neutral"}\n')
    assert read_jsonl(good, ("premise", "hypothesis"), labels)[0] == TextExample({"premise": "p", "hypothesis": "h"},
                                                                                 2)
    boolq = tmp_path / "boolq.jsonl"
    boolq.write_text('{"question": "q", "passage": "p", "label": true}\n')
    assert read_jsonl(boolq, ("question", "passage"), {"false": 0, "true": 1})[0].label == 1
    for text, line, field in (('{"premise": "p", "hypothesis": "h", "label": "neutral"}\n{oops\n', 2, None),
                              ('{"premise": "p", "label": "neutral"}\n', 1, "hypothesis"),
                              ('{"premise": "p", "hypothesis": "h", "label": "maybe"}\n', 1, "label"),
                              ('[1]\n', 1, None)):
        good.write_text(text)
        with pytest.raises(KGDataError) as info:
            read_jsonl(good, ("premise", "hypothesis"), labels)
        assert (info.value.line, info.value.field) == (line, field), text
    good.write_bytes(b'{"premise": "\xff"}\n')
    with pytest.raises(KGDataError, match="not valid utf-8"):
        read_jsonl(good, ("premise",), None)


def test_glue_tsv_reader(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("index\tquestion\tsentence\tlabel\n0\tq?\ts.\tnot_entailment\n")
    rows = read_glue_tsv(path, {"question": "question", "sentence": "sentence"}, "label",
                         {"entailment": 0, "not_entailment": 1})
    assert rows == [TextExample({"question": "q?", "sentence": "s."}, 1)]
    path.write_text("index\tquestion\tlabel\n0\tq?\tentailment\n")
    with pytest.raises(KGDataError) as info:
        read_glue_tsv(path, {"question": "question", "sentence": "sentence"}, "label", {"entailment": 0})
    assert (info.value.line, info.value.field) == (1, "sentence")
    path.write_text("index\tquestion\tsentence\tlabel\n0\tq?\tentailment\n")
    with pytest.raises(KGDataError, match="4 tab-separated columns") as info:
        read_glue_tsv(path, {"question": "question", "sentence": "sentence"}, "label", {"entailment": 0})
    assert info.value.line == 2


_SEMEVAL = ('1\t"The <e1>child</e1> was wrapped into the <e2>cradle</e2>."\nOther\nComment:\n\n'
            '2\t"The <e1>author</e1> uses a <e2>disassembler</e2>."\nInstrument-Agency(e2,e1)\nComment: x\n\n')


def test_semeval_conversion_and_errors(tmp_path):
    path = tmp_path / "TRAIN_FILE.TXT"
    path.write_text(_SEMEVAL)
    labels = {name: i for i, name in enumerate(TASKS["semeval"].labels)}
    rows = read_semeval(path, labels)
    assert rows[1].fields == {"sentence": "The <e1>author</e1> uses a <e2>disassembler</e2>.", "e1": "author",
                              "e2": "disassembler"}
    assert [r.label for r in rows] == [0, labels["Instrument-Agency(e2,e1)"]]
    path.write_text(_SEMEVAL.replace("<e2>cradle</e2>", "cradle"))
    with pytest.raises(KGDataError) as info:
        read_semeval(path, labels)
    assert (info.value.line, info.value.field) == (1, "e2")
    path.write_text(_SEMEVAL.replace("Instrument-Agency(e2,e1)", "Instrument-Agency"))
    with pytest.raises(KGDataError) as info:
        read_semeval(path, labels)
    assert (info.value.line, info.value.field) == (6, "relation")


def test_sample_per_class_is_seeded_and_balanced():
    examples = [TextExample({"s": str(i)}, i % 3) for i in range(40)] + [TextExample({"s": "x"}, 3)]
    picked = sample_per_class(examples, 5, seed=13)
    assert picked == sample_per_class(examples, 5, seed=13) != sample_per_class(examples, 5, seed=42)
    counts = torch.bincount(torch.tensor([examples[i].label for i in picked]))
    assert counts.tolist() == [5, 5, 5, 1]  # a smaller class keeps all it has
    rest = sample_per_class(examples, 5, seed=14, exclude=set(picked))
    assert not set(rest) & set(picked)


def _fake_cb(root: Path) -> Path:
    """A data folder with small CB files (and nothing else)."""
    folder = root / "cb"
    folder.mkdir(parents=True)
    names = ("entailment", "contradiction", "neutral")
    lines = [json.dumps({"premise": f"premise number {i} says {names[i % 3]}", "hypothesis": f"it is {names[i % 3]}",
                         "label": names[i % 3], "idx": i}) for i in range(60)]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "val.jsonl").write_text("\n".join(lines[:12]) + "\n")
    return root


def test_settings_and_data_dir(tmp_path, monkeypatch):
    root = _fake_cb(tmp_path / "data" / "text")
    assert resolve_text_dir(tmp_path / "data") == root  # a folder holding text/
    monkeypatch.setenv("DELTAKG_DATA", str(root))
    few = load_splits(get_task("cb"), None, "few-shot", 13)
    assert len(few.train) == 48 and len(few.test) == 12 and "val" in " ".join(few.notes)
    zero = load_splits(get_task("cb"), None, "zero-shot", 13)
    assert len(zero.train) == 60 and all(e.label == -1 for e in zero.train)  # no gold label reaches zero-shot
    with pytest.raises(KGDataError, match="no full training file"):
        load_splits(get_task("qnli"), root, "full", 13)
    with pytest.raises(KGDataError, match="no text tasks here"):
        resolve_text_dir(tmp_path)
    with pytest.raises(KGDataError, match="MNLI is left out"):
        get_task("mnli")


# ------------------------------------------------------------------------------------------ model
@pytest.fixture(scope="module")
def tiny():
    from deltakg.kge.encoders import load_encoder

    torch.manual_seed(0)
    return load_encoder("tiny", max_length=64)


def test_prompt_encoding_keeps_the_mask_and_truncates_the_long_field(tiny):
    spec = get_task("boolq")
    long = TextExample({"question": "is it true", "passage": " ".join(["word"] * 500)}, 1)
    feats = encode(spec, "prompt", [long], tiny.tokenizer, 64)
    ids = feats.input_ids[0]
    assert len(ids) == 64 and ids.count(tiny.tokenizer.mask_token_id) == 1
    assert ids[feats.mask_pos[0]] == tiny.tokenizer.mask_token_id
    assert "is it true" in tiny.tokenizer.decode(ids)  # the short question is kept whole
    pair = encode(get_task("qnli"), "cls", [TextExample({"question": "a b", "sentence": "c"}, 0)], tiny.tokenizer, 64)
    assert pair.token_type_ids[0] == [0, 0, 0, 0, 1, 1] and pair.mask_pos == [-1]


def test_prompt_head_scores_answers_through_the_tied_embeddings(tiny):
    answers = [[1000], [1001, 1002]]
    model = TextClassifier(tiny.model, "prompt", 2, answers).eval()
    feats = encode(get_task("qnli"), "prompt", [TextExample({"question": "a", "sentence": "b"}, 0)],
                   tiny.tokenizer, 32)
    from knn.text_model import collate

    batch = collate(feats, [0])
    rep, logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["mask_pos"])
    emb = tiny.model.get_input_embeddings().weight
    expected = torch.stack([rep[0] @ emb[1000], rep[0] @ (emb[1001] + emb[1002]) / 2])
    torch.testing.assert_close(logits[0], expected)
    hidden = tiny.model(input_ids=batch["input_ids"]).last_hidden_state
    torch.testing.assert_close(rep[0], hidden[0, feats.mask_pos[0]])


def test_sentence_head_is_scaled_cosine_to_the_pooled_label_words(tiny):
    from knn.text_model import SENTENCE_SCALE, collate

    tok = tiny.tokenizer
    answers = [[1000], [1001, 1002]]
    special = (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
    model = TextClassifier(tiny.model, "sentence", 2, answers, special_ids=special).eval()
    examples = [TextExample({"premise": "a b c", "hypothesis": "d"}, 0),
                TextExample({"premise": "e", "hypothesis": "f"}, 1)]
    feats = encode(get_task("cb"), "sentence", examples, tok, 32)
    assert feats.mask_pos == [-1, -1] and feats.input_ids[1] == [tok.cls_token_id, *tok("e", add_special_tokens=False)[
        "input_ids"], tok.sep_token_id, *tok("f", add_special_tokens=False)["input_ids"], tok.sep_token_id]
    batch = collate(feats, [0, 1])  # the second row is padded: pads must not enter the mean
    rep, logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["mask_pos"])

    def pooled(ids, types=None):
        types = torch.tensor([types]) if types else None
        hidden = tiny.model(input_ids=torch.tensor([ids]), token_type_ids=types).last_hidden_state[0]
        return torch.nn.functional.normalize(hidden.mean(dim=0), dim=0)

    torch.testing.assert_close(rep[1], pooled(feats.input_ids[1], feats.token_type_ids[1]))
    labels = torch.stack([pooled([special[0], *ids, special[1]]) for ids in answers])
    torch.testing.assert_close(logits, SENTENCE_SCALE * rep @ labels.T)
    with pytest.raises(KGDataError, match="special_ids"):
        TextClassifier(tiny.model, "sentence", 2, answers)


def test_zero_shot_with_the_sentence_head(tmp_path):
    out = run_classification(ClassifyConfig("cb", "zero-shot", seeds=(13,), encoder="tiny", epochs=1, k=4,
                                            head="sentence", unlabeled=20, progress=False), _fake_cb(tmp_path))
    seed = out["per_seed"]["13"]
    assert out["head"] == "sentence" and seed["plain_training"] == "none (the zero-shot sentence model)"
    assert all(0.0 <= out["rows"][row] <= 1.0 for row in ("plain", "knn_infer", "knn_train_infer"))


def test_micro_f1_leaves_the_negative_class_out():
    labels = torch.tensor([0, 1, 2, 2, 0])
    pred = torch.tensor([1, 1, 2, 0, 0])
    probs = torch.nn.functional.one_hot(pred, 3).float()
    # non-Other: predicted {1, 1, 2} (3), gold {1, 2, 2} (3), correct 2 -> P = R = 2/3
    assert micro_f1(probs, labels, negative=0) == pytest.approx(2 / 3)
    assert micro_f1(torch.nn.functional.one_hot(torch.zeros(5, dtype=torch.long), 3).float(), labels, 0) == 0.0


def test_choose_mixture_picks_the_knn_when_it_is_right():
    from knn import Datastore, accuracy

    keys = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    store = Datastore.build(keys, torch.tensor([0, 0, 1, 1]), 2)
    dev = torch.tensor([[0.05, 0.0], [5.05, 5.0]])
    wrong_model = torch.tensor([[0.3, 0.7], [0.7, 0.3]])  # the model alone gets both wrong
    mix = choose_mixture(store, dev, wrong_model, torch.tensor([0, 1]), accuracy)
    # 0.3 * ~1 + 0.7 * 0.3 > 0.5: the smallest lambda that fixes both (ties go to the smaller lambda)
    assert mix.dev_score == 1.0 and mix.lam == 0.3 and mix.k <= len(store)


# ------------------------------------------------------------------------------------------ training and CLI
def test_zero_shot_never_reads_gold_labels_and_regenerates_pseudo_labels(tmp_path, monkeypatch):
    root = _fake_cb(tmp_path)
    import knn.text_classify as tc

    seen = []
    original = tc.train

    def spy(model, features, config, seed, **kwargs):
        seen.append((list(features.labels), kwargs))
        return original(model, features, config, seed, **kwargs)

    monkeypatch.setattr(tc, "train", spy)
    out = run_classification(ClassifyConfig("cb", "zero-shot", seeds=(13,), encoder="tiny", epochs=2, k=4,
                                            unlabeled=20, progress=False), root)
    (labels, kwargs), = seen  # only knn_train_infer trains in zero-shot
    assert set(labels) == {-1} and kwargs == {"calibrate": True, "pseudo": True, "desc": "cb seed 13 +kNN train"}
    counts = out["per_seed"]["13"]["knn_train_infer_training"]["pseudo_label_counts"]
    assert len(counts) == 2 and all(sum(c) == 20 for c in counts)  # regenerated at each of the 2 epochs
    assert out["per_seed"]["13"]["knn_infer_mixture"]["chosen_on"].startswith("fixed")


def test_training_leaves_each_example_out_of_its_neighbours(tmp_path, monkeypatch):
    root = _fake_cb(tmp_path)
    from knn.datastore import Datastore

    excluded = []
    original = Datastore.knn_probs

    def spy(self, queries, k, temperature, exclude=None):
        excluded.append(exclude)
        return original(self, queries, k, temperature, exclude=exclude)

    monkeypatch.setattr(Datastore, "knn_probs", spy)
    run_classification(ClassifyConfig("cb", "few-shot", seeds=(13,), encoder="tiny", epochs=1, progress=False), root)
    training = [e for e in excluded if e is not None]
    assert len(training) == 6  # 48 examples, batch 8, one epoch: every step leaves its batch out
    assert sorted(torch.cat(training).tolist()) == list(range(48))


def test_cli_contract_on_hand_made_files(tmp_path, capsys):
    root = _fake_cb(tmp_path / "d")
    code, out, err = _run(["knn-classify", "--task", "cb", "--setting", "few-shot", "--seeds", "13,42", "--encoder",
                           "tiny", "--epochs", "1", "--max-test", "10", "--data-dir", str(root), "--no-progress",
                           "--json", "--out", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert {"task", "setting", "metric", "rows", "per_seed"} <= set(payload)
    assert (payload["task"], payload["setting"], payload["metric"]) == ("cb", "few-shot", "accuracy")
    assert set(payload["rows"]) == {"plain", "knn_infer", "knn_train_infer"} and set(payload["per_seed"]) == {"13",
                                                                                                               "42"}
    for row, value in payload["rows"].items():
        assert value == pytest.approx(sum(payload["per_seed"][s][row] for s in ("13", "42")) / 2)
    assert payload["max_test"] == 10 and payload["test_size"] == 10 and payload["test_size_total"] == 12
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == payload["rows"]


@pytest.mark.parametrize("argv, needle", [
    (["--task", "nope", "--setting", "few-shot"], "unknown task"),
    (["--task", "qnli", "--setting", "full"], "no full training file"),
    (["--task", "cb", "--setting", "zero-shot", "--head", "cls"], "prompt or sentence head"),
    (["--task", "cb", "--setting", "few-shot", "--seeds", "1,1"], "distinct"),
    (["--task", "cb", "--setting", "few-shot", "--seeds", "x"], "--seeds"),
    (["--task", "cb", "--setting", "few-shot", "--lambda", "2"], "--lambda"),
    (["--task", "cb", "--setting", "sometimes"], "--setting"),
    (["--task", "cb", "--setting", "few-shot", "--out", "/nonexistent-dir/r.json"], "--out"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, needle):
    root = _fake_cb(tmp_path / "d")
    code, out, err = _run(["knn-classify", *argv, "--data-dir", str(root), "--encoder", "tiny", "--no-progress"],
                          capsys)
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert len([line for line in err.strip().splitlines() if line.startswith("deltakg")]) == 1


def test_cli_without_a_data_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DELTAKG_DATA", raising=False)
    code, _, err = _run(["knn-classify", "--task", "cb", "--setting", "few-shot", "--no-progress"], capsys)
    assert code == 2 and "DELTAKG_DATA" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def text_dir() -> Path:
    if not (TEXT_DIR / "trec").is_dir():
        pytest.skip(f"text data {TEXT_DIR} is absent (set DELTAKG_TEXT_DATA or put it at <repo>/../shared/data/text)")
    return TEXT_DIR


def test_real_loaders_match_the_provenance(text_dir):
    sizes = {"sst-5": (80, 80, 2210), "trec": (96, 96, 500), "qnli": (32, 32, 5463), "boolq": (30, 32, 3270),
             "cb": (48, 32, 56), "semeval": (289, 288, 2717)}
    for name, expected in sizes.items():
        splits = load_splits(get_task(name), text_dir, "few-shot", 13)
        assert (len(splits.train), len(splits.dev), len(splits.test)) == expected, name


@pytest.mark.slow
def test_few_shot_trec_through_the_cli_with_minilm(text_dir, capsys):
    code, out, err = _run(["knn-classify", "--task", "trec", "--setting", "few-shot", "--seeds", "13", "--epochs",
                           "1", "--max-test", "40", "--data-dir", str(text_dir), "--no-progress", "--json"], capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["metric"] == "accuracy" and payload["test_size"] == 40
    assert all(0.0 <= v <= 1.0 for v in payload["rows"].values())
    assert payload["per_seed"]["13"]["train_size"] == 96
