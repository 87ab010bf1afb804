"""The report of each built-in late result: its section, its views and its summary sentence, one registration each.

In page order: the channel lens (massive activations, heads and sublayers, the lever, the FFN-input checks,
the interventions, the life cycle, the residual identity), the W8A8 quantization experiment, the outlier
tokens, the super weights, the rotation check and the causal ranking. Sentences and tables come from
:mod:`~sd_lens.report.prose`; a section only places them. :func:`findings_summary` joins the registered
sentences (the summary's second paragraph; the CLI prints it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sd_lens.report import prose
from sd_lens.report.page import Page
from sd_lens.report.registry import ReportContext, ResultReport, register_report, registered_reports
from sd_lens.report.views import View, attention_view
from sd_lens.types import HookedModel

if TYPE_CHECKING:  # pragma: no cover
    from sd_lens.pipeline import AnalysisResult

__all__ = ["SINK_VIEWS", "findings_summary", "sink_views"]

#: How many of the strongest attention-sink heads get a view in the report.
SINK_VIEWS = 2


def findings_summary(result: AnalysisResult) -> str:
    """The registered results' sentences (the rotation check's and the causal ranking's, ...) in one paragraph;
    empty when none ran: the report's summary and the CLI print them."""
    sentences = (r.sentence(result) for r in registered_reports() if r.sentence is not None)
    return " ".join(s for s in sentences if s)


def sink_views(model: HookedModel, result: AnalysisResult, text: str, max_tokens: int) -> dict[str, View]:
    """The strongest attention-sink heads on the trigger text: ``"sink_head_{block}_{head}"`` (``channels=True``)."""
    if result.sinks is None:
        return {}
    from sd_lens.analyses.attention_sinks import sink_head_view

    views: dict[str, View] = {}
    for h in result.sinks.top_heads[:SINK_VIEWS]:
        pattern = sink_head_view(model, text, h.block, h.head, max_tokens=max_tokens)
        views[f"sink_head_{h.block}_{h.head}"] = attention_view(**pattern.view_kwargs())
    return views


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

for _entry in (
    ResultReport("channels", channels_section, sink_views),
    ResultReport("quantization", quantization_section),
    ResultReport("outlier_tokens", outlier_tokens_section),
    ResultReport("super_weights", super_weights_section),
    ResultReport("rotation", rotation_section, sentence=prose.rotation_sentence),
    ResultReport("ranking", ranking_section, sentence=prose.ranking_sentence),
):
    register_report(_entry)
