"""Shared pytest fixtures.

At import time (before any test module imports PyKEEN or Hugging Face libraries) the environment is made
offline and hermetic: ``HF_HUB_OFFLINE=1`` and ``PYSTOW_HOME`` (where PyKEEN would download or cache data)
pointing at a temporary folder of this test session, removed when the session ends. ``auto`` precision is
pinned to fp32 (``DELTAKG_PRECISION``) and its probe cache (``DELTAKG_CACHE``) lives in a temporary folder.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
_PYSTOW_HOME = tempfile.mkdtemp(prefix="deltakg-tests-pystow-")
os.environ["PYSTOW_HOME"] = _PYSTOW_HOME
atexit.register(shutil.rmtree, _PYSTOW_HOME, ignore_errors=True)
# ``auto`` precision would pick bf16 on some CPUs and fp32 on others: seeded results must not depend on the machine
os.environ["DELTAKG_PRECISION"] = "fp32"
_CACHE_DIR = tempfile.mkdtemp(prefix="deltakg-tests-cache-")
os.environ["DELTAKG_CACHE"] = _CACHE_DIR
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "kg"
DATA_ENV = "DELTAKG_DATA"


def _data_dir() -> Path:
    configured = os.environ.get(DATA_ENV)
    return Path(configured) if configured else DEFAULT_DATA_DIR


@pytest.fixture(scope="session")
def kg_data_dir() -> Path:
    """The folder holding ``WN18RR/`` and ``FB15k237/`` (``$DELTAKG_DATA``, else ``../shared/data/kg``)."""
    path = _data_dir()
    if not path.is_dir():
        pytest.skip(
            f"KG data directory {path} is absent: set ${DATA_ENV} to a folder holding WN18RR/ and FB15k237/ "
            f"(default: <repo>/../shared/data/kg)"
        )
    return path


def _dataset_dir(root: Path, folder: str) -> Path:
    path = root / folder
    if not (path / "train.tsv").is_file():
        pytest.skip(f"{folder} data is absent: expected {path}/train.tsv")
    return path


@pytest.fixture(scope="session")
def wn18rr_dir(kg_data_dir: Path) -> Path:
    """``<data>/WN18RR`` (skips when absent)."""
    return _dataset_dir(kg_data_dir, "WN18RR")


@pytest.fixture(scope="session")
def fb15k237_dir(kg_data_dir: Path) -> Path:
    """``<data>/FB15k237`` (skips when absent)."""
    return _dataset_dir(kg_data_dir, "FB15k237")


@pytest.fixture(scope="session")
def wn18rr_kg(wn18rr_dir: Path):
    """WN18RR loaded once per session through the catalog (do not mutate)."""
    from kg_data import load_dataset

    return load_dataset("wn18rr", wn18rr_dir.parent)


@pytest.fixture(scope="session")
def fb15k237_kg(fb15k237_dir: Path):
    """FB15k-237 loaded once per session through the catalog (do not mutate)."""
    from kg_data import load_dataset

    return load_dataset("fb15k237", fb15k237_dir.parent)


# ------------------------------------------------------------------------------------------ shared models
@pytest.fixture(scope="session")
def nations_base(tmp_path_factory):
    """A small trained Nations model (tiny encoder, no texts), its edit cases (wrong tail at rank 1) and stable
    facts; built once per test session and shared: (model folder, kg, cases, stable). Do not modify its files."""
    import torch

    from deltakg.kge.model import MaskedEntityModel
    from deltakg.kge.training import TrainConfig, train_model
    from kg_data import EditCase, StableFact, load_dataset

    kg = load_dataset("nations")
    out = tmp_path_factory.mktemp("nations-base")
    train_model(kg, out, encoder="tiny", use_text=False,
                config=TrainConfig(epochs=4, batch_size=64, progress=False, patience=None, seed=1))
    model = MaskedEntityModel.from_pretrained(out)
    cases, stable = [], []
    with torch.no_grad():
        top = model.score(kg.train, "tail").argmax(dim=1)
    for i, triple in enumerate(kg.triples("train")):
        if top[i] != kg.train[i, 2]:
            cases.append(EditCase(triple, "tail", wrong=kg.entities.label(int(top[i]))))
        else:
            stable.append(StableFact(triple, "tail"))
    assert len(cases) >= 40 and len(stable) >= 40
    return out, kg, cases, stable
