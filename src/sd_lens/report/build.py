"""The report's page: an ordered list of sections, each a function that adds its part to the page.

:func:`write_report` turns an :class:`~sd_lens.pipeline.AnalysisResult` into
``out_dir/report.html`` (offline: circuitsvis's JavaScript embedded once, figures as inline PNGs,
a Content-Security-Policy that forbids any request) and ``out_dir/analysis.json``.

How the page is made (:func:`build_report`):

1. :func:`~sd_lens.report.adapters.views_for` and :func:`~sd_lens.report.adapters.figures_for`
   draw every view and figure once (one hooked forward of the trigger text);
2. they go into a :class:`ReportContext` with the model and the result;
3. each function of :data:`SECTIONS`, in order, adds headings, prose
   (:mod:`~sd_lens.report.prose`), tables, views and figures to the
   :class:`~sd_lens.report.page.Page`.

To add a section, write ``def my_section(page: Page, ctx: ReportContext) -> None`` here and put it
in :data:`SECTIONS` where it belongs in the page (or pass ``sections=[...]`` to
:func:`build_report` for one report). Sentences about defects belong in
:mod:`~sd_lens.report.prose`, new views and figures of a result in
:mod:`~sd_lens.report.adapters`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from sd_lens.outputs import output_dir
from sd_lens.report import prose
from sd_lens.report.adapters import defect_label, figures_for, pick_text, trigger_text_of, views_for
from sd_lens.report.page import Page
from sd_lens.report.views import View
from sd_lens.types import HookedModel

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from sd_lens.pipeline import AnalysisResult

__all__ = ["SECTIONS", "ReportContext", "Section", "build_report", "write_report"]

#: How many lines of the corpus the report quotes.
CORPUS_LINES_SHOWN = 5
#: Longest corpus line quoted in full (longer ones are cut with an ellipsis).
CORPUS_LINE_CHARS = 160
#: Characters of the JSON shown in the page (the file beside it is complete).
JSON_CHARS_SHOWN = 20_000
#: the files :func:`write_report` writes into its folder
REPORT_FILES = ("report.html", "analysis.json")


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
    extra = prose.findings_summary(ctx.result)
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


def channels_section(page: Page, ctx: ReportContext) -> None:
    """Attention sinks, the per-block attention/FFN attribution and the lever (``channels=True`` only)."""
    result = ctx.result
    if not result.channels_measured:
        return
    if result.outliers is not None:
        page.heading("Channels")
        page.paragraph(
            f"Massive activations (Sun et al.): a residual-stream value above {result.outliers.absolute} and at least "
            f"{result.outliers.relative:g} times the {result.outliers.median} median. For each such channel: the defect "
            "whose direction puts most of its weight on it, where it is massive, and what the norms around the FFN do "
            "to it (a masked channel reaches the FFN with an effective scale of zero)."
        )
        header, rows = prose.outlier_channels_table(result)
        if rows:
            page.table(rows, header=header)
        else:
            page.paragraph("No channel meets the criterion on this corpus.")
    if result.sinks is not None or result.attribution is not None:
        page.heading("Heads and sublayers")
    if result.sinks is not None:
        page.paragraph(prose.sinks_paragraph(result))
        for name, view in ctx.views.items():
            if name.startswith("sink_head_"):
                page.view(view)
    if result.attribution is not None:
        page.paragraph(
            "What the attention and the FFN of each block add along each defect's direction (the value each "
            "sublayer adds to the residual stream, after any post-norm), on re-run carrier prefixes. The explosion "
            "set is the smallest set of blocks whose additions reach "
            f"{result.attribution.fraction:.0%} of the peak component."
        )
        header, rows = prose.attribution_table(result)
        page.table(rows, header=header)
    if result.lever is not None and result.lever.levers:
        page.paragraph(
            "A lever chosen from the attribution: remove the defect direction from the sublayer outputs of its "
            "explosion set (before the sublayer's post-norm, where it has one), against a control that removes a "
            "vector of the same size along a random direction at the same hooks."
        )
        header, rows = prose.lever_table(result)
        page.table(rows, header=header)
    if result.local is not None and len(result.local):
        page.heading("FFN inputs: Gaussian fit and local Jacobian")
        page.paragraph(
            "Interventions on the FFN's normalised input at the defect's carriers: the Gaussian fit's v0 projected out "
            "(the singular-defects paper), the local Jacobian's top right singular vector, the input direction w = "
            "J^T u that moves the output along the defect direction most per unit of edit, and the smallest edit "
            "along w that the local linear model predicts cancels it. Each against a control removing a vector of the "
            "same norm along random directions."
        )
        header, rows = prose.local_checks_table(result)
        page.table(rows, header=header)
    if result.interventions is not None:
        rep = result.interventions
        where = "; ".join(f"channel{'s' if len(c) > 1 else ''} {', '.join(map(str, c))} at block {b}"
                          for b, c in rep.targets.items())
        page.heading("Massive activations set to zero and to their mean")
        page.paragraph(
            "Sun et al.'s intervention: at the block where each massive channel emerges, set its massive entries "
            f"to zero, or to their mean over the corpus, and measure the perplexity of {rep.held_out_texts} held-out "
            f"texts ({rep.clean.n_tokens} predicted tokens) and the KL divergence to the clean model. Set: "
            f"{where or 'nothing (no massive activation on this corpus)'}."
        )
        header, rows = prose.interventions_table(result)
        page.table(rows, header=header)
    if result.life is not None and len(result.life.defects):
        page.heading("Life cycle")
        page.paragraph(
            "Each defect from emergence to disappearance (An et al.): the channels it rides, the blocks and "
            "down-projection rows that write it, the norms that mask or amplify it, the sink heads that attend to "
            "its carriers, and the blocks and rows that cancel it."
        )
        for d in result.life.defects:
            page.paragraph(d.summary())
    if result.residual_identity is not None:
        page.heading("Residual identity")
        page.paragraph(result.residual_identity.message() + ".")


def quantization_section(page: Page, ctx: ReportContext) -> None:
    """The W8A8 quantization experiment (``quantize=True`` only): its table, the summary line and the figure."""
    from sd_lens.report.figures import quantization_figure

    q = ctx.result.quantization
    if q is None:
        return

    page.heading("W8A8 quantization and the defect blocks")
    page.paragraph(
        "Wang et al. (ICML 2025, sec. 6): every linear layer fake-quantized to 8 bits (weights and activations), "
        f"perplexity of {q.n_texts} held-out texts ({q.n_tokens} predicted tokens), with the FFN down-projection (F2) "
        f"kept in float at the defect blocks ({', '.join(map(str, q.protected)) or 'none: no major defect'}: the "
        "explosion and decay blocks of every major defect), at as many random blocks (the control), or at every block."
    )
    rows = [line.strip("|").split("|") for line in q.table().splitlines()[2:]]
    page.table([[c.strip() for c in r] for r in rows], header=["scheme", "F2 kept at blocks", "perplexity", "x float"])
    if q.protected:
        page.paragraph(q.summary().splitlines()[-1] + ".")
    page.figure(quantization_figure(q), caption="Perplexity per scheme and kept set (log scale; random: mean and range).")


def outlier_tokens_section(page: Page, ctx: ReportContext) -> None:
    """PrefixQuant's outlier tokens and the prefix intervention (``outlier_tokens=True`` only)."""
    ot = ctx.result.outlier_tokens
    if ot is None:
        return
    page.heading("Outlier tokens and prefixes")
    page.paragraph(prose.outlier_tokens_paragraph(ctx.result))
    if ot.baseline is not None:
        page.paragraph(
            "Each prefix is put before every text (with the model's BOS once, never twice); later outlier tokens are "
            "those at the text's own positions after its first, and the perplexity is that of the same text tokens."
        )
        header, rows = prose.prefix_table(ctx.result)
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


