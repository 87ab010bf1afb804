"""examples/03_custom_analysis.py, the worked example of docs/contributing.md, on a tiny model of every family."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from sd_lens.runtime import act_name

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "03_custom_analysis.py"
TEXTS = ["The cat sat on the mat.", "A longer text, so that the shorter ones are padded.", "Hi"]


def _load_example():
    spec = importlib.util.spec_from_file_location("custom_analysis_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


example = _load_example()


def test_mean_norms_match_run_with_cache(tiny, unchanged):
    with unchanged(tiny):
        result = example.attention_out_norms(tiny, TEXTS, batch_size=2)  # one padded batch
    per_text = []
    for text in TEXTS:
        _, cache = tiny.run_with_cache(tiny.to_tokens(text))
        layers = range(tiny.cfg.n_layers)
        per_text.append(torch.stack([cache[act_name("attn_out", layer)][0].norm(dim=-1) for layer in layers], dim=1))
    expected = torch.cat(per_text).mean(0)
    assert result.n_tokens == sum(len(t) for t in per_text)
    torch.testing.assert_close(result.mean_norm, expected, rtol=1e-4, atol=1e-6)


def test_the_result_is_frozen_and_serialisable(tiny):
    result = example.attention_out_norms(tiny, TEXTS[:1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.n_tokens = 0  # type: ignore[misc]
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()
    assert len(result.to_dict()["mean_norm"]) == tiny.cfg.n_layers


def test_the_example_runs_as_a_script(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    printed = json.loads(capsys.readouterr().out)
    assert printed["model"] == "tiny-llama" and printed["n_tokens"] > 0 and len(printed["mean_norm"]) == 2
