"""The Python examples in README.md and docs/*.md run as written, so the docs cannot go stale.

Each file's ```python blocks run in order in one namespace, in a scratch folder that holds what the docs
assume a user has made (``runs/nations``, ``runs/nations-editor``) and, when present, ``../shared`` beside it.
A block fenced as ```text is shown, not run.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO_ROOT

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
DOC_FILES = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md")])


def _blocks(path: Path) -> list[str]:
    return _BLOCK.findall(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def scratch(nations_base, tmp_path_factory) -> Path:
    """A folder laid out as the docs assume, with the shared data beside it when this checkout has it."""
    from deltakg.editing.methods.kgeditor import KGEditor, KGEditorConfig
    from deltakg.kge.model import MaskedEntityModel

    root = tmp_path_factory.mktemp("docs")
    work = root / "work"
    (work / "runs").mkdir(parents=True)
    model_dir, _, cases, stable = nations_base
    shutil.copytree(model_dir, work / "runs" / "nations", ignore=shutil.ignore_patterns("checkpoints", "logs"))
    model = MaskedEntityModel.from_pretrained(model_dir)
    KGEditor.train_pretrained(model, cases[:8], stable[:16], str(work / "runs" / "nations-editor"),
                              progress=False, epochs=1, extra=4)
    shared = REPO_ROOT.parent / "shared"
    if shared.is_dir():
        (root / "shared").symlink_to(shared)
    return work


@pytest.mark.parametrize("path", [p for p in DOC_FILES if _blocks(p)], ids=lambda p: p.name)
def test_python_blocks_run(path: Path, scratch: Path, monkeypatch, capsys):
    source = "\n".join(_blocks(path))
    if "../shared" in source and not (scratch.parent / "shared").exists():
        pytest.skip(f"{path.name} reads ../shared, which this checkout does not have")
    monkeypatch.chdir(scratch)
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    exec(compile(source, str(path), "exec"), namespace)
    capsys.readouterr()


def test_editing_example_edits_and_rolls_back(scratch, monkeypatch, capsys):
    """The EDITING.md example's own claims: rank 1 after the edit, the model bit-identical after rollback."""
    import torch

    monkeypatch.chdir(scratch)
    source = _blocks(REPO_ROOT / "docs" / "EDITING.md")[0]
    namespace: dict = {}
    exec(compile(source, "EDITING.md", "exec"), namespace)
    printed = capsys.readouterr().out
    before, after = (int(line.split(":")[1]) for line in printed.strip().splitlines())
    assert before > 1 and after == 1, printed
    fresh = namespace["MaskedEntityModel"].from_pretrained("runs/nations").state_dict()
    edited = namespace["model"].state_dict()
    assert all(torch.equal(fresh[k], edited[k]) for k in fresh)
