"""A write killed by SIGTERM removes its temporary file (issue 24, item 1; in a subprocess: the other
write tests are in tests/unit/test_output_writes.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import sd_lens

SRC = Path(sd_lens.__file__).resolve().parents[1]


def test_sigterm_during_a_write_removes_the_temporary(tmp_path):
    """The process dies of SIGTERM as it would have, but leaves no ``.a.json.*.tmp`` behind."""
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(SRC)!r})
        import sd_lens.outputs as o
        def slow(fd):
            print("writing", flush=True)
            time.sleep(30)
        os.fsync = slow
        o.atomic_write_text({str(tmp_path / "a.json")!r}, "new")
    """)
    (tmp_path / "a.json").write_text("old")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the temporary exists now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"] and (tmp_path / "a.json").read_text() == "old"