def super_weights_section(page: Page, ctx: ReportContext) -> None:
    """The super weights of each defect (``super_weights=True`` only): the table and one paragraph per defect."""
    sw = ctx.result.super_weights
    if sw is None:
        return
    page.heading("Super weights")
    page.paragraph(
        "Yu et al. (2024): single down-projection entries W_down[row, col] whose input spike writes (or cancels) a "
        "defect's channel at its carriers, ranked by what reaches the residual (after any post-FFN norm's gain), "
        f"verified on {sw.held_out_texts} held-out texts: zeroed, against zeroing {sw.n_seeds} random entries of the "
        "same magnitude in the same matrix, and against zeroing it but restoring the activation it writes."
    )
    header, rows = prose.super_weights_table(ctx.result)
    page.table(rows, header=header)
    for d in sw:
        page.paragraph(d.summary())


def rotation_section(page: Page, ctx: ReportContext) -> None:
    """The rotation check (``rotation=True`` only): defects' norms and massive channels under two rotations."""
    rc = ctx.result.rotation
    if rc is None:
        return
    page.heading("Rotation: directions survive, channels vanish")
    page.paragraph(
        "QuaRot/SpinQuant: the residual stream in another orthonormal basis (a random orthogonal and a randomized "
        "Hadamard rotation, as hooks; the logits are unchanged up to rounding). A token's norm cannot change, a "
        f"channel outlier is spread over every channel. On {rc.n_texts} texts ({rc.n_tokens} tokens): "
        + "; ".join(f"{r.kind}: {r.construction}, logits max error {r.logits_max_error:.2g}" for r in rc.runs) + "."
    )
    header, rows = prose.rotation_table(ctx.result)
    page.table(rows, header=header)


def ranking_section(page: Page, ctx: ReportContext) -> None:
    """The causal ranking (``causal_ranking=True`` only): every finding by what removing it does."""
    cr = ctx.result.ranking
    if cr is None:
        return
    page.heading("Causal ranking: which findings matter")
    page.paragraph(
        "Each defect (its direction projected out at its carriers, over its blocks) and each massive activation "
        "(zeroed at its emergence block) — and, with the super weights, each verified super weight (zeroed) — removed on "
        "its own; perplexity ratio and KL to the clean model on "
        f"{cr.held_out_texts} held-out texts, against matched random controls. Below {cr.inert_kl:g} nats per token a "
        "finding is \"massive but inert\"."
    )
    header, rows = prose.ranking_table(ctx.result)
    page.table(rows, header=header)


#: The sections of the report, in page order.
SECTIONS: list[Section] = [
    summary_section,
    corpus_section,
    norms_section,
    defects_section,
    minor_section,
    channels_section,
    quantization_section,
    outlier_tokens_section,
    super_weights_section,
    rotation_section,
    ranking_section,
    angles_section,
    attention_section,
    timings_section,
    json_section,
]


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
        sections: the sections to lay out, in order (default :data:`SECTIONS`).
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
    for section in SECTIONS if sections is None else sections:
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
