"""The report's page: an ordered list of sections, each a function that adds its part to the page.

:func:`write_report` turns an :class:`~sd_lens.pipeline.AnalysisResult` into
``out_dir/report.html`` (offline: circuitsvis's JavaScript embedded once, figures as inline PNGs,
a Content-Security-Policy that forbids any request) and ``out_dir/analysis.json``.

How the page is made (:func:`build_report`):

1. :func:`~sd_lens.report.adapters.views_for` and :func:`~sd_lens.report.adapters.figures_for`
   draw every view and figure once (one hooked forward of the trigger text);
2. they go into a :class:`ReportContext` with the model and the result;
3. each section of :func:`page_sections`, in order, adds headings, prose
   (:mod:`~sd_lens.report.prose`), tables, views and figures to the
   :class:`~sd_lens.report.page.Page`: the core's :data:`FIRST_SECTIONS`, each registered late
   result's section (:mod:`~sd_lens.report.registry`, the built-ins in :mod:`~sd_lens.report.results`),
   then :data:`LAST_SECTIONS`.

A late result's section is registered (``register_report``), not written here; a section of the core
is ``def my_section(page: Page, ctx: ReportContext) -> None`` here, in the list where it belongs (or
pass ``sections=[...]`` to :func:`build_report` for one report). Sentences about defects belong in
:mod:`~sd_lens.report.prose`, new views and figures of a result in
:mod:`~sd_lens.report.adapters`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from sd_lens.outputs import output_dir
from sd_lens.report import prose
from sd_lens.report.adapters import defect_label, figures_for, pick_text, trigger_text_of, views_for
from sd_lens.report.page import Page
from sd_lens.report.registry import ReportContext, Section, registered_reports
from sd_lens.report.results import findings_summary
from sd_lens.types import HookedModel

if TYPE_CHECKING:  # pragma: no cover
    from sd_lens.pipeline import AnalysisResult

__all__ = [
    "FIRST_SECTIONS",
    "LAST_SECTIONS",
    "ReportContext",
    "Section",
    "build_report",
    "page_sections",
    "write_report",
]

#: How many lines of the corpus the report quotes.
CORPUS_LINES_SHOWN = 5
#: Longest corpus line quoted in full (longer ones are cut with an ellipsis).
CORPUS_LINE_CHARS = 160
#: Characters of the JSON shown in the page (the file beside it is complete).
JSON_CHARS_SHOWN = 20_000
#: the files :func:`write_report` writes into its folder
REPORT_FILES = ("report.html", "analysis.json")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# --------------------------------------------------------------------------------------------
# the sections, in page order
# --------------------------------------------------------------------------------------------
def summary_section(page: Page, ctx: ReportContext) -> None:
    """The summary paragraph and, when there are defects, one overview row per defect."""
    page.heading("Summary").paragraph(prose.report_summary(ctx.result))
    if len(ctx.result.defects):
        header, rows = prose.overview_table(ctx.result)
        page.table(rows, header=header)
    extra = findings_summary(ctx.result)
    if extra:
        page.paragraph(extra)


def minor_section(page: Page, ctx: ReportContext) -> None:
    """The minor high-norm groups, one table row each with why it is not a major defect (nothing if none)."""
    if not ctx.result.defects.minor:
        return
    report = ctx.result.defects
    page.heading("Minor high-norm groups")
    page.paragraph(
        f"States above {report.threshold:g}x their block's median that do not form a major defect: a major defect "
        f"peaks at {report.major_ratio:g}x the median or more, is high-norm in two blocks or more, has more than one "
        "carrier occurrence (or is carried by the initial token, the same state in every text) and its states lie "
        "within the split angle of its direction. These groups are not analysed further."
    )
    header, rows = prose.minor_table(ctx.result)
    page.table(rows, header=header)


def corpus_section(page: Page, ctx: ReportContext) -> None:
    """Size of the corpus (tokens per text, truncations), why it may not carry the findings, and its first lines."""
    result = ctx.result
    page.heading("Corpus")
    summary = getattr(result, "corpus", None)
    if summary is not None:
        page.paragraph(summary.describe() + ".")
        for warning in summary.warnings:
            page.paragraph(f"Caution: {warning}.")
        page.paragraph("The first lines:")
    else:
        lengths = [len(s) for s in result.probe.sequences]
        page.paragraph(
            f"{len(result.texts)} text(s), {result.probe.n_tokens:,} tokens in all (BOS included; "
            f"{min(lengths)}\u2013{max(lengths)} tokens per text). The first lines:"
        )
    page.bullets(_short(t, CORPUS_LINE_CHARS) for t in result.texts[:CORPUS_LINES_SHOWN])


def norms_section(page: Page, ctx: ReportContext) -> None:
    """The norm view and chart of one corpus text, then the norm view of the trigger text."""
    page.heading("Norms of the residual stream")
    page.paragraph(
        f"Corpus text {ctx.text_index} is the one with the most non-initial high-norm tokens. Each token is "
        "coloured by its norm after each block (one line per block), relative to the block's median over that "
        "text; the first line, peak, is each token's largest value over the blocks."
    )
    page.view(ctx.views["norm_corpus"])
    page.figure(ctx.figures["norm_lines"], "Norm of each token of the same text after each block (log scale).")
    page.paragraph(f"The trigger text of the causal checks: {ctx.trigger_text!r}.")
    page.view(ctx.views["norm_trigger"])


def defects_section(page: Page, ctx: ReportContext) -> None:
    """One subsection per defect (or the sentence saying there is none)."""
    result = ctx.result
    sentences = prose.defect_sentences(result)
    if not len(result.defects):
        page.heading("Defects")
        page.bullets(sentences)
    for k in range(len(result.defects)):
        _defect(page, ctx, k, sentences[k] if k < len(sentences) else "")


def _defect(page: Page, ctx: ReportContext, k: int, sentence: str) -> None:
    """Defect ``k``: its sentences and table, its decay check, its explosion subspace and causal check."""
    result, views, figs = ctx.result, ctx.views, ctx.figures
    d, f = result.defects[k], result.findings[k]
    label = defect_label(result, k)
    page.heading(f"Defect {label}: explodes in block {d.explosion_layer}")
    page.paragraph(sentence)
    note = prose.carrier_note(result, k)
    if note:
        page.paragraph(note)
    header, rows = prose.defect_table(result, k)
    page.table(rows, header=header)
    if f.decay_checks:
        page.heading("Decay blocks: eigen-check of R = L \u2212 I", level=3)
        header, rows = prose.decay_table(result, k)
        page.table(rows, header=header)
        page.figure(figs[f"decay_{label}"], f"{label}: decay blocks; a negative value means the block cancels the state.")
    else:
        page.paragraph(prose.no_decay_note(result, k))
    page.heading("Explosion subspace and causal check", level=3)
    page.figure(
        figs[f"ffn_{label}"],
        f"{label}: norm of the real FFN's output at block {d.explosion_layer} for a normalised input along "
        "each right singular vector of its linearisation F; v\u2080 should tower over the rest.",
    )
    page.view(views[f"coefficient_{label}"])
    page.view(views[f"ablation_{label}"])
    page.view(views[f"ablation_random_{label}"])
    page.view(views[f"patching_{label}"])


def angles_section(page: Page, ctx: ReportContext) -> None:
    """Where each block's leading singular direction points, against each defect (when there are any)."""
    figs = ctx.figures
    if "defect_angles" not in figs:
        return
    page.heading("Where each block's leading singular direction points")
    page.figure(
        figs["defect_angles"],
        "Angle between the leading left singular vector u\u2080 of each block's linear approximation L "
        "and each defect direction; dotted lines mark the explosion blocks.",
    )
    page.figure(figs["defect_angles_ffn"], "The same for the FFN's linearisation F alone.")


