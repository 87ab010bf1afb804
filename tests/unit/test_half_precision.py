"""Half precision end to end (issue 21, item 2) on the tiny models of every family, and a late stage
that fails without throwing away the stages that finished.

Each tiny model is built in the dtype (4 blocks) with its first token's embedding scaled 200x: a
high-norm initial token, one major defect, in every family and dtype.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

import sd_lens.cli as cli
import sd_lens.stages.builtin as stages
from conftest import token_embedding
from sd_lens.models.tiny import FAMILIES, tiny_model
from sd_lens.pipeline import run_analysis
from sd_lens.runtime.precision import closure_rtol

TEXTS = [
    "The cat sat on the mat because it was warm.",
    "The dog ran in the park today and yesterday.",
    "The numbers: 1 2 3 4 5 6 7 8 9.",
    "The woman said hello to the old man by the river.",
] * 3


def planted(family: str, dtype: torch.dtype):
    model = tiny_model(family, dtype=dtype, n_layers=4, seed=1)
    with torch.no_grad():
        token_embedding(model)[model.to_tokens(TEXTS[0])[0, 0]] *= 200.0
    return model


def _finite_numbers(x) -> bool:
    if isinstance(x, float):
        return math.isfinite(x) or math.isnan(x)  # NaN stands for "not measured" in a few fields; no inf
    if isinstance(x, dict):
        return all(_finite_numbers(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite_numbers(v) for v in x)
    return True


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_option_runs_in_every_dtype(family, dtype, unchanged):
    model = planted(family, dtype)
    quantize = dtype == torch.bfloat16  # float16 matmuls are slow on a CPU: the experiment once per family
    with unchanged(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_analysis(
            model, TEXTS, channels=True, local_checks=True, interventions=True, quantize=quantize, vocab=True,
            outlier_tokens=True, rotation=True, causal_ranking=True, super_weights=True, held_out_lines=8,
        )
    assert result.errors == {}
    assert result.dtype == str(dtype).removeprefix("torch.")
    assert len(result.defects) == 1 and result.defects[0].initial_token
    # the attribution takes the hooks (their closure allows the dtype's rounding), so the lever runs
    assert result.attribution is not None and result.attribution.split == "hooks"
    assert result.lever is not None and result.life is not None
    # the local maps close within the dtype's tolerance: the local checks intervene instead of skipping every block
    check = result.local[0]
    assert any(j.closes for j in check.jacobians.values()), check.skipped
    assert check.interventions
    assert result.interventions is not None
    assert (result.quantization is not None) == quantize
    assert not quantize or result.quantization.n_texts == 8
    assert result.findings[0].vocab is not None and result.findings[0].pathway is not None
    # the weight lens: outlier tokens, the rotation (defect norms kept within the dtype's rounding), the
    # causal ranking and the super weights
    assert result.outlier_tokens is not None and result.rotation is not None
    assert all(d.survives for r in result.rotation.runs for d in r.defects)
    assert result.ranking is not None and len(result.ranking) >= 1
    assert result.ranking.held_out_texts == 8  # the perplexity experiments measure on held_out_lines lines
    assert result.super_weights is not None
    data = json.loads(result.to_json())
    assert "failed_stages" not in data and _finite_numbers(data)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("family", FAMILIES)
def test_signature_in_half_precision(family, dtype):
    from sd_lens.signature.signature import compute_signature

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sig = compute_signature(planted(family, dtype), TEXTS)
    assert sig.empirical is not None and 0.0 <= sig.self_angle_deg <= 90.0


def test_closure_rtol_follows_the_dtype():
    assert closure_rtol("float32", 1e-4) == 1e-4  # float32: the tolerance used so far
    assert closure_rtol(torch.bfloat16, 1e-4) == pytest.approx(4 * 2.0**-7)
    assert closure_rtol("float16", 1e-3) == pytest.approx(4 * 2.0**-10)
    assert closure_rtol("float16", 1e-2) == 1e-2


def _boom(*args, **kwargs):
    raise RuntimeError("planted failure")


def test_a_failed_stage_keeps_the_others(monkeypatch):
    model = planted("llama", torch.float32)
    monkeypatch.setattr(stages, "find_lever", _boom)
    with pytest.warns(UserWarning, match="the lever stage failed"):
        result = run_analysis(model, TEXTS, channels=True, local_checks=True, dtype_check=False)
    assert result.errors == {"lever": "RuntimeError: planted failure"}
    assert result.lever is None
    assert result.attribution is not None and result.life is not None and result.local is not None
    data = result.to_dict()
    assert data["failed_stages"] == {"lever": "RuntimeError: planted failure"}
    assert "lever" not in data["channels"] and "life_cycle" in data["channels"]


def test_a_stage_that_needs_a_failed_one_is_skipped(monkeypatch):
    model = planted("llama", torch.float32)
    monkeypatch.setattr(stages, "component_attribution", _boom)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_analysis(model, TEXTS, channels=True, local_checks=True, dtype_check=False)
    assert result.errors["attribution"] == "RuntimeError: planted failure"
    for name in ("lever", "life_cycle", "local_checks"):
        assert result.errors[name] == "skipped: needs attribution, which failed"
    assert result.outliers is not None and result.weights is not None and result.sinks is not None


def test_cli_writes_the_json_and_names_the_failed_stage(monkeypatch, tmp_path, capsys):
    model = planted("llama", torch.float32)
    monkeypatch.setattr(cli, "_load", lambda *a, **k: cli.Loaded(model, 0.0))
    monkeypatch.setattr(stages, "find_lever", _boom)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS), encoding="utf-8")
    out = tmp_path / "a.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = cli.main(["analyze", "--text-file", str(texts), "--channels", "--no-dtype-check", "--json", str(out)])
    assert rc == 3
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["failed_stages"] == {"lever": "RuntimeError: planted failure"}
    assert "attribution" in data["channels"]
    assert "the lever stage failed: RuntimeError: planted failure" in capsys.readouterr().err


def test_report_names_the_failed_stage(monkeypatch, tmp_path):
    from sd_lens.report import write_report

    model = planted("llama", torch.float32)
    monkeypatch.setattr(stages, "find_lever", _boom)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_analysis(model, TEXTS, channels=True, dtype_check=False)
        path = write_report(model, result, tmp_path / "report")
    html = path.read_text(encoding="utf-8")
    assert "failed stage" in html and "planted failure" in html
    data = json.loads((path.parent / "analysis.json").read_text(encoding="utf-8"))
    assert data["failed_stages"] == {"lever": "RuntimeError: planted failure"}
