"""Results are written like a careful Unix tool writes them (issue 24, item 1): regular files
atomically with the umask's mode (an existing file's mode kept), symlinks followed, ``-`` and
special files (simulated by a FIFO) written directly, read-only targets refused before the model
loads, temporaries removed on failure, SIGINT and SIGTERM, stale ones cleaned, and no folder
created by a refused run."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import sd_lens
from sd_lens.cli import main
from sd_lens.errors import InputError, OutputError
from sd_lens.outputs import STALE_AFTER_S, atomic_write_text, output_dir, output_file, writes_in_place


@pytest.fixture
def no_load(monkeypatch):
    monkeypatch.setattr(sd_lens, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))


@pytest.fixture
def umask():
    """Set the umask for one test; restored after."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _fails(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sd-lens: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1, err


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class FifoReader:
    """A FIFO at ``path`` (standing for ``/dev/stdout`` or a pipe) and a thread reading all of it."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path, self.data = path, b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with open(self.path, "rb") as f:
            self.data = f.read()

    def result(self) -> bytes:
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "nothing was written to the FIFO"
        return self.data


# --------------------------------------------------------------------------------------------
# modes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_the_umasks_mode(tmp_path, umask, mask, expected):
    umask(mask)
    path = atomic_write_text(tmp_path / "a.json", "{}\n")
    assert _mode(path) == expected and path.read_text() == "{}\n"


def test_an_existing_file_keeps_its_mode(tmp_path, umask):
    umask(0o077)
    path = tmp_path / "a.json"
    path.write_text("old")
    path.chmod(0o664)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o664
    assert _files(tmp_path) == ["a.json"]


# --------------------------------------------------------------------------------------------
# links, stdout and special files
# --------------------------------------------------------------------------------------------
def test_a_symlink_is_followed_to_its_target(tmp_path):
    real = tmp_path / "data" / "real.json"
    real.parent.mkdir()
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert output_file(link) == link
    atomic_write_text(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new" and _mode(real) == 0o640
    assert _files(real.parent) == ["real.json"] and _files(tmp_path) == ["data", "link.json"]


def test_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "sub" / "made.json")
    output_file(link)
    atomic_write_text(link, "x")
    assert link.is_symlink() and (tmp_path / "sub" / "made.json").read_text() == "x"


def test_a_hard_link_is_replaced_by_the_name_written(tmp_path):
    """Documented in sd_lens.outputs: the written name gets the new content, other links the old one."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text("old")
    os.link(a, b)
    atomic_write_text(a, "new")
    assert a.read_text() == "new" and b.read_text() == "old"


def test_a_fifo_is_written_directly_not_replaced(tmp_path):
    fifo = tmp_path / "stdout"
    reader = FifoReader(fifo)
    assert writes_in_place(fifo) and output_file(fifo) == fifo
    atomic_write_text(fifo, '{"a": 1}\n')
    assert reader.result() == b'{"a": 1}\n'
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and _files(tmp_path) == ["stdout"]


def test_a_symlink_to_a_fifo_is_written_through(tmp_path):
    """/dev/stdout is a symlink to the process's standard output: the link is followed, never replaced."""
    reader = FifoReader(tmp_path / "pipe")
    link = tmp_path / "stdout"
    link.symlink_to(tmp_path / "pipe")
    atomic_write_text(link, "through\n")
    assert reader.result() == b"through\n"
    assert link.is_symlink() and stat.S_ISFIFO(os.stat(link).st_mode)


