"""The README's shell commands run as written, in order, in a scratch folder (so the README cannot go stale).

The install line and the test command are what ``.ci/run`` executes around the suite; the demo itself runs
in tests/test_demo.py (once per session), so here its command line is parsed and shown with ``--help``.
"""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import REPO_ROOT
from deltakg.cli import main

_BASH = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def readme_commands() -> list[list[str]]:
    """Every command of the README's bash blocks (continuation lines joined, ``&&`` chains split)."""
    commands = []
    for block in _BASH.findall((REPO_ROOT / "README.md").read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                if part.strip():
                    commands.append(shlex.split(part))
    return commands


def test_readme_has_the_install_demo_and_test_commands():
    commands = readme_commands()
    assert commands[0][:2] == ["pip", "install"] and commands[1] == ["deltakg", "demo", "--fast"]
    assert ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"] in commands
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[0] == ["pip", "install", "-c", "constraints.txt", "-e", ".[dev]"]
    assert 'pip install -q -c constraints.txt -e ".[dev]"' in ci and "deltakg demo --fast" in ci
    assert "python -m pytest -q -p no:cacheprovider" in ci


@pytest.mark.slow
def test_readme_commands_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ran = 0
    for argv in readme_commands():
        if argv[0] != "deltakg":
            continue  # pip and pytest: run by .ci/run
        if argv[1] == "demo":
            argv = [*argv, "--help"]  # the demo runs in tests/test_demo.py
        try:
            code = main(argv[1:])
        except SystemExit as exit_info:
            code = exit_info.code
        captured = capsys.readouterr()
        assert code == 0, (argv, captured.err[-2000:])
        ran += 1
    assert ran >= 7
    assert (tmp_path / "runs" / "e-umls-table" / "report.json").is_file()