def attention_section(page: Page, ctx: ReportContext) -> None:
    """The attention heads of each explosion block and the block after it, on the trigger text."""
    page.heading("Attention on the trigger text")
    att = [key for key in ctx.views if key.startswith("attention_block_")]
    if not att:
        page.paragraph("No explosion block: no attention view.")
        return
    page.paragraph(
        "The heads of each explosion block and of the block after it. A dark first column in every head is "
        "an attention sink on the high-norm initial token."
    )
    for key in att:
        page.view(ctx.views[key])


def timings_section(page: Page, ctx: ReportContext) -> None:
    """Seconds per stage of the analysis, and of drawing the report."""
    page.heading("Timings")
    rows: list[list[Any]] = [[name, float(sec)] for name, sec in dict(ctx.result.timings_s).items()]
    rows.append(["report: views and figures", ctx.draw_s])
    page.table(rows, header=["stage", "seconds"])
    errors = dict(getattr(ctx.result, "errors", {}) or {})
    if errors:
        page.paragraph(
            "These stages failed: their results are missing from this page; every other stage's are here."
        )
        page.table([[name, error] for name, error in errors.items()], header=["failed stage", "error"])


def json_section(page: Page, ctx: ReportContext) -> None:
    """The start of the run's JSON (the file next to the page is complete)."""
    page.heading("JSON")
    page.paragraph("The complete JSON of this run is analysis.json, next to this page.")
    page.json(ctx.result.to_dict(), max_chars=JSON_CHARS_SHOWN)


