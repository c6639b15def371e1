"""Text classification tasks of Revisit-KNN as a registry: where each task's files are, how a setting's splits
are made, its label words, prompt template and metric.

Files come from a data directory (``data_dir``, else ``$DELTAKG_DATA``): the folder holding ``sst-5/``,
``trec/``, ``qnli/``, ``boolq/``, ``cb/`` and ``semeval/`` (``../shared/data/text`` in this workspace), or a folder
holding it as ``text/``. Their layout is described in that folder's PROVENANCE.md.

Settings (``splits(spec, root, setting, seed)``):

- ``few-shot``: 16 examples per class. SST-5, TREC and QNLI use LM-BFF's k-shot files ``16-<seed>/{train,dev}``
  and the shared test file. BoolQ, CB and SemEval have no k-shot files: 16 per class are sampled from train with
  the seed (a class with fewer examples keeps all of them), the dev set is FewGLUE's dev32 for BoolQ and up to 16
  per class sampled from the rest of train for CB and SemEval. CB's test file is unlabeled, so CB's SuperGLUE
  val set is the test set. MNLI is left out: its test set (GLUE dev_matched) is not in the data folder.
- ``zero-shot``: no label is read for training; the unlabeled pool is the text of the task's training files
  (seeded subsample), the test set is the few-shot one.
- ``full``: the full training files where they exist (SST-5, TREC, CB, SemEval); dev is the original dev set
  (SST-5) or a seeded 10% of train held out (TREC, SemEval) or the few-shot dev (CB). QNLI and BoolQ have no full
  training file here and refuse the setting.

Bad files raise :class:`kg_data.KGDataError` naming the file, line and field.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from kg_data.catalog import DATA_ENV
from kg_data.errors import KGDataError

__all__ = ["TextExample", "Splits", "TaskSpec", "TASKS", "SETTINGS", "task_names", "get_task", "resolve_text_dir",
           "load_splits", "sample_per_class", "read_label_csv", "read_label_lines", "read_glue_tsv", "read_jsonl",
           "read_semeval", "TASK_FOLDERS"]

SETTINGS = ("zero-shot", "few-shot", "full")
PER_CLASS = 16
TASK_FOLDERS = ("sst-5", "trec", "qnli", "boolq", "cb", "semeval")


@dataclass(frozen=True)
class TextExample:
    """One example: its text fields by name (e.g. ``sentence``; ``premise``/``hypothesis``) and label (-1: none)."""

    fields: Mapping[str, str]
    label: int = -1


@dataclass
class Splits:
    """The train, dev and test examples of one task, setting and seed, and how they were made."""

    train: list[TextExample]
    dev: list[TextExample]
    test: list[TextExample]
    notes: list[str] = field(default_factory=list)

    def with_note(self, note: str) -> "Splits":
        """Append a line to :attr:`notes`; returns self."""
        self.notes.append(note)
        return self


@dataclass(frozen=True)
class TaskSpec:
    """A task: class names, verbaliser, prompt, metric and the loaders of its settings."""

    name: str
    labels: tuple[str, ...]
    """Class names; a class's id is its position."""
    label_words: tuple[str, ...]
    """The prompt model's answer word (or phrase) per class, scored at the mask."""
    template: str
    """The prompt: ``{field}`` placeholders and one ``[MASK]``."""
    pair: tuple[str, ...]
    """The fields the [CLS] sequence classifier reads (one text, or a text pair)."""
    truncate: tuple[str, ...]
    """Fields that may be shortened to fit the maximum length, the first one first."""
    metric: str
    """``"accuracy"`` or ``"micro_f1"`` (micro-F1 over every class but ``negative``)."""
    few_shot: Callable[[Path, int], Splits]
    unlabeled: Callable[[Path], list[TextExample]]
    """The zero-shot pool: the task's training text, labels dropped."""
    full: Callable[[Path, int], Splits] | None = None
    negative: str | None = None
    """The class micro-F1 leaves out (SemEval's ``Other``)."""
    max_length: int = 128

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.label_words):
            raise ValueError(f"task {self.name}: one label word per class expected")
        if self.template.count("[MASK]") != 1:
            raise ValueError(f"task {self.name}: the template needs exactly one [MASK]")
        if self.metric == "micro_f1" and self.negative not in self.labels:
            raise ValueError(f"task {self.name}: micro_f1 needs its negative class among the labels")


