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


@pytest.fixture(scope="module")
def tiny_dir_with_norm_scales(tmp_path_factory):
    # norm scales other than 1 (random init leaves them at 1, which folding cannot be told from)
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-scaled"
    hf = AutoModelForCausalLM.from_config(tiny_hf_config("llama"), attn_implementation="eager")
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "layernorm" in name:
                p.uniform_(0.5, 2.0)
    hf.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize(("fit", "folded"), [("reference", False), ("gaussian", True)])
def test_fit_reference_loads_the_model_unfolded(tiny_dir_with_norm_scales, tmp_path, monkeypatch, fit, folded):
    # the reference convention keeps γ₂ apart from W_in: a folded model would silently equal "gaussian"
    import warnings

    seen: list[bool] = []
    real = loading.load_model
    def load(*a, **k):
        seen.append(k.get("compatibility_mode", True))
        return real(*a, **k)

    monkeypatch.setattr("sd_lens.load_model", load)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*reference convention")  # no "folded: equals gaussian"
        argv = ["analyze", "--model", str(tiny_dir_with_norm_scales), "--fit", fit, "--json", str(tmp_path / "a.json")]
        assert main(argv) == 0
    assert seen == [folded]
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["fit_method"] == fit
