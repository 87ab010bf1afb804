"""A new analysis is a module plus one registration on each floor (docs/contributing.md).

The worked example of docs/contributing.md (examples/03_custom_analysis.py: the mean norm of each block's
attention output) is registered here, from outside sd_lens: its stage and JSON key on the pipeline's floor,
its section, view and sentence on the report's. It lands in ``run_analysis``'s result, the JSON, the views
and the report page with no edit to ``AnalysisResult``, ``to_dict``, ``views_for`` or ``report/build.py``.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest

import sd_lens
import sd_lens.report.results  # noqa: F401  (the built-in results' reports, registered before the snapshot)
from sd_lens.errors import InputError
from sd_lens.report import build_report, views_for
from sd_lens.report import registry as report_registry
from sd_lens.report.page import Page
from sd_lens.report.registry import ReportContext, ResultReport, register_report
from sd_lens.report.views import View, coefficient_view
from sd_lens.stages import ResultEntry, Stage, StageInputs, register_analysis
from sd_lens.stages import registry as stage_registry

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "03_custom_analysis.py"
TEXTS = ["The cat sat on the mat because it was warm.", "A dog ran in the park.", "Hi there"]
HEADING = "Attention output norms"


def _load_example():
    spec = importlib.util.spec_from_file_location("registered_analysis_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


example = _load_example()


@pytest.fixture
def registries(monkeypatch):
    """The registries as they are now, restored after the test (a registration appends to them)."""
    monkeypatch.setattr(stage_registry, "_STAGES", stage_registry.registered_stages())
    monkeypatch.setattr(stage_registry, "_RESULTS", stage_registry.registered_results())
    monkeypatch.setattr(report_registry, "_REPORTS", report_registry.registered_reports())


# --- the pipeline's floor: the stage and its JSON key ---------------------------------------------
def attn_out_stage(inputs: StageInputs):
    cfg = inputs.config
    return example.attention_out_norms(
        inputs.model, inputs.texts, batch_size=cfg.batch_size, max_tokens_per_text=cfg.max_tokens_per_text
    )


# --- the report's floor: its sentence, view and section -------------------------------------------
def attn_out_sentence(result) -> str:
    r = result.attn_out
    if r is None:
        return ""
    block = int(r.mean_norm.argmax())
    return f"The attention output is largest at block {block} ({float(r.mean_norm[block]):.3g} per token)."


def attn_out_views(model, result, text: str, max_tokens: int) -> dict[str, View]:
    r = result.attn_out
    if r is None:
        return {}
    labels = [f"block {layer}" for layer in range(len(r.mean_norm))]
    return {"attn_out": coefficient_view(labels, r.mean_norm, title="Mean attention-output norm per block")}


def attn_out_section(page: Page, ctx: ReportContext) -> None:
    if ctx.result.attn_out is None:
        return
    page.heading(HEADING)
    page.paragraph(attn_out_sentence(ctx.result))
    page.view(ctx.views["attn_out"])


def register_attn_out() -> None:
    register_analysis(
        Stage("attn_out", attn_out_stage, gives=("attn_out",)), ResultEntry("attn_out", "attention_out_norms")
    )
    register_report(ResultReport("attn_out", attn_out_section, attn_out_views, attn_out_sentence))


def test_a_registered_analysis_reaches_the_result_the_json_the_views_and_the_report(registries):
    register_attn_out()
    model = sd_lens.tiny_model("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sd_lens.run_analysis(model, TEXTS)
    assert isinstance(result.attn_out, example.AttentionOutNorms) and "attn_out" in dir(result)
    assert result.results["attn_out"] is result.attn_out and result.outliers is None  # not run: None

    data = result.to_dict()
    assert data["attention_out_norms"] == result.attn_out.to_dict()
    assert list(data)[-2:] == ["attention_out_norms", "timings_s"]  # after the built-ins' keys, before the timings
    assert "attn_out" in data["timings_s"]

    views = views_for(model, result)
    assert "attn_out" in views and list(views)[-1] == "attn_out"

    html = build_report(model, result).render()
    sentence = attn_out_sentence(result)
    assert html.count(sentence) == 2  # the summary's findings paragraph and the section
    assert html.index("Defect") < html.index(HEADING) < html.index("Attention on the trigger text")


def test_a_registered_stage_that_fails_is_recorded_and_the_others_kept(registries):
    def boom(inputs: StageInputs):
        raise RuntimeError("planted failure")

    register_analysis(Stage("boom", boom, gives=("boom",)), ResultEntry("boom", "boom"))
    register_analysis(Stage("after_boom", lambda i: len(i.texts), gives=("after_boom",), needs=("boom",)))
    register_attn_out()
    with pytest.warns(UserWarning, match="the boom stage failed"):
        result = sd_lens.run_analysis(sd_lens.tiny_model("llama"), TEXTS, max_tokens_per_text=None)
    assert result.errors == {"boom": "RuntimeError: planted failure", "after_boom": "skipped: needs boom, which failed"}
    assert result.boom is None and result.after_boom is None and result.attn_out is not None
    data = result.to_dict()
    assert "boom" not in data and data["failed_stages"] == result.errors and "attention_out_norms" in data


def test_registrations_are_checked(registries):
    with pytest.raises(InputError, match="already registered"):
        register_analysis(Stage("lever", len, gives=("lever2",)))
    with pytest.raises(InputError, match="already given"):
        register_analysis(Stage("lever2", len, gives=("lever",)))
    with pytest.raises(InputError, match="which no earlier stage gives"):
        register_analysis(Stage("x", len, gives=("x",), revises=("not_given",)))
    with pytest.raises(InputError, match="no stage gives"):
        register_analysis(Stage("x", len, gives=("x",)), ResultEntry("y", "y"))
    with pytest.raises(InputError, match="already registered"):
        register_report(ResultReport("channels"))
    with pytest.raises(AttributeError, match="no attribute 'not_a_result'"):
        _ = sd_lens.run_analysis(sd_lens.tiny_model("llama"), TEXTS[:1]).not_a_result