# ------------------------------------------------------------------------------------------ readers
def _open_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    if not path.is_file():
        raise KGDataError("file not found", path=path)
    try:
        return path.read_text(encoding=encoding).splitlines()
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise KGDataError(f"not valid {encoding} text", path=path, line=line) from None


def _label_id(value: str, labels: Mapping[str, int], path: Path, line: int, name: str = "label") -> int:
    if value not in labels:
        shown = ", ".join(list(labels)[:8]) + (", ..." if len(labels) > 8 else "")
        raise KGDataError(f"unknown label {value!r} (expected one of {shown})", path=path, line=line, field=name)
    return labels[value]


def _text(value: object, path: Path, line: int, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise KGDataError(f"expected a non-empty text, got {value!r}", path=path, line=line, field=name)
    return value


def read_label_csv(path: Path, n_classes: int, text_field: str = "sentence") -> list[TextExample]:
    """LM-BFF k-shot csv: ``label,sentence`` rows, integer labels in ``[0, n_classes)``, no header."""
    labels = {str(i): i for i in range(n_classes)}
    rows = list(csv.reader(_open_lines(path)))
    out = []
    for i, row in enumerate(rows, 1):
        if len(row) != 2:
            raise KGDataError(f"expected 2 columns (label, {text_field}), got {len(row)}", path=path, line=i)
        out.append(TextExample({text_field: _text(row[1], path, i, text_field)}, _label_id(row[0], labels, path, i)))
    return out


def read_label_lines(path: Path, n_classes: int, text_field: str = "sentence",
                     encoding: str = "utf-8") -> list[TextExample]:
    """One example per line, ``label text`` (the original SST-5 and TREC releases)."""
    labels = {str(i): i for i in range(n_classes)}
    out = []
    for i, line in enumerate(_open_lines(path, encoding), 1):
        if not line.strip():
            continue
        label, _, text = line.partition(" ")
        out.append(TextExample({text_field: _text(text, path, i, text_field)}, _label_id(label, labels, path, i)))
    return out


def read_glue_tsv(path: Path, columns: Mapping[str, str], label_column: str,
                  labels: Mapping[str, int]) -> list[TextExample]:
    """A GLUE tsv with a header; ``columns`` maps field names to header columns."""
    lines = _open_lines(path)
    if not lines:
        raise KGDataError("empty file (expected a header line)", path=path, line=1)
    header = lines[0].split("\t")
    for column in (*columns.values(), label_column):
        if column not in header:
            raise KGDataError(f"header lacks column {column!r} (has {', '.join(header)})", path=path, line=1,
                              field=column)
    where = {column: header.index(column) for column in (*columns.values(), label_column)}
    out = []
    for i, line in enumerate(lines[1:], 2):
        cells = line.split("\t")
        if len(cells) != len(header):
            raise KGDataError(f"expected {len(header)} tab-separated columns, got {len(cells)}", path=path, line=i)
        fields = {name: _text(cells[where[column]], path, i, column) for name, column in columns.items()}
        out.append(TextExample(fields, _label_id(cells[where[label_column]], labels, path, i, label_column)))
    return out


def read_jsonl(path: Path, fields: Sequence[str], labels: Mapping[str, int] | None,
               label_field: str = "label") -> list[TextExample]:
    """SuperGLUE jsonl: one object per line with the text ``fields`` and (unless ``labels`` is None) a label."""
    out = []
    for i, line in enumerate(_open_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise KGDataError(f"not valid JSON: {error.msg}", path=path, line=i) from None
        if not isinstance(record, dict):
            raise KGDataError("expected a JSON object", path=path, line=i)
        for name in (*fields, *([label_field] if labels is not None else [])):
            if name not in record:
                raise KGDataError("missing", path=path, line=i, field=name)
        texts = {name: _text(record[name], path, i, name) for name in fields}
        label = -1 if labels is None else _label_id(json.dumps(record[label_field]).strip('"'), labels, path, i,
                                                    label_field)
        out.append(TextExample(texts, label))
    return out


_SEMEVAL_LINE = re.compile(r'^(\d+)\t"(.*)"\s*$')
_ENTITY = {"e1": re.compile(r"<e1>(.*?)</e1>"), "e2": re.compile(r"<e2>(.*?)</e2>")}


def read_semeval(path: Path, labels: Mapping[str, int]) -> list[TextExample]:
    """The original SemEval-2010 Task 8 release: blocks of ``id<TAB>"sentence with <e1>/<e2> tags"``, the
    relation, a ``Comment:`` line and a blank line. Fields: ``sentence`` (tags kept), ``e1``, ``e2``."""
    lines = _open_lines(path)
    out = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        match = _SEMEVAL_LINE.match(lines[i])
        if not match:
            raise KGDataError('expected id<TAB>"sentence"', path=path, line=i + 1, field="sentence")
        sentence = match.group(2)
        entities = {}
        for name, pattern in _ENTITY.items():
            found = pattern.search(sentence)
            if not found or not found.group(1).strip():
                raise KGDataError(f"the sentence has no <{name}>...</{name}> entity", path=path, line=i + 1,
                                  field=name)
            entities[name] = found.group(1).strip()
        if i + 1 >= len(lines):
            raise KGDataError("missing the relation line after the sentence", path=path, line=i + 2,
                              field="relation")
        label = _label_id(lines[i + 1].strip(), labels, path, i + 2, "relation")
        out.append(TextExample({"sentence": sentence, **entities}, label))
        i += 2
        while i < len(lines) and lines[i].strip() and not _SEMEVAL_LINE.match(lines[i]):
            i += 1  # the Comment: line
    return out


# ------------------------------------------------------------------------------------------ sampling
def sample_per_class(examples: Sequence[TextExample], per_class: int, seed: int,
                     exclude: set[int] = frozenset()) -> list[int]:
    """Indices of up to ``per_class`` examples per label (all of a smaller class), drawn with ``seed``, in a
    seeded shuffled order; ``exclude`` indices are never drawn."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, example in enumerate(examples):
        if i not in exclude:
            by_label.setdefault(example.label, []).append(i)
    chosen = []
    for label in sorted(by_label):
        pool = by_label[label]
        chosen += rng.sample(pool, min(per_class, len(pool)))
    rng.shuffle(chosen)
    return chosen


def _sampled_few_shot(train: list[TextExample], seed: int, dev: list[TextExample] | None,
                      test: list[TextExample], source: str) -> Splits:
    picked = sample_per_class(train, PER_CLASS, seed)
    notes = [f"train: {PER_CLASS} per class sampled from {source} with seed {seed} (fewer where a class is smaller)"]
    if dev is None:
        rest = sample_per_class(train, PER_CLASS, seed + 1, exclude=set(picked))
        dev = [train[i] for i in rest]
        notes.append(f"dev: up to {PER_CLASS} per class sampled from the rest of {source} with seed {seed + 1}")
    return Splits([train[i] for i in picked], dev, test, notes)


def _held_out(train: list[TextExample], seed: int, fraction: float = 0.1) -> tuple[list[int], list[int]]:
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    cut = max(1, int(len(train) * fraction))
    return sorted(order[cut:]), sorted(order[:cut])


# ------------------------------------------------------------------------------------------ tasks
def _ids(names: Sequence[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(names)}


def _lmbff_single(folder: str, n: int) -> Callable[[Path, int], Splits]:
    def load(root: Path, seed: int) -> Splits:
        base = root / folder / "k-shot"
        return Splits(read_label_csv(base / f"16-{seed}" / "train.csv", n), read_label_csv(base / f"16-{seed}" /
                      "dev.csv", n), read_label_csv(base / "test.csv", n),
                      [f"LM-BFF k-shot split 16-{seed} (train and dev, 16 per class); test: {folder}/k-shot/test.csv"])

    return load


_SST5 = ("very negative", "negative", "neutral", "positive", "very positive")
_TREC = ("DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM")
_QNLI = ("entailment", "not_entailment")
_BOOLQ = ("false", "true")
_CB = ("entailment", "contradiction", "neutral")
_SEMEVAL = ("Other", "Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Component-Whole(e1,e2)",
            "Component-Whole(e2,e1)", "Content-Container(e1,e2)", "Content-Container(e2,e1)",
            "Entity-Destination(e1,e2)", "Entity-Destination(e2,e1)", "Entity-Origin(e1,e2)", "Entity-Origin(e2,e1)",
            "Instrument-Agency(e1,e2)", "Instrument-Agency(e2,e1)", "Member-Collection(e1,e2)",
            "Member-Collection(e2,e1)", "Message-Topic(e1,e2)", "Message-Topic(e2,e1)", "Product-Producer(e1,e2)",
            "Product-Producer(e2,e1)")
# SemEval's answer word names the role of e1 towards e2 in "the <e1> is the [MASK] of the <e2>"
_SEMEVAL_WORDS = ("other", "cause", "effect", "component", "whole", "content", "container", "arrival",
                  "destination", "derivative", "origin", "instrument", "agent", "member", "collection", "message",
                  "topic", "product", "producer")


def _sst5_full(root: Path, seed: int) -> Splits:
    base = root / "sst-5" / "full"
    read = lambda split: read_label_lines(base / f"stsa.fine.{split}", 5, encoding="latin-1")  # noqa: E731
    return Splits(read("train"), read("dev"), read("test"), ["full SST-5: stsa.fine.{train,dev,test}"])


def _trec_full(root: Path, seed: int) -> Splits:
    train = read_label_lines(root / "trec" / "full" / "TREC.train.all", 6, encoding="latin-1")
    keep, dev = _held_out(train, seed)
    return Splits([train[i] for i in keep], [train[i] for i in dev],
                  read_label_lines(root / "trec" / "full" / "TREC.test.all", 6, encoding="latin-1"),
                  [f"full TREC: 10% of TREC.train.all held out as dev with seed {seed}; test TREC.test.all"])


def _qnli_few(root: Path, seed: int) -> Splits:
    base = root / "qnli" / "k-shot"
    read = lambda path: read_glue_tsv(path, {"question": "question", "sentence": "sentence"}, "label",  # noqa: E731
                                      _ids(_QNLI))
    return Splits(read(base / f"16-{seed}" / "train.tsv"), read(base / f"16-{seed}" / "dev.tsv"),
                  read(base / "test.tsv"),
                  [f"LM-BFF k-shot split 16-{seed}; test: the GLUE QNLI dev set (qnli/k-shot/test.tsv)"])


def _qnli_pool(root: Path) -> list[TextExample]:
    base = root / "qnli" / "k-shot"
    pool = []
    for seed in (13, 21, 42, 87, 100):
        for split in ("train", "dev"):
            path = base / f"16-{seed}" / f"{split}.tsv"
            if path.is_file():
                pool += read_glue_tsv(path, {"question": "question", "sentence": "sentence"}, "label", _ids(_QNLI))
    return _unlabeled(pool)


def _boolq_read(root: Path, name: str) -> list[TextExample]:
    return read_jsonl(root / "boolq" / name, ("question", "passage"), _ids(_BOOLQ))


def _boolq_few(root: Path, seed: int) -> Splits:
    return _sampled_few_shot(_boolq_read(root, "fewglue_train32.jsonl"), seed,
                             _boolq_read(root, "fewglue_dev32.jsonl"), _boolq_read(root, "val.jsonl"),
                             "boolq/fewglue_train32.jsonl (FewGLUE's 32; BoolQ's full train is not staged)") \
        .with_note("dev: boolq/fewglue_dev32.jsonl; test: the SuperGLUE val set (boolq/val.jsonl)")


def _cb_read(root: Path, name: str) -> list[TextExample]:
    return read_jsonl(root / "cb" / name, ("premise", "hypothesis"), _ids(_CB))


def _cb_few(root: Path, seed: int) -> Splits:
    return _sampled_few_shot(_cb_read(root, "train.jsonl"), seed, None, _cb_read(root, "val.jsonl"),
                             "cb/train.jsonl").with_note(
        "test: the SuperGLUE val set (cb/val.jsonl), since cb/test.jsonl is unlabeled; train holds only 16 "
        "neutral examples, so dev has none")


def _cb_full(root: Path, seed: int) -> Splits:
    train = _cb_read(root, "train.jsonl")
    keep, dev = _held_out(train, seed)
    return Splits([train[i] for i in keep], [train[i] for i in dev], _cb_read(root, "val.jsonl"),
                  [f"full CB: 10% of cb/train.jsonl held out as dev with seed {seed}; test: cb/val.jsonl"])


def _semeval_read(root: Path, name: str) -> list[TextExample]:
    return read_semeval(root / "semeval" / name, _ids(_SEMEVAL))


def _semeval_few(root: Path, seed: int) -> Splits:
    return _sampled_few_shot(_semeval_read(root, "TRAIN_FILE.TXT"), seed, None,
                             _semeval_read(root, "TEST_FILE_FULL.TXT"), "semeval/TRAIN_FILE.TXT").with_note(
        "converted from the original release (19 directed classes, Other = 0); test: TEST_FILE_FULL.TXT")


def _semeval_full(root: Path, seed: int) -> Splits:
    train = _semeval_read(root, "TRAIN_FILE.TXT")
    keep, dev = _held_out(train, seed)
    return Splits([train[i] for i in keep], [train[i] for i in dev], _semeval_read(root, "TEST_FILE_FULL.TXT"),
                  [f"full SemEval: 10% of TRAIN_FILE.TXT held out as dev with seed {seed}; test TEST_FILE_FULL.TXT"])


def _unlabeled(examples: list[TextExample]) -> list[TextExample]:
    return [TextExample(e.fields) for e in examples]


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("sst-5", _SST5, ("terrible", "bad", "okay", "good", "great"), "{sentence} It was [MASK] .",
             ("sentence",), ("sentence",), "accuracy", _lmbff_single("sst-5", 5),
             lambda root: _unlabeled(_sst5_full(root, 0).train), _sst5_full),
    TaskSpec("trec", _TREC, ("description", "entity", "expression", "human", "location", "number"),
             "[MASK] : {sentence}", ("sentence",), ("sentence",), "accuracy", _lmbff_single("trec", 6),
             lambda root: _unlabeled(read_label_lines(root / "trec" / "full" / "TREC.train.all", 6, encoding="latin-1")),
             _trec_full),
    TaskSpec("qnli", _QNLI, ("yes", "no"), "{question} ? [MASK] , {sentence}", ("question", "sentence"),
             ("sentence", "question"), "accuracy", _qnli_few, _qnli_pool),
    TaskSpec("boolq", _BOOLQ, ("no", "yes"), "{passage} . question : {question} ? answer : [MASK] .",
             ("question", "passage"), ("passage", "question"), "accuracy", _boolq_few,
             lambda root: _unlabeled(_boolq_read(root, "fewglue_train32.jsonl")
                                     + _boolq_read(root, "fewglue_dev32.jsonl")), max_length=256),
    TaskSpec("cb", _CB, ("yes", "no", "maybe"), "{premise} ? [MASK] , {hypothesis}", ("premise", "hypothesis"),
             ("premise", "hypothesis"), "accuracy", _cb_few, lambda root: _unlabeled(_cb_read(root, "train.jsonl")),
             _cb_full, max_length=256),
    TaskSpec("semeval", _SEMEVAL, _SEMEVAL_WORDS, "{sentence} the {e1} is the [MASK] of the {e2} .",
             ("sentence",), ("sentence",), "micro_f1", _semeval_few,
             lambda root: _unlabeled(_semeval_read(root, "TRAIN_FILE.TXT")), _semeval_full, negative="Other"),
)}
"""The tasks, by name. MNLI is left out (no test set in the data folder)."""


def task_names() -> list[str]:
    """Names accepted by :func:`get_task`."""
    return list(TASKS)


def get_task(name: str) -> TaskSpec:
    """The task registered under ``name`` (any case)."""
    key = name.lower()
    if key not in TASKS:
        raise KGDataError(f"unknown task {name!r}; choose one of {', '.join(TASKS)} (MNLI is left out: its test set "
                          "is not in the data folder)", field="task")
    return TASKS[key]


def resolve_text_dir(data_dir: str | os.PathLike | None) -> Path:
    """The folder holding the task folders: ``data_dir`` or ``$DELTAKG_DATA``, or its ``text/`` subfolder."""
    root = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    expected = ", ".join(f"{f}/" for f in TASK_FOLDERS)
    if root is None or not str(root).strip():
        raise KGDataError(f"no data directory: pass data_dir (CLI: --data-dir) or set ${DATA_ENV} to the folder "
                          f"holding {expected}", field="data_dir")
    root = Path(root)
    for candidate in (root, root / "text"):
        if any((candidate / folder).is_dir() for folder in TASK_FOLDERS):
            return candidate
    raise KGDataError(f"no text tasks here: expected a folder holding {expected}", path=root, field="data_dir")


def load_splits(spec: TaskSpec, data_dir: str | os.PathLike | None, setting: str, seed: int) -> Splits:
    """The splits of ``spec`` in ``setting`` for ``seed`` (zero-shot: the unlabeled pool as train)."""
    root = resolve_text_dir(data_dir)
    if setting not in SETTINGS:
        raise KGDataError(f"expected one of {', '.join(SETTINGS)}, got {setting!r}", field="setting")
    if setting == "full":
        if spec.full is None:
            raise KGDataError(f"task {spec.name} has no full training file in the data folder (only few-shot and "
                              "zero-shot)", field="setting")
        return spec.full(root, seed)
    few = spec.few_shot(root, seed)
    if setting == "few-shot":
        return few
    pool = spec.unlabeled(root)
    return Splits(pool, few.dev, few.test, [f"zero-shot: unlabeled pool of {len(pool)} training texts (labels "
                                            f"dropped); test as few-shot: {few.notes[-1]}"])
