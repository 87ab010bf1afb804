"""``--text-file`` is read within bounds (issue 24, item 2): a size limit with a clear error naming
``--max-text-bytes``, regular files only unless ``-`` (standard input) is asked for, streaming reads
that stop at the limit, UTF-8 with or without a byte-order mark. Every refusal comes before the
model loads."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

import sd_lens
from sd_lens.cli import main
from sd_lens.corpus import DEFAULT_MAX_TEXT_BYTES, read_text_file, read_texts
from sd_lens.errors import InputError

BOM = b"\xef\xbb\xbf"


@pytest.fixture
def no_load(monkeypatch):
    monkeypatch.setattr(sd_lens, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))


def _fails(capsys, argv: list[str], *messages: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sd-lens: error: ") and all(m in err for m in messages), err
    assert len(err.strip().splitlines()) == 1, err


def test_a_bom_is_not_text(tmp_path):
    plain, marked = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_bytes(b"The cat sat.\nA second line.\n")
    marked.write_bytes(BOM + b"The cat sat.\r\n" + BOM + b"A second line.\r\n")  # also concatenated files
    assert read_texts(marked) == read_texts(plain) == ["The cat sat.", "A second line."]


def test_not_utf8_says_where(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("first\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"not UTF-8 \(byte 9, line 2"):
        read_text_file(tmp_path / "latin1.txt")


def test_over_the_limit_is_refused_naming_the_flag(tmp_path, capsys, no_load):
    big = tmp_path / "big.txt"
    big.write_text("word " * 300 + "\n")
    _fails(capsys, ["analyze", "--text-file", str(big), "--max-text-bytes", "1k"], "--max-text-bytes", "1024")
    assert read_text_file(big, max_bytes=2000) == [("word " * 300).strip()]
    assert DEFAULT_MAX_TEXT_BYTES == 16 * 2**20


@pytest.mark.parametrize("given, expected", [("1000", 1000), ("64k", 65536), ("16M", 16 * 2**20), ("1GiB", 2**30)])
def test_max_text_bytes_units(given, expected):
    from sd_lens.cli import build_parser

    assert build_parser().parse_args(["analyze", "--max-text-bytes", given]).max_text_bytes == expected


def test_a_growing_stream_stops_at_the_limit():
    """The read is streamed: an endless input (``/dev/zero``) costs the limit, not all memory."""
    from sd_lens.corpus import _read_bounded

    class Endless(io.RawIOBase):
        served = 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            assert n is not None and 0 < n <= 2**20 + 1, n  # bounded chunks, never "read all"
            self.served += n
            return b"a" * n

    stream = Endless()
    with pytest.raises(InputError, match="more than 5000000 bytes"):
        _read_bounded(stream, 5_000_000, "endless")  # type: ignore[arg-type]
    assert stream.served == 5_000_001


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_is_refused_at_once(capsys, no_load, device):
    if not os.path.exists(device):
        pytest.skip(f"no {device} here")
    _fails(capsys, ["analyze", "--text-file", device], "character device", "--text-file - <")


def test_a_fifo_without_a_writer_is_refused_not_waited_on(tmp_path, capsys, no_load):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    _fails(capsys, ["analyze", "--text-file", str(fifo)], "pipe (FIFO)", "--text-file -")
    assert time.perf_counter() - t0 < 5


def test_a_folder_is_refused(tmp_path, capsys, no_load):
    _fails(capsys, ["analyze", "--text-file", str(tmp_path)], "is a folder")


def test_dash_reads_standard_input_within_the_limit(monkeypatch):
    class Stdin(io.TextIOWrapper):
        def isatty(self) -> bool:
            return False

    monkeypatch.setattr("sys.stdin", Stdin(io.BytesIO(BOM + b"one text\n\ntwo texts\n")))
    assert read_text_file(Path("-")) == ["one text", "two texts"]
    monkeypatch.setattr("sys.stdin", Stdin(io.BytesIO(b"x" * 5000)))
    with pytest.raises(InputError, match="standard input.*more than 100 bytes"):
        read_text_file(Path("-"), max_bytes=100)


def test_dash_reads_a_pipe_given_explicitly(tmp_path, monkeypatch):
    """A FIFO as standard input (``--text-file - < fifo``) is read: the pipe was asked for."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "wb") as f:
            f.write(b"from a pipe\nsecond line\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with open(fifo, "rb") as raw:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(raw))
        assert read_text_file(Path("-")) == ["from a pipe", "second line"]
    writer.join(timeout=10)


def test_signature_and_quantize_use_the_same_bounds(tmp_path, capsys, no_load):
    big = tmp_path / "big.txt"
    big.write_text("word " * 300 + "\n")
    _fails(capsys, ["signature", "--text-file", str(big), "--max-text-bytes", "1k"], "--max-text-bytes")
    _fails(capsys, ["quantize", "--json", str(tmp_path / "q.json"), "--text-file", "/dev/zero"], "character device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt"]