#: The report's first sections, before the late results' (the core: summary, corpus, norms, defects).
FIRST_SECTIONS: list[Section] = [summary_section, corpus_section, norms_section, defects_section, minor_section]
#: The report's last sections, after the late results'.
LAST_SECTIONS: list[Section] = [angles_section, attention_section, timings_section, json_section]


def page_sections() -> list[Section]:
    """The sections of the report in page order: :data:`FIRST_SECTIONS`, the section of each registered late
    result (:func:`~sd_lens.report.registry.registered_reports`, in registration order), :data:`LAST_SECTIONS`."""
    registered = [r.section for r in registered_reports() if r.section is not None]
    return [*FIRST_SECTIONS, *registered, *LAST_SECTIONS]


# --------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------
def build_report(
    model: HookedModel,
    result: AnalysisResult,
    *,
    trigger_text: str | None = None,
    text_index: int | None = None,
    attention_layers: Sequence[int] | None = None,
    sections: Sequence[Section] | None = None,
) -> Page:
    """The report as a :class:`~sd_lens.report.page.Page` (not yet written; see :func:`write_report`).

    Args:
        model: the model the result was computed on (runs one hooked forward of the trigger text).
        result: from :func:`~sd_lens.pipeline.run_analysis`.
        trigger_text: the text of the causal checks (default :func:`~sd_lens.report.adapters.trigger_text_of`).
        text_index: corpus text shown in the norm view (default :func:`~sd_lens.report.adapters.pick_text`).
        attention_layers: blocks of the attention views (default
            :func:`~sd_lens.report.adapters.attention_layers_for`).
        sections: the sections to lay out, in order (default :func:`page_sections`).
    """
    t0 = time.perf_counter()
    text = trigger_text or trigger_text_of(result)
    views = views_for(model, result, trigger_text=text, text_index=text_index, attention_layers=attention_layers)
    figs = figures_for(result, text_index=text_index)
    ctx = ReportContext(
        model=model,
        result=result,
        trigger_text=text,
        text_index=pick_text(result) if text_index is None else int(text_index),
        views=views,
        figures=figs,
        draw_s=time.perf_counter() - t0,
    )
    page = Page(
        f"Singular defects of {result.model}",
        subtitle=f"sd_lens report \u00b7 {result.architecture}, {result.n_layers} blocks, d_model {result.d_model} "
        f"\u00b7 FFN fit: {result.fit_method} \u00b7 seed {result.seed}",
    )
    for section in page_sections() if sections is None else sections:
        section(page, ctx)
    return page


def write_report(
    model: HookedModel,
    result: AnalysisResult,
    out_dir: str | Path,
    *,
    trigger_text: str | None = None,
    text_index: int | None = None,
    attention_layers: Sequence[int] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` and ``out_dir/analysis.json`` (``result.to_json``).

    The page opens offline (see :mod:`sd_lens.report.page`); all text in it is escaped.

    Args:
        model: the model the result was computed on (the trigger text is run once, with temporary
            hooks; nothing stays attached, the weights are not touched).
        result: from :func:`~sd_lens.pipeline.run_analysis`.
        out_dir: directory to write into (created when missing; existing files are replaced
            atomically, keeping their mode; a read-only one is refused before anything runs).
        trigger_text: the text of the causal checks (default :func:`~sd_lens.report.adapters.trigger_text_of`).
        text_index: corpus text shown in the norm view (default :func:`~sd_lens.report.adapters.pick_text`).
        attention_layers: blocks of the attention views (default
            :func:`~sd_lens.report.adapters.attention_layers_for`).

    Returns:
        The path of ``report.html``.
    """
    out = output_dir(out_dir, "report folder", files=REPORT_FILES, create=True)
    page = build_report(
        model, result, trigger_text=trigger_text, text_index=text_index, attention_layers=attention_layers
    )
    result.to_json(out / "analysis.json")
    return page.write(out / "report.html")
