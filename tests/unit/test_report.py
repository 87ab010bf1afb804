"""The singular-defect report (``sd_lens.report``) on private tiny models (one with a planted defect: its BOS
embedding scaled up), and the tutorial's CLI lines. The real reports, the browser checks and the executed
tutorial page: tests/integration/test_report_real.py.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from conftest import nan_token_model, tutorial_module
from conftest import planted_bos_model as planted_model
from report_pages import MAX_REPORT_BYTES, TEXTS, view_components
from sd_lens.errors import InputError, NonFiniteActivationError
from sd_lens.models.tiny import tiny_model
from sd_lens.pipeline import run_analysis
from sd_lens.report import (
    attention_layers_for,
    attention_view_for_text,
    figures_for,
    norm_view_for_text,
    pick_text,
    run_text,
    views_for,
    write_report,
)
from sd_lens.report.views import CircuitsView, View, ViewGroup

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def components_of(views: dict[str, View]) -> list[str]:
    """The circuitsvis component of every mount of ``views`` (a group mounts one per part)."""
    return [part.component for view in views.values() for part in view.parts]


# --------------------------------------------------------------------------------------------
# fast: tiny models
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted():
    model = planted_model()
    return model, run_analysis(model, TEXTS)


def test_report_without_defects_still_renders(tmp_path, unchanged):
    model = tiny_model("llama")
    result = run_analysis(model, TEXTS)
    assert len(result.defects) == 0
    with unchanged(model):
        path = write_report(model, result, tmp_path / "out")
    assert path == tmp_path / "out" / "report.html"
    html = path.read_text(encoding="utf-8")
    assert "no singular defect" in html
    assert "No explosion block: no attention view." in html
    assert "<script>alert" not in html and "<img src=x" not in html  # the corpus line is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # two norm views (corpus text, trigger text), each a line per block plus peak
    assert list(view_components(html).values()) == ["ColoredTokens"] * 2 * (result.n_layers + 1)
    assert html.count("<img ") == 1  # the norm-lines figure only
    assert json.loads((tmp_path / "out" / "analysis.json").read_text()) == json.loads(result.to_json())
    assert path.stat().st_size < MAX_REPORT_BYTES


def test_report_of_a_planted_defect(planted, tmp_path, unchanged):
    model, result = planted
    assert [d.explosion_layer for d in result.defects] == [0]
    with unchanged(model):
        path = write_report(model, result, tmp_path)
        views = views_for(model, result)
    figs = figures_for(result)
    html = path.read_text(encoding="utf-8")
    assert f"<title>Singular defects of {result.model}</title>" in html
    assert "Defect D0: explodes in block 0" in html
    assert "Decay blocks" not in html and "D0 does not decay within the model" in html
    assert set(views) == {
        "norm_corpus", "norm_trigger", "attention_block_0", "attention_block_1",
        "coefficient_D0", "ablation_D0", "ablation_random_D0", "patching_D0",
    }
    assert all(isinstance(v, (CircuitsView, ViewGroup)) for v in views.values())
    for key in ("ablation_D0", "ablation_random_D0", "patching_D0"):  # both runs side by side
        assert views[key].layout == "row" and views[key].components == ["ColoredTokens", "ColoredTokens"]
        assert views[key].parts[0].title == "clean"
    assert set(figs) == {"norm_lines", "defect_angles", "defect_angles_ffn", "ffn_D0"}
    assert sorted(view_components(html).values()) == sorted(components_of(views))
    assert "ColoredTokensMulti" not in components_of(views)  # it renders inputs for its colour bounds
    assert html.count("<img ") == len(figs)
    assert html.count("CircuitsVis.render(") == len(components_of(views))
    assert html.count("var CircuitsVis") == 1  # the bundle, once
    for heading in ("Summary", "Corpus", "Norms of the residual stream", "Timings", "JSON"):
        assert f"<h2>{heading}</h2>" in html
    assert "report: views and figures" in html


def test_views_for_a_text(planted, unchanged):
    model, result = planted
    with unchanged(model):
        run = run_text(model, "The cat sat.", attention_layers=[1, 3])
        nv = norm_view_for_text(model, "The cat sat.")
        av = attention_view_for_text(model, "The cat sat.", layer=2)
    n = len(run.tokens)
    assert run.norms.shape == (n, 4) and torch.isfinite(run.norms).all()
    assert sorted(run.patterns) == [1, 3] and run.patterns[1].shape[1:] == (n, n)
    assert torch.allclose(run.patterns[1].sum(-1), torch.ones(run.patterns[1].shape[:2]), atol=1e-4)
    assert run.norms[0].min() > 4 * run.norms[1:].median()  # the planted BOS stands out
    assert nv.components == ["ColoredTokens"] * (4 + 1)  # peak + one line per block
    assert [p.title for p in nv.parts] == ["peak", "block 0", "block 1", "block 2", "block 3"]
    assert all(len(p.props["tokens"]) == n for p in nv.parts)
    assert av.component == "AttentionHeads" and av.props["attentionHeadNames"][0] == "L2H0"


def test_non_finite_text_run_is_named(unchanged):
    model = nan_token_model("x")
    with unchanged(model, "abc"), pytest.raises(NonFiniteActivationError, match="blocks \\[0, 1\\]"):
        run_text(model, "x")


def test_bad_block_leaves_no_hook(planted, unchanged):
    model, _ = planted
    with unchanged(model), pytest.raises(InputError, match="block 9 does not exist"):
        run_text(model, "The cat sat.", attention_layers=[9])


def test_pick_text_and_attention_layers(planted):
    _, result = planted
    assert 0 <= pick_text(result) < len(TEXTS)
    assert attention_layers_for(result) == [0, 1]


# --------------------------------------------------------------------------------------------
# the tutorial page is executed
# --------------------------------------------------------------------------------------------
def test_tutorial_cli_lines_parse():
    """Every ``sd-lens ...`` line of the tutorial's shell blocks is a valid command line."""
    from sd_lens.cli import build_parser

    tutorial = tutorial_module()
    lines = tutorial.cli_lines((ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8"))
    assert lines, "the tutorial shows no sd-lens command"
    for line in lines:
        build_parser().parse_args(shlex.split(line)[1:])


def test_minor_groups_have_their_own_section_and_json(tmp_path):
    """A defect made minor (here by asking for a peak no state reaches) is listed apart, with its reasons."""
    import dataclasses

    from sd_lens.analyses.defects import find_defects

    model = planted_model()
    result = run_analysis(model, TEXTS)
    report = find_defects(model, result.probe, major_ratio=1e9)
    assert len(report) == 0 and report.minor
    minor_result = dataclasses.replace(result, defects=report, findings=[])
    data = minor_result.to_dict()
    assert data["defects"] == [] and data["minor_groups"][0]["minor_reasons"]
    assert not data["minor_groups"][0]["major"]
    path = write_report(model, minor_result, tmp_path / "out")
    html = path.read_text(encoding="utf-8")
    assert "Minor high-norm groups" in html and "m0" in html and "peaks at" in html
    assert "No major singular defect" in html


def test_channel_lens_in_json_and_report(tmp_path, unchanged):
    """channels=True: attention sinks, attribution and the lever are in the JSON and the report; off by default."""
    model = planted_model()
    with unchanged(model):
        result = run_analysis(model, TEXTS, channels=True, local_checks=True, interventions=True, held_out_lines=8)
    assert result.sinks is not None and result.attribution is not None and result.lever is not None
    assert result.outliers is not None and result.weights is not None and result.life is not None
    data = json.loads(result.to_json())
    assert set(data["channels"]) == {
        "activation_outliers", "defect_channels", "weight_outliers", "attention_sinks", "attribution", "lever",
        "life_cycle", "local_checks", "interventions",
        "residual_identity",
    }
    assert data["channels"]["residual_identity"]["holds"] is True
    assert data["channels"]["interventions"]["clean"]["perplexity"] > 1
    assert [d["label"] for d in data["channels"]["local_checks"]["checks"]] == [d.label for d in result.defects]
    assert [d["label"] for d in data["channels"]["life_cycle"]["defects"]] == [d.label for d in result.defects]
    assert 0.0 <= data["channels"]["attention_sinks"]["sink_rate"] <= 1.0
    for d in data["channels"]["attribution"]["defects"]:
        assert d["explosion_set"]
    html = write_report(model, result, tmp_path / "out").read_text(encoding="utf-8")
    assert "Heads and sublayers" in html and "Sink rate over texts, blocks and heads" in html
    assert ">Channels<" in html and ">Life cycle<" in html and "Gaussian fit and local Jacobian" in html
    assert "Massive activations set to zero and to their mean" in html
    assert ">Residual identity<" in html
    assert all(html.count(d.label + " (") >= 1 for d in result.defects)
    assert "channels" not in json.loads(run_analysis(model, TEXTS).to_json())
