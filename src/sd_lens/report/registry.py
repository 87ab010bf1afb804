"""The registry of what the report shows of each late result: its section, its views and its summary sentence.

The page (:func:`~sd_lens.report.build.build_report`) lays out its own first sections (summary, corpus,
norms, defects, minor groups), then the section of every registered :class:`ResultReport` in
registration order, then its last ones (angles, attention, timings, JSON).
:func:`~sd_lens.report.adapters.views_for` adds each registration's views after its own, and the
summary's second paragraph (:func:`~sd_lens.report.results.findings_summary`, also printed by the CLI)
joins their sentences.
The built-in results are registered in :mod:`sd_lens.report.results`; a new analysis registers its
own with :func:`register_report` (its JSON key and stage are registered below, in :mod:`sd_lens.stages`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from sd_lens.errors import InputError
from sd_lens.report.page import Page
from sd_lens.report.views import View
from sd_lens.types import HookedModel

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from sd_lens.pipeline import AnalysisResult

__all__ = [
    "ReportContext",
    "ResultReport",
    "Section",
    "Views",
    "register_report",
    "registered_reports",
]


@dataclass(frozen=True)
class ReportContext:
    """What every section may use: the run, and its views and figures drawn once.

    Attributes:
        model: the model the result was computed on.
        result: from :func:`~sd_lens.pipeline.run_analysis`.
        trigger_text: the text of the causal checks (and of the trigger-text views).
        text_index: the corpus text of the norm view and chart.
        views: :func:`~sd_lens.report.adapters.views_for`, by name.
        figures: :func:`~sd_lens.report.adapters.figures_for`, by name.
        draw_s: seconds spent drawing the views and figures.
    """

    model: HookedModel
    result: AnalysisResult
    trigger_text: str
    text_index: int
    views: dict[str, View]
    figures: dict[str, Figure]
    draw_s: float


#: A section of the report: adds its headings, text, tables, views and figures to the page.
Section = Callable[[Page, ReportContext], None]
#: ``views(model, result, trigger_text, max_tokens) -> {name: view}``: a result's views on the trigger text.
Views = Callable[[HookedModel, "AnalysisResult", str, int], dict[str, View]]


@dataclass(frozen=True)
class ResultReport:
    """What the report shows of one late result (each part optional; each does nothing when its result is None).

    Attributes:
        name: the result's name (an attribute of the ``AnalysisResult``; ``"channels"`` for the channel lens).
        section: its section of the page.
        views: its interactive views, added to :func:`~sd_lens.report.adapters.views_for`'s.
        sentence: ``sentence(result) -> str``: its sentence in the summary (empty: none).
    """

    name: str
    section: Section | None = None
    views: Views | None = None
    sentence: Callable[[AnalysisResult], str] | None = None


_REPORTS: list[ResultReport] = []


def register_report(entry: ResultReport) -> ResultReport:
    """Add ``entry`` after the registered ones (its section goes after theirs in the page).

    Raises:
        InputError: an entry of that name is already registered.
    """
    if any(r.name == entry.name for r in _REPORTS):
        raise InputError(f"the report of {entry.name!r} is already registered")
    _REPORTS.append(entry)
    return entry


def registered_reports() -> list[ResultReport]:
    """The registered entries, in page order (a copy)."""
    return list(_REPORTS)

