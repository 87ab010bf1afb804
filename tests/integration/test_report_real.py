"""The singular-defect report (``sd_lens.report``) of the real models, in a browser, and the tutorial page
(the tiny-model tests: tests/unit/test_report.py).

``real_model`` tests write the report of SmolLM2 (from the session's ``smollm2_analysis``) and of
Gemma-3-270M; ``browser`` tests open them in headless Chromium with networking cut off, check
that every circuitsvis view mounted and every figure is there, and keep screenshots in
``artifacts/`` (the SmolLM2 one is also copied to ``docs/assets/report-screenshot.png``).
The tutorial test executes the ```python blocks of ``docs/tutorial.md`` in order.
"""
from __future__ import annotations

import json
import shutil
from html import escape as html_escape
from pathlib import Path

import pytest

import sd_lens
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
from conftest import assert_model_unchanged, tutorial_module
from conftest import planted_bos_model as planted_model
from report_pages import MAX_REPORT_BYTES, TEXTS, view_components
from sd_lens.pipeline import run_analysis
from sd_lens.report import (
    figures_for,
    write_report,
)

ROOT = Path(__file__).resolve().parents[2]


DOC_SCREENSHOT = ROOT / "docs" / "assets" / "report-screenshot.png"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
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
    for sentence in sd_lens.defect_sentences(smollm2_analysis):
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
def test_gemma3_report_renders(gemma3, gemma3_analysis, tmp_path):
    result = gemma3_analysis
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
    tutorial = tutorial_module()
    with assert_model_unchanged(smollm2):
        ns = tutorial.run_tutorial(ROOT / "docs" / "tutorial.md", echo=False)
    # what the page claims, checked on what it computed
    assert [d.explosion_layer for d in ns["defects"]] == [2, 11]
    assert (tmp_path / "sd_lens_report" / "report.html").stat().st_size < MAX_REPORT_BYTES
    assert ns["check"].norm_after < 0.05 * ns["check"].norm_before
