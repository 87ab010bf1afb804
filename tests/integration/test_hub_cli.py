"""`sd-lens analyze --model org/name` in a subprocess: a cached hub id analyses, an uncached one offline is
one clear line and exit code 2 (the in-process hub tests: tests/unit/test_hub.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from hub_cache import REPO, SRC


def test_cli_accepts_a_hub_id(hf_home, tmp_path):
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "sd_lens.cli", "analyze", "--model", REPO, "--json", str(out),
         "--max-tokens-per-text", "16"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text())["model"] == REPO
    missing = subprocess.run(
        [sys.executable, "-m", "sd_lens.cli", "analyze", "--model", "org/not-cached", "--json", str(tmp_path / "x.json")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert missing.returncode == 2
    assert "not in the local Hugging Face hub cache" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()
