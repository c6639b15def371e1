"""Bad input and data safety: one clear message and exit 2, never a traceback, nothing silently lost.

The table of issue 19, a case per test, then a hypothesis fuzz test of every command with generated
argument lists and damaged input files.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltakg.cli import build_parser, main
from deltakg.editing.methods.kgeditor import KGEditor, KGEditorConfig
from deltakg.editing.target import KGETarget
from deltakg.kge.model import MaskedEntityModel
from deltakg.kge.training import TrainConfig, train_model
from kg_data import EditSet, KGDataError, load_dataset


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's usage errors
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    return dst


# ------------------------------------------------------------------------------------------ the table
def test_truncated_weights_name_the_file(nations_base, tmp_path, capsys):
    model = _copy_model(nations_base[0], tmp_path / "m")
    os.truncate(model / "model.safetensors", 100)
    code, _, err = _run(["evaluate", "--model", str(model), "--dataset", "nations", "--no-progress"], capsys)
    assert code == 2
    assert "model.safetensors" in err and "truncated or corrupt" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def _nations_run(out: Path, **config) -> None:
    train_model(load_dataset("nations"), out, encoder="tiny", use_text=False,
                config=TrainConfig(epochs=1, batch_size=256, progress=False, patience=None, **config))


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    """A finished 1-epoch Nations run folder (with checkpoints) to copy and damage."""
    out = tmp_path_factory.mktemp("run") / "run"
    _nations_run(out)
    return out


def test_train_refuses_an_existing_model_folder(one_epoch_run, tmp_path, capsys):
    out = shutil.copytree(one_epoch_run, tmp_path / "run")
    metrics_before = (out / "train_metrics.json").read_bytes()
    code, _, err = _run(["train", "--dataset", "nations", "--encoder", "tiny", "--no-text", "--epochs", "1",
                         "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "--overwrite" in err and "--resume" in err, err
    assert (out / "train_metrics.json").read_bytes() == metrics_before  # nothing overwritten


def test_train_resume_refuses_a_folder_of_another_dataset(one_epoch_run, tmp_path, capsys):
    out = shutil.copytree(one_epoch_run, tmp_path / "run")
    code, _, err = _run(["train", "--dataset", "kinships", "--encoder", "tiny", "--no-text", "--epochs", "2",
                         "--resume", "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "run.json" in err and "dataset" in err, err


def test_train_resume_refuses_a_checkpoint_of_another_model(one_epoch_run, tmp_path, capsys):
    # an older folder without run.json: the checkpoint's shapes are checked instead of a size-mismatch traceback
    out = shutil.copytree(one_epoch_run, tmp_path / "run")
    (out / "run.json").unlink()
    code, _, err = _run(["train", "--dataset", "kinships", "--encoder", "tiny", "--no-text", "--epochs", "2",
                         "--resume", "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "last.ckpt" in err and "does not fit" in err and "Traceback" not in err, err


def test_train_resume_names_a_corrupt_checkpoint(one_epoch_run, tmp_path, capsys):
    out = shutil.copytree(one_epoch_run, tmp_path / "run")
    os.truncate(out / "checkpoints" / "last.ckpt", 200)
    code, _, err = _run(["train", "--dataset", "nations", "--encoder", "tiny", "--no-text", "--epochs", "2",
                         "--resume", "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "last.ckpt" in err and "Traceback" not in err, err


def test_train_refuses_an_unrelated_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}\n')
    (out / "notes.txt").write_text("keep me\n")
    code, _, err = _run(["train", "--dataset", "nations", "--encoder", "tiny", "--out", str(out)], capsys)
    assert code == 2 and "not empty" in err, err
    assert (out / "config.json").read_text() == '{"mine": true}\n'
    code, _, err = _run(["train", "--dataset", "nations", "--encoder", "tiny", "--resume", "--out", str(out)], capsys)
    assert code == 2 and "no checkpoints/last.ckpt" in err, err
    assert (out / "config.json").read_text() == '{"mine": true}\n'


def test_overwrite_starts_afresh_and_keeps_foreign_files(one_epoch_run, tmp_path):
    out = shutil.copytree(one_epoch_run, tmp_path / "run")
    (out / "notes.txt").write_text("keep me\n")
    _nations_run(out, overwrite=True, seed=5)
    assert (out / "notes.txt").read_text() == "keep me\n"
    assert json.loads((out / "train_metrics.json").read_text())["config"]["seed"] == 5
    assert len(list((out / "logs").iterdir())) == 1  # the old run's logs went


def test_resume_continues_the_same_run(one_epoch_run, tmp_path):
    out = shutil.copytree(one_epoch_run, tmp_path / "run")
    train_model(load_dataset("nations"), out, encoder="tiny", use_text=False,
                config=TrainConfig(epochs=2, batch_size=256, progress=False, patience=None, resume=True))
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["resumed"] is True and metrics["global_step"] == 2 * 7  # 1592 triples / 256 = 7 steps


@pytest.mark.parametrize("argv,needle", [
    (["--epochs", "-1"], "--epochs: expected an integer > 0"),
    (["--epochs", "0"], "--epochs: expected an integer > 0"),
    (["--batch-size", "x"], "--batch-size: expected an integer > 0"),
    (["--label-smoothing", "-0.5"], "--label-smoothing: expected a number in [0, 1)"),
    (["--max-time", "inf"], "--max-time: expected a number > 0"),
    (["--overwrite", "--resume"], "not allowed with argument"),
])
def test_numeric_options_are_validated_at_parse_time(tmp_path, capsys, argv, needle):
    code, _, err = _run(["train", "--dataset", "nations", "--encoder", "tiny", *argv, "--out", str(tmp_path / "o")],
                        capsys)
    assert code == 2 and needle in err, err
    assert not (tmp_path / "o").exists()


def test_a_killed_save_leaves_the_previous_model_loadable(nations_base, tmp_path, monkeypatch):
    model_dir = _copy_model(nations_base[0], tmp_path / "m")
    model = MaskedEntityModel.from_pretrained(model_dir)
    before = (model_dir / "model.safetensors").read_bytes()

    import safetensors.torch

    def dies_half_way(state, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt  # as a kill in the middle of the write would

    monkeypatch.setattr(safetensors.torch, "save_file", dies_half_way)
    with torch_no_grad():
        model.entity_bias.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(model_dir)
    assert (model_dir / "model.safetensors").read_bytes() == before
    assert not [p for p in model_dir.iterdir() if p.name.endswith(".tmp")]
    MaskedEntityModel.from_pretrained(model_dir)


def torch_no_grad():
    import torch

    return torch.no_grad()


def test_saved_files_share_one_permission_mode(nations_base, tmp_path):
    model = MaskedEntityModel.from_pretrained(nations_base[0])
    out = model.save_pretrained(tmp_path / "saved")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o666 & ~_umask(), modes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture(scope="module")
def untrained_editor(nations_base, tmp_path_factory) -> Path:
    """A KGEditor prepared on the Nations model and saved untrained (a valid folder to damage)."""
    model = MaskedEntityModel.from_pretrained(nations_base[0])
    editor = KGEditor(KGEditorConfig(whiten=False))
    editor.prepare(KGETarget(model))
    return editor.save_pretrained(tmp_path_factory.mktemp("editor") / "editor")


@pytest.fixture(scope="module")
def small_editset(nations_base, tmp_path_factory) -> Path:
    _, _, cases, stable = nations_base
    return EditSet(cases={"train": cases[:4], "test": cases[4:6]}, stable=stable[:6]).save(
        tmp_path_factory.mktemp("es") / "es")


@pytest.mark.parametrize("damage", ["truncate-hypernetwork", "garbage-json", "foreign-method", "missing-slots"])
def test_damaged_editor_folder_names_the_file(nations_base, untrained_editor, small_editset, tmp_path, capsys,
                                              damage):
    editor = shutil.copytree(untrained_editor, tmp_path / "editor")
    expected = {"truncate-hypernetwork": "hypernetwork.safetensors", "garbage-json": "kgeditor.json",
                "foreign-method": "kgeditor.json", "missing-slots": "slots.safetensors"}[damage]
    if damage == "truncate-hypernetwork":
        os.truncate(editor / "hypernetwork.safetensors", 50)
    elif damage == "garbage-json":
        (editor / "kgeditor.json").write_text("{not json")
    elif damage == "foreign-method":
        meta = json.loads((editor / "kgeditor.json").read_text())
        (editor / "kgeditor.json").write_text(json.dumps({**meta, "method": "rome"}))
    else:
        (editor / "slots.safetensors").unlink()
    code, _, err = _run(["edit", "--model", str(nations_base[0]), "--editset", str(small_editset), "--method",
                         "kgeditor", "--editor", str(editor)], capsys)
    assert code == 2 and expected in err and "Traceback" not in err, err


def test_damaged_editset_line_names_file_and_line(nations_base, small_editset, tmp_path, capsys):
    editset = shutil.copytree(small_editset, tmp_path / "es")
    lines = (editset / "test.jsonl").read_text().splitlines()
    (editset / "test.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2] + "\n")
    code, _, err = _run(["edit", "--model", str(nations_base[0]), "--editset", str(editset), "--method", "ft"], capsys)
    assert code == 2 and "test.jsonl:2" in err, err


def test_model_folder_of_mismatched_files(nations_base, tmp_path, capsys):
    model = _copy_model(nations_base[0], tmp_path / "m")
    labels = (model / "entities.txt").read_text().splitlines()
    (model / "entities.txt").write_text("\n".join(labels[:-1]) + "\n")
    code, _, err = _run(["evaluate", "--model", str(model), "--dataset", "nations", "--no-progress"], capsys)
    assert code == 2 and "entities.txt" in err, err


def test_an_internal_error_is_one_line_and_exit_1(monkeypatch, capsys):
    import deltakg.cli.data as data_cli

    def broken(args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(data_cli, "_stats", broken)
    code, _, err = _run(["data", "stats", "--dataset", "umls"], capsys)
    assert code == 1 and "internal error: ZeroDivisionError: boom" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ help
def _subcommand_parsers(parser=None, prefix=()):
    import argparse

    parser = parser or build_parser()
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommand_parsers(sub, prefix + (name,))


def test_every_option_has_help_and_shows_its_default():
    import argparse

    for path, parser in _subcommand_parsers():
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            text = action.help or ""
            assert text, f"deltakg {' '.join(path)} {action.option_strings[0]} has no help"
            shown = parser.formatter_class(prog="x")._get_help_string(action)
            if action.default not in (None, False, argparse.SUPPRESS) and not action.required:
                assert "default" in shown, f"deltakg {' '.join(path)} {action.option_strings[0]}: {shown!r}"


# ------------------------------------------------------------------------------------------ fuzz
_COMMANDS = [["data", "stats"], ["data", "check"], ["train"], ["evaluate"], ["editset", "build"],
             ["train-editor"], ["edit"]]
_OPTIONS = ["--dataset", "--data-dir", "--out", "--model", "--editset", "--editor", "--method", "--epochs",
            "--batch-size", "--lr", "--encoder", "--layers", "--split", "--kind", "--size", "--candidates",
            "--max-time", "--limit", "--json", "--no-text", "--overwrite", "--resume", "--seed", "--patience",
            "--label-smoothing", "--precision", "--readout", "--max-answers", "--ft-steps", "--sequential",
            "--devices", "--dropout", "--stable-size", "--extra", "--rounds"]
_VALUES = ["nations", "umls", "NOPE", "-1", "0", "1", "2.5", "nan", "inf", "1e309", "", " ", "x,y", "0.6,0.2",
           "tiny", "ft", "kgeditor", "rome", "edit", "add", "test", "auto", "\x00", "é", "--", "-"]


class _Stop(BaseException):
    """Raised by the stubbed heavy entry points: the command got as far as real work."""


@pytest.fixture(scope="module")
def damaged_inputs(nations_base, untrained_editor, small_editset, tmp_path_factory) -> list[str]:
    """Paths a fuzzed command may be pointed at: good ones, damaged copies, and things that are not folders."""
    root = tmp_path_factory.mktemp("fuzz")
    paths = [str(nations_base[0]), str(untrained_editor), str(small_editset), str(root / "absent")]
    for name, damage in (("m-trunc", lambda d: os.truncate(d / "model.safetensors", 64)),
                         ("m-config", lambda d: (d / "config.json").write_text("[1, 2]")),
                         ("m-notok", lambda d: shutil.rmtree(d / "tokenizer")),
                         ("m-type", lambda d: (d / "config.json").write_text(
                             json.dumps({**json.loads((d / "config.json").read_text()), "num_entities": "x"})))):
        damage(_copy_model(nations_base[0], root / name))
        paths.append(str(root / name))
    es = shutil.copytree(small_editset, root / "es-bad")
    (es / "stable.jsonl").write_bytes(b"\xff\xfe garbage\n")
    paths.append(str(es))
    (root / "file.txt").write_text("a\tb\n")
    paths.append(str(root / "file.txt"))
    return paths


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_every_command_never_tracebacks(data, damaged_inputs, monkeypatch, capsys, tmp_path_factory):
    import deltakg.editing
    import deltakg.editing.methods.kgeditor as kgeditor_module
    import deltakg.editsets
    import deltakg.kge.training

    def stop(*args, **kwargs):
        raise _Stop

    # the heavy steps (training, building, editing) are stubbed: the fuzz checks parsing, validation and loading
    monkeypatch.setattr(deltakg.kge.training, "train_model", stop)
    monkeypatch.setattr(deltakg.editsets, "build_editset", stop)
    monkeypatch.setattr(deltakg.editing, "run_edits", stop)
    monkeypatch.setattr(kgeditor_module.KGEditor, "train_pretrained", classmethod(stop))
    command = data.draw(st.sampled_from(_COMMANDS))
    values = st.one_of(st.sampled_from(_VALUES), st.sampled_from(damaged_inputs), st.text(max_size=8))
    argv = list(command)
    for _ in range(data.draw(st.integers(0, 8))):
        argv.append(data.draw(st.sampled_from(_OPTIONS)))
        if data.draw(st.booleans()):
            argv.append(data.draw(values))
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    except _Stop:
        code = 0
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