def test_dash_is_standard_output(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert output_file("-") == Path("-")
    atomic_write_text("-", "to stdout\n")
    assert capsys.readouterr().out == "to stdout\n" and _files(tmp_path) == []


def _tiny_load(monkeypatch):
    from sd_lens.models.tiny import tiny_model

    model = tiny_model("llama")
    monkeypatch.setattr(sd_lens, "load_model", lambda *a, **k: model)


def test_analyze_json_to_a_fifo_and_to_dash(tmp_path, capsys, monkeypatch):
    """The JSON reaches the pipe whole (and only the JSON: the notes go to stderr); ``--json -`` prints it."""
    _tiny_load(monkeypatch)
    (tmp_path / "t.txt").write_text("The cat sat on the mat.\nA second line of text here.\n")
    argv = ["analyze", "--text-file", str(tmp_path / "t.txt"), "--no-dtype-check"]
    reader = FifoReader(tmp_path / "pipe")
    assert main([*argv, "--json", str(tmp_path / "pipe")]) == 0
    data = json.loads(reader.result())
    captured = capsys.readouterr()
    assert captured.out == "" and "JSON written to" in captured.err
    assert data["corpus"]["n_texts"] == 2 and stat.S_ISFIFO(os.lstat(tmp_path / "pipe").st_mode)
    assert main([*argv, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["corpus"] == data["corpus"]


# --------------------------------------------------------------------------------------------
# refusals before the model loads
# --------------------------------------------------------------------------------------------
def test_a_read_only_json_is_refused_before_the_model_loads(tmp_path, capsys, no_load):
    ro = tmp_path / "ro.json"
    ro.write_text("keep")
    ro.chmod(0o444)
    _fails(capsys, ["analyze", "--json", str(ro)], "is read-only")
    link = tmp_path / "link.json"
    link.symlink_to(ro)
    _fails(capsys, ["analyze", "--json", str(link)], "is read-only")
    assert ro.read_text() == "keep" and _mode(ro) == 0o444


def test_the_writer_itself_refuses_a_read_only_file(tmp_path):
    """Also for API callers that write without the check (``result.to_json(path)``)."""
    ro = tmp_path / "ro.json"
    ro.write_text("keep")
    ro.chmod(0o444)
    with pytest.raises(OutputError, match="read-only"):
        atomic_write_text(ro, "new")
    assert ro.read_text() == "keep" and _files(tmp_path) == ["ro.json"]


def test_a_read_only_report_html_is_refused_before_the_model_loads(tmp_path, capsys, no_load):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "report.html").write_text("mine")
    (out / "report.html").chmod(0o444)
    _fails(capsys, ["report", "--out", str(out)], "report.html")
    _fails(capsys, ["demo", "--out", str(out)], "is read-only")
    assert (out / "report.html").read_text() == "mine"


def test_a_refused_run_creates_no_folder(tmp_path, capsys, no_load):
    _fails(capsys, ["analyze", "--json", str(tmp_path / "out" / "a" / "b" / "x.json"), "--device", "nonsense"],
           "--device")
    _fails(capsys, ["report", "--out", str(tmp_path / "rep" / "deep"), "--device", "nonsense"], "--device")
    assert _files(tmp_path) == []


def test_output_dir_checks_without_creating(tmp_path):
    assert output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and _files(tmp_path) == []
    output_dir(tmp_path / "a" / "b", create=True)
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        output_file(tmp_path / "f" / "deeper" / "x.json")


# --------------------------------------------------------------------------------------------
# temporaries
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, error):
    path = tmp_path / "a.json"
    path.write_text("old")

    def fail(fd):
        raise error

    monkeypatch.setattr(os, "fsync", fail)
    expected = OutputError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(expected):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and _files(tmp_path) == ["a.json"]


def test_stale_temporaries_are_cleaned_and_live_ones_kept(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    stale_dead = tmp_path / f".a.json.{dead}.abcd1234.tmp"  # its process is gone
    old_format = tmp_path / ".a.json.k2j4h5g6.tmp"  # an older release's name, no pid: by age
    live = tmp_path / ".a.json.1.zzzz9999.tmp"  # pid 1 lives: another run still writing
    recent_old_format = tmp_path / ".a.json.qwer5678.tmp"
    other = tmp_path / ".b.json.1234567.abcd1234.tmp"  # another file's: not ours to judge
    for p in (stale_dead, old_format, live, recent_old_format, other):
        p.write_text("partial")
    long_ago = time.time() - STALE_AFTER_S - 60
    os.utime(old_format, (long_ago, long_ago))
    if os.path.exists(f"/proc/{dead}"):
        pytest.skip("the finished process's pid was reused")
    atomic_write_text(tmp_path / "a.json", "new")
    assert _files(tmp_path) == sorted([".a.json.1.zzzz9999.tmp", ".a.json.qwer5678.tmp", other.name, "a.json"])
