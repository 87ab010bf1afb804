"""The singular-defect report: one self-contained HTML page (plus the JSON) per analysis run.

The subpackage reads as the pipeline, one job per module:

* :mod:`~sd_lens.report.adapters`: results → views and figures (:func:`views_for`, :func:`figures_for`, ...);
* :mod:`~sd_lens.report.views`: the circuitsvis views, from plain arrays;
* :mod:`~sd_lens.report.figures`: the matplotlib figures, from plain arrays;
* :mod:`~sd_lens.report.prose`: every sentence and table about defects;
* :mod:`~sd_lens.report.registry`: what the report shows of each late result (its section, views and
  sentence), registered; :mod:`~sd_lens.report.results`: the built-in results' registrations;
* :mod:`~sd_lens.report.build`: the page as an ordered list of sections (:func:`page_sections`),
  :func:`build_report` and :func:`write_report`;
* :mod:`~sd_lens.report.page`: the offline HTML page (:class:`~sd_lens.report.page.Page`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - the same names, imported on first use at run time
    from sd_lens.analyses.text_run import TextRun, run_text
    from sd_lens.report.adapters import (
        ablation_views_for,
        attention_layers_for,
        attention_view_for_text,
        coefficient_view_for,
        corpus_norm_view,
        figures_for,
        norm_view_for_text,
        patching_view_for,
        pick_text,
        trigger_text_of,
        views_for,
    )
    from sd_lens.report.build import build_report, page_sections, write_report
    from sd_lens.report.registry import ReportContext, ResultReport, Section, register_report
    from sd_lens.report.results import registered_reports

#: where each public name lives; imported on first use, so that ``sd_lens.report.prose`` (which
#: ``DefectReport.summary`` uses) does not pull in matplotlib and circuitsvis
_HOME = {
    "TextRun": "sd_lens.analyses.text_run",
    "run_text": "sd_lens.analyses.text_run",
    **dict.fromkeys(
        ["ablation_views_for", "attention_layers_for", "attention_view_for_text", "coefficient_view_for",
         "corpus_norm_view", "figures_for", "norm_view_for_text", "patching_view_for", "pick_text",
         "trigger_text_of", "views_for"],
        "sd_lens.report.adapters",
    ),
    **dict.fromkeys(["build_report", "page_sections", "write_report"], "sd_lens.report.build"),
    **dict.fromkeys(["ReportContext", "ResultReport", "Section", "register_report"], "sd_lens.report.registry"),
    "registered_reports": "sd_lens.report.results",  # through the module that registers the built-ins
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sd_lens.report' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))


__all__ = [
    "ReportContext",
    "ResultReport",
    "Section",
    "TextRun",
    "ablation_views_for",
    "attention_layers_for",
    "attention_view_for_text",
    "build_report",
    "coefficient_view_for",
    "corpus_norm_view",
    "figures_for",
    "norm_view_for_text",
    "page_sections",
    "patching_view_for",
    "pick_text",
    "register_report",
    "registered_reports",
    "run_text",
    "trigger_text_of",
    "views_for",
    "write_report",
]
