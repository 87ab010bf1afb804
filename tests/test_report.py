"""The singular-defect report (``sd_lens.report``) and the tutorial page that walks the API.

Fast tests use private tiny models (one with a planted defect: its BOS embedding scaled up).
``real_model`` tests write the report of SmolLM2 (from the session's ``smollm2_analysis``) and of
Gemma-3-270M; ``browser`` tests open them in headless Chromium with networking cut off, check
that every circuitsvis view mounted and every figure is there, and keep screenshots in
``artifacts/`` (the SmolLM2 one is also copied to ``docs/assets/report-screenshot.png``).
The tutorial test executes the ```python blocks of ``docs/tutorial.md`` in order.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
from html import escape as html_escape
from pathlib import Path

import pytest
import torch

from chromium import (
    ARTIFACTS,
    DomSummary,
    blueness,
    mount_ids_of,
    png_size,
    requires_chromium,
    run_chromium,
    screenshot,
)
from conftest import assert_model_unchanged, nan_token_model
from conftest import planted_bos_model as planted_model
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

ROOT = Path(__file__).resolve().parents[1]
DOC_SCREENSHOT = ROOT / "docs" / "assets" / "report-screenshot.png"
MAX_REPORT_BYTES = 3_000_000
EVIL_TEXT = "<script>alert(1)</script> & <img src=x onerror=alert(2)>"
TEXTS = ["The cat sat on the mat.", "Hello world, this is a test.", EVIL_TEXT]
VIEW_DIV = re.compile(r'<div id="(sd-view-\d+)" class="[^"]*" data-component="(\w+)"></div>')


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def view_components(html: str) -> dict[str, str]:
    """Mount element id -> circuitsvis component, from the written page."""
    return dict(VIEW_DIV.findall(html))


def components_of(views: dict[str, View]) -> list[str]:
    """The circuitsvis component of every mount of ``views`` (a group mounts one per part)."""
    return [part.component for view in views.values() for part in view.parts]


def check_mounted(path: Path, tmp: Path, n_figures: int) -> DomSummary:
    """Open the page offline in Chromium; assert each view rendered its elements and the figures exist."""
    components = view_components(path.read_text(encoding="utf-8"))
    summary = DomSummary()
    summary.feed(run_chromium(path.as_uri(), tmp, "--dump-dom", timeout=240).stdout)
    assert set(summary.inside) == set(components), "a view's mount element is missing from the DOM"
    for vid, component in components.items():
        rendered = summary.inside[vid]
        assert "sd-view-error" not in summary.classes[vid], f"{vid} ({component}) failed to render"
        if component == "AttentionHeads":
            assert rendered.get("canvas", 0) >= 2, f"{vid} ({component}) did not mount: {rendered}"
        else:
            assert rendered.get("span", 0) >= 4, f"{vid} ({component}) did not mount: {rendered}"
    pngs = [i for i in summary.imgs if (i.get("src") or "").startswith("data:image/png;base64,")]
    assert len(pngs) == len(summary.imgs) == n_figures
    assert "data-pwned" not in summary.body_attrs
    assert not {"input", "button", "select", "textarea"} & set(summary.tags), "the report holds a form control"
    return summary


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


@requires_chromium
@pytest.mark.browser
def test_planted_report_mounts_in_chromium(planted, tmp_path):
    model, result = planted
    path = write_report(model, result, tmp_path / "out")
    summary = check_mounted(path, tmp_path / "profile", n_figures=len(figures_for(result)))
    assert "Defect D0: explodes in block 0" in summary.text


# --------------------------------------------------------------------------------------------
# real models
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_report(smollm2, smollm2_analysis, tmp_path_factory) -> Path:
    """The SmolLM2 report, written once (and the model checked unchanged by writing it)."""
    out = tmp_path_factory.mktemp("smollm2-report")
    with assert_model_unchanged(smollm2):
        return write_report(smollm2, smollm2_analysis, out)


@pytest.mark.real_model
def test_smollm2_report_content(smollm2_report, smollm2_analysis):
    html = smollm2_report.read_text(encoding="utf-8")
    size = smollm2_report.stat().st_size
    assert size < MAX_REPORT_BYTES, f"report is {size:,} bytes"
    assert "Defect D0: explodes in block 2" in html and "Defect D1: explodes in block 11" in html
    components = list(view_components(html).values())
    # 2 norm views (peak + 30 blocks each); per defect the coefficients and 3 before/after pairs;
    # attention of blocks 2, 3, 11, 12
    assert components.count("AttentionHeads") == 4
    assert components.count("ColoredTokens") == len(components) - 4 == 2 * (30 + 1) + 2 * (1 + 3 * 2)
    for block in (2, 3, 11, 12):
        assert f"Attention patterns of block {block} on the trigger text" in html
    for sentence in smollm2_analysis.sentences():
        assert html_escape(sentence) in html
    saved = json.loads((smollm2_report.parent / "analysis.json").read_text(encoding="utf-8"))
    assert saved == json.loads(smollm2_analysis.to_json())


@requires_chromium
@pytest.mark.real_model
@pytest.mark.browser
def test_smollm2_report_in_chromium(smollm2_report, smollm2_analysis, tmp_path):
    figures = len(figures_for(smollm2_analysis))
    assert figures == 7  # norm lines, 2 angle charts, FFN and decay chart per defect
    summary = check_mounted(smollm2_report, tmp_path / "profile", n_figures=figures)
    text = summary.text
    assert "Defect D0: explodes in block 2" in text and "Defect D1: explodes in block 11" in text
    assert "Removing v0 from the FFN input of block 11" in text
    # the ablation of D1 shows both runs on load: the initial token dark in the clean run, pale
    # once v0 is removed
    html = smollm2_report.read_text(encoding="utf-8")
    clean, ablated = mount_ids_of(html, "D1: ablate v\u2080 from the FFN input of block 11 (norm after the block)")
    assert blueness(summary.colours[clean][0]) > 0.9 and blueness(summary.colours[ablated][0]) < 0.2

    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(smollm2_report, ARTIFACTS / "smollm2-report.html")
    shot = ARTIFACTS / "smollm2-report.png"
    data = screenshot(smollm2_report.as_uri(), tmp_path / "profile-shot", shot, 1280, 1500, timeout=240)
    assert png_size(data) == (1280, 1500)
    assert 20_000 < len(data) < 500_000, f"screenshot is {len(data):,} bytes"
    DOC_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    if not DOC_SCREENSHOT.exists() or DOC_SCREENSHOT.read_bytes() != data:
        shutil.copy(shot, DOC_SCREENSHOT)


@requires_chromium
@pytest.mark.real_model
@pytest.mark.browser
def test_gemma3_report_renders(gemma3, tmp_path):
    result = run_analysis(gemma3, seed=0)
    with assert_model_unchanged(gemma3):
        path = write_report(gemma3, result, tmp_path / "out")
    size = path.stat().st_size
    assert size < MAX_REPORT_BYTES, f"report is {size:,} bytes"
    summary = check_mounted(path, tmp_path / "profile", n_figures=len(figures_for(result)))
    assert f"Singular defects of {result.model}" in summary.text
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / "gemma3-report.html")
    screenshot(path.as_uri(), tmp_path / "profile-shot", ARTIFACTS / "gemma3-report.png", 1280, 2000, timeout=240)


# --------------------------------------------------------------------------------------------
# the tutorial page is executed
# --------------------------------------------------------------------------------------------
def _tutorial_module():
    spec = importlib.util.spec_from_file_location("sd_lens_tutorial", ROOT / "examples" / "tutorial.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tutorial_cli_lines_parse():
    """Every ``sd-lens ...`` line of the tutorial's shell blocks is a valid command line."""
    from sd_lens.cli import build_parser

    tutorial = _tutorial_module()
    lines = tutorial.cli_lines((ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8"))
    assert lines, "the tutorial shows no sd-lens command"
    for line in lines:
        build_parser().parse_args(shlex.split(line)[1:])


@pytest.mark.real_model
def test_tutorial_runs(smollm2, smollm2_analysis, tmp_path, monkeypatch):
    """Run the tutorial's Python blocks in order, in a scratch directory.

    Two expensive calls are served from this session's fixtures, which made them with the same
    arguments: ``load_model("smollm2-135m-instruct")`` (the shared model) and
    ``run_analysis(model)`` with default settings (``smollm2_analysis``). Every other line runs as
    written. ``python examples/tutorial.py`` runs the page without either shortcut.
    """
    import sd_lens
    import sd_lens.pipeline

    real_load, real_analysis = sd_lens.load_model, sd_lens.pipeline.run_analysis

    def load_model(name=sd_lens.DEFAULT_MODEL, **kwargs):
        return smollm2 if name == "smollm2-135m-instruct" and not kwargs else real_load(name, **kwargs)

    def analysis(model, texts=None, **kwargs):
        if model is smollm2 and texts is None and kwargs in ({}, {"seed": 0}):
            return smollm2_analysis
        return real_analysis(model, texts, **kwargs)

    monkeypatch.setattr(sd_lens, "load_model", load_model)
    monkeypatch.setattr(sd_lens.pipeline, "run_analysis", analysis)
    monkeypatch.chdir(tmp_path)
    tutorial = _tutorial_module()
    with assert_model_unchanged(smollm2):
        ns = tutorial.run_tutorial(ROOT / "docs" / "tutorial.md", echo=False)
    # what the page claims, checked on what it computed
    assert [d.explosion_layer for d in ns["defects"]] == [2, 11]
    assert (tmp_path / "sd_lens_report" / "report.html").stat().st_size < MAX_REPORT_BYTES
    assert ns["check"].norm_after < 0.05 * ns["check"].norm_before


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
        result = run_analysis(model, TEXTS, channels=True, local_checks=True, interventions=True)
    assert result.sinks is not None and result.attribution is not None and result.lever is not None
    assert result.outliers is not None and result.weights is not None and result.life is not None
    data = json.loads(result.to_json())
    assert set(data["channels"]) == {
        "activation_outliers", "defect_channels", "weight_outliers", "attention_sinks", "attribution", "lever",
        "life_cycle", "local_checks", "interventions",
    }
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
    assert all(html.count(d.label + " (") >= 1 for d in result.defects)
    assert "channels" not in json.loads(run_analysis(model, TEXTS).to_json())
