"""Built-in datasets, looked up by name.

``nations``, ``kinships`` and ``umls`` come from the files PyKEEN ships inside its package (no download).
``wn18rr`` and ``fb15k237`` come from a data directory: the ``data_dir`` argument, else the environment
variable ``DELTAKG_DATA``. The directory may be the dataset folder itself or a folder holding it
(``WN18RR/``, ``FB15k237/``).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import KGDataError
from .store import KnowledgeGraph

__all__ = ["load_dataset", "dataset_names", "resolve_data_dir", "DATA_ENV", "DatasetSpec", "DATASETS"]

DATA_ENV = "DELTAKG_DATA"


@dataclass(frozen=True)
class DatasetSpec:
    """How to find one built-in dataset."""

    name: str
    load: Callable[[str | os.PathLike | None], KnowledgeGraph]
    description: str


def _readable(label: str) -> str:
    return label.replace("_", " ").strip() or label


def _pykeen_root() -> Path:
    # locate the installed package without importing it: importing pykeen costs about a second
    spec = importlib.util.find_spec("pykeen")
    if spec is None or not spec.submodule_search_locations:
        raise KGDataError("PyKEEN is not installed; it ships the nations/kinships/umls files", field="dataset")
    return Path(next(iter(spec.submodule_search_locations)))


def _pykeen_loader(module: str, name: str) -> Callable[[str | os.PathLike | None], KnowledgeGraph]:
    def load(data_dir: str | os.PathLike | None = None) -> KnowledgeGraph:
        here = _pykeen_root() / "datasets" / module
        kg = KnowledgeGraph.from_files(
            {"train": here / "train.txt", "valid": here / "valid.txt", "test": here / "test.txt"}, name=name
        )
        kg.entity_texts = {label: _readable(label) for label in kg.entities.labels}
        kg.relation_texts = {label: _readable(label) for label in kg.relations.labels}
        return kg

    return load


# file layout of the kg-bert style folders in ../shared/data/kg
_TEXT_FILES = {
    "train": "train.tsv",
    "valid": "dev.tsv",
    "test": "test.tsv",
    "entities": "entities.txt",
    "relations": "relations.txt",
    "entity_texts": "entity2text.txt",
    "relation_texts": "relation2text.txt",
}


def resolve_data_dir(data_dir: str | os.PathLike | None, folder: str) -> Path:
    """Find the folder of a file-based dataset under ``data_dir`` or ``$DELTAKG_DATA``."""
    root = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    expected = ", ".join(_TEXT_FILES.values())
    if root is None:
        raise KGDataError(
            f"no data directory: pass data_dir (CLI: --data-dir) or set ${DATA_ENV} to a folder holding "
            f"{folder}/ with {expected}",
            field="data_dir",
        )
    root = Path(root)
    candidates = [root / folder, root]
    for candidate in candidates:
        if (candidate / _TEXT_FILES["train"]).is_file():
            missing = [name for name in _TEXT_FILES.values() if not (candidate / name).is_file()]
            if missing:
                raise KGDataError(f"{folder} is missing {', '.join(missing)} (expected {expected})", path=candidate)
            return candidate
    raise KGDataError(f"no {folder} dataset here: expected {folder}/ holding {expected}", path=root, field="data_dir")


def _folder_loader(folder: str, name: str) -> Callable[[str | os.PathLike | None], KnowledgeGraph]:
    def load(data_dir: str | os.PathLike | None = None) -> KnowledgeGraph:
        base = resolve_data_dir(data_dir, folder)
        f = {key: base / value for key, value in _TEXT_FILES.items()}
        return KnowledgeGraph.from_files(
            {"train": f["train"], "valid": f["valid"], "test": f["test"]},
            entities=f["entities"],
            relations=f["relations"],
            entity_texts=f["entity_texts"],
            relation_texts=f["relation_texts"],
            name=name,
        )

    return load


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("nations", _pykeen_loader("nations", "nations"), "Nations (14 entities, 55 relations; PyKEEN)"),
        DatasetSpec("kinships", _pykeen_loader("kinships", "kinships"), "Kinships (104 entities, 25 relations; PyKEEN)"),
        DatasetSpec("umls", _pykeen_loader("umls", "umls"), "UMLS (135 entities, 46 relations; PyKEEN)"),
        DatasetSpec("wn18rr", _folder_loader("WN18RR", "wn18rr"), "WN18RR (WordNet; data directory)"),
        DatasetSpec("fb15k237", _folder_loader("FB15k237", "fb15k237"), "FB15k-237 (Freebase; data directory)"),
    )
}


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(DATASETS)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> KnowledgeGraph:
    """Load a built-in dataset by name (case-insensitive; '-' and '_' ignored)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise KGDataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}", field="dataset")
    return DATASETS[key].load(data_dir)
