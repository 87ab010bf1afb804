"""The `sd-lens` command line on a tiny local model directory (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sd_lens.cli import main
from sd_lens.models import loading
from sd_lens.models.tiny import char_tokenizer, tiny_hf_config


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny"
    AutoModelForCausalLM.from_config(tiny_hf_config("llama"), attn_implementation="eager").save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


def test_analyze_writes_the_json_contract(tiny_dir, tmp_path, capsys):
    out = tmp_path / "a.json"
    assert main(["analyze", "--model", str(tiny_dir), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["model"] == "tiny" and data["n_layers"] >= 1 and isinstance(data["defects"], list)
    assert data["timings_s"]["total"] >= data["timings_s"]["load_model"] > 0
    assert f"JSON written to {out}" in capsys.readouterr().out


def test_demo_loads_the_model_once(tiny_dir, tmp_path, monkeypatch, capsys):
    calls = []
    real = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr("sd_lens.load_model", loading.load_model)
    assert main(["demo", "--model", str(tiny_dir), "--text", "hello there", "--out", str(tmp_path / "r")]) == 0
    assert len(calls) == 1
    assert (tmp_path / "r" / "report.html").is_file()
    saved = json.loads((tmp_path / "r" / "analysis.json").read_text())
    assert saved["timings_s"]["load_model"] > 0  # the demo's own load, reported once
    assert "Report written to" in capsys.readouterr().out


def test_errors_are_one_line_and_exit_2(capsys):
    assert main(["analyze", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sd-lens: error: Unknown model 'no-such-model'") and "smollm2-135m-instruct" in err
