"""Bad command-line input fails fast, before any model loads, with one clear line and exit code 2;
results are written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import sd_lens
from sd_lens.cli import main
from sd_lens.errors import InputError
from sd_lens.outputs import atomic_write_text, output_dir, output_file


@pytest.fixture
def no_load(monkeypatch):
    monkeypatch.setattr(sd_lens, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))


def _fails(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sd-lens: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_json_onto_a_folder(tmp_path, capsys, no_load):
    _fails(capsys, ["analyze", "--json", str(tmp_path)], "is a folder")


def test_json_below_a_file(tmp_path, capsys, no_load):
    (tmp_path / "f").write_text("x")
    _fails(capsys, ["analyze", "--json", str(tmp_path / "f" / "a.json")], "is a file, not a folder")


def test_json_into_a_missing_folder_is_created_when_written(tmp_path):
    target = output_file(tmp_path / "new" / "deeper" / "a.json")
    assert not (tmp_path / "new").exists()  # the check creates nothing (a refused run leaves no folder)
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}"


def test_report_onto_a_file(tmp_path, capsys, no_load):
    (tmp_path / "r").write_text("x")
    _fails(capsys, ["report", "--out", str(tmp_path / "r")], "is a file, not a folder")
    _fails(capsys, ["demo", "--out", str(tmp_path / "r")], "is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_folder(tmp_path, capsys, no_load):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    _fails(capsys, ["report", "--out", str(ro / "out")], "cannot create")


def test_missing_text_file(tmp_path, capsys, no_load):
    _fails(capsys, ["analyze", "--text-file", str(tmp_path / "nope.txt")], "cannot read text file")


def test_empty_text_file(tmp_path, capsys, no_load):
    (tmp_path / "e.txt").write_text("\n  \n")
    _fails(capsys, ["analyze", "--text-file", str(tmp_path / "e.txt")], "no non-empty line")


@pytest.mark.parametrize("device", ["nonsense", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"]))
def test_bad_device(capsys, no_load, device):
    _fails(capsys, ["analyze", "--device", device], "--device")


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_output_dir_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        output_dir(tmp_path / "f")


def test_verify_trigger_refuses_a_nan_direction(tiny):
    from sd_lens.analyses.causal import verify_trigger

    v0 = torch.full((tiny.cfg.d_model,), float("nan"))
    with pytest.raises(InputError, match="NaN"):
        verify_trigger(tiny, 0, v0, "hello there")
    with pytest.raises(InputError, match="non-zero"):
        verify_trigger(tiny, 0, torch.zeros(tiny.cfg.d_model), "hello there")


def test_results_are_written_through_atomic_write_text():
    """No result file is written in place (models/sources/gguf_file.py writes its manifest inside a temporary
    folder that is renamed as a whole)."""
    src = Path(sd_lens.__file__).parent
    offenders = [
        p.relative_to(src).as_posix() for p in src.rglob("*.py") if ".write_text(" in p.read_text(encoding="utf-8")
    ]
    assert offenders == ["models/sources/gguf_file.py"], offenders


def test_truncation_is_counted_and_warned(tiny):
    from sd_lens.runtime.tokens import tokenize

    tok = tokenize(tiny, ["a" * 100, "short", "b" * 40], max_tokens_per_text=20)
    assert tok.n_truncated == 2 and all(len(s) <= 20 for s in tok.sequences)
    with pytest.warns(UserWarning, match="2 of 3 texts were cut to their first 20 tokens"):
        sd_lens.probe_norms(tiny, tok)
    assert tokenize(tiny, ["short"], max_tokens_per_text=20).n_truncated == 0


def test_progress_bars_follow_the_terminal(monkeypatch):
    """Progress bars are on when stderr is a terminal, off otherwise; --progress / --no-progress decide."""
    from sd_lens.cli import build_parser, config_from_args

    parse = build_parser().parse_args
    for tty in (True, False):
        monkeypatch.setattr("sys.stderr.isatty", lambda tty=tty: tty)
        assert config_from_args(parse(["analyze"])).progress is tty
        assert config_from_args(parse(["analyze", "--progress"])).progress is True
        assert config_from_args(parse(["analyze", "--no-progress"])).progress is False
