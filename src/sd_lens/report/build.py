"""The singular-defect report: one self-contained HTML page (plus the JSON) per analysis run.

:func:`write_report` turns an :class:`~sd_lens.pipeline.AnalysisResult` into
``out_dir/report.html`` (offline: circuitsvis's JavaScript embedded once, figures as inline PNGs,
a Content-Security-Policy that forbids any request) and ``out_dir/analysis.json``. The page holds
the model and corpus, each defect's findings in plain sentences and tables, the interactive views,
the static figures, the timings and the JSON.

Every view and figure of the report is also available on its own, for a notebook:

* :func:`views_for` / :func:`figures_for`: all of them for a result, as dicts;
* :func:`norm_view_for_text`, :func:`attention_view_for_text`: one text, one hooked forward;
* :func:`corpus_norm_view`: a corpus text's norms straight from the probe (no forward);
* :func:`coefficient_view_for`, :func:`ablation_views_for`, :func:`patching_view_for`: the causal
  check of one defect (:class:`~sd_lens.analyses.causal.CausalCheck`).

Forward passes here attach hooks only inside ``model.hooks(...)`` contexts (removed on exit, also
on error) and never touch the weights.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from sd_lens.analyses.text_run import TextRun, run_text
from sd_lens.errors import InputError
from sd_lens.report.figures import (
    decay_eigen_figure,
    defect_angle_figure,
    ffn_singular_figure,
    norm_lines_figure,
)
from sd_lens.report.page import Page
from sd_lens.report.views import (
    CircuitsView,
    attention_view,
    coefficient_view,
    intervention_view,
    norm_view,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from sd_lens.analyses.causal import CausalCheck
    from sd_lens.pipeline import AnalysisResult

__all__ = [
    "TextRun",
    "ablation_views_for",
    "attention_layers_for",
    "attention_view_for_text",
    "build_report",
    "coefficient_view_for",
    "corpus_norm_view",
    "figures_for",
    "norm_view_for_text",
    "patching_view_for",
    "pick_text",
    "run_text",
    "trigger_text_of",
    "views_for",
    "write_report",
]

#: How many lines of the corpus the report quotes.
CORPUS_LINES_SHOWN = 5
#: Longest corpus line quoted in full (longer ones are cut with an ellipsis).
CORPUS_LINE_CHARS = 160
#: Characters of the JSON shown in the page (the file beside it is complete).
JSON_CHARS_SHOWN = 20_000


def _block_labels(n_layers: int) -> list[str]:
    return [f"block {layer}" for layer in range(n_layers)]


def norm_view_for_text(model: Any, text: str, max_tokens: int | None = 64, title: str | None = None) -> CircuitsView:
    """Tokens of ``text`` coloured by their residual norm after each block (one hooked forward).

    Args:
        model: a TransformerLens model.
        text: any text.
        max_tokens: show only the first ``max_tokens`` tokens.
        title: heading of the view.

    Returns:
        A :func:`~sd_lens.report.views.norm_view` (log colour scale relative to each block's median).
    """
    run = run_text(model, text, max_tokens=max_tokens)
    return norm_view(
        run.tokens, run.norms, _block_labels(run.norms.shape[1]),
        title=title or "Residual-stream norm of each token of the text",
    )


def attention_view_for_text(
    model: Any, text: str, layer: int, max_tokens: int | None = 64, title: str | None = None
) -> CircuitsView:
    """The attention patterns of block ``layer``'s heads on ``text`` (one hooked forward).

    Args:
        model: a TransformerLens model.
        text: any text.
        layer: the block.
        max_tokens: show only the first ``max_tokens`` tokens.
        title: heading of the view.

    Returns:
        An :func:`~sd_lens.report.views.attention_view`.
    """
    run = run_text(model, text, [layer], max_tokens=max_tokens)
    return attention_view(run.tokens, run.patterns[layer], layer=layer, title=title, max_tokens=max_tokens)


# --------------------------------------------------------------------------------------------
# views from a result
# --------------------------------------------------------------------------------------------
def trigger_text_of(result: AnalysisResult) -> str:
    """The text the causal checks ran on: ``result.trigger_text`` when the result records it,
    else the default trigger text of :func:`~sd_lens.pipeline.run_analysis`."""
    from sd_lens.pipeline import DEFAULT_TRIGGER_TEXT

    return str(getattr(result, "trigger_text", None) or DEFAULT_TRIGGER_TEXT)


def _high_positions(result: AnalysisResult, seq: int) -> list[int]:
    """Non-initial positions of text ``seq`` that are high-norm at some block."""
    probe = result.probe
    rows = probe.rows_of(seq)
    high = (probe.ratio("resid_post")[rows] > result.defects.threshold).any(dim=1)
    return [int(p) for p in torch.nonzero(high).flatten().tolist() if int(probe.positions[rows[p]]) > 0]


def pick_text(result: AnalysisResult) -> int:
    """Index of the corpus text with the most non-initial high-norm tokens (the first on ties).

    A token is high-norm when its resid_post norm exceeds the result's threshold times its block's
    median norm at some block.
    """
    counts = [len(_high_positions(result, s)) for s in range(len(result.probe.sequences))]
    return max(range(len(counts)), key=lambda s: (counts[s], -s))


def _corpus_tokens_and_norms(result: AnalysisResult, seq: int) -> tuple[list[str], Tensor]:
    probe = result.probe
    if not 0 <= seq < len(probe.sequences):
        raise InputError(f"text index {seq} outside 0..{len(probe.sequences) - 1}")
    rows = probe.rows_of(seq)
    tokens = [probe.token_string(int(t)) for t in probe.token_ids[rows]]
    return tokens, probe.hook("resid_post")[rows]


def corpus_norm_view(result: AnalysisResult, text_index: int | None = None) -> CircuitsView:
    """Norm view of one corpus text, from the probe's norms (no forward pass).

    Args:
        result: an analysis result.
        text_index: which text (default :func:`pick_text`: the one with most non-initial
            high-norm tokens).
    """
    seq = pick_text(result) if text_index is None else int(text_index)
    tokens, norms = _corpus_tokens_and_norms(result, seq)
    n_high = len(_high_positions(result, seq))
    return norm_view(
        tokens, norms, _block_labels(norms.shape[1]),
        title=f"Corpus text {seq}: residual norm of each token ({n_high} non-initial high-norm token(s))",
    )


def _label(result: AnalysisResult, k: int) -> str:
    return f"D{result.defects[k].index}"


def coefficient_view_for(check: CausalCheck, label: str = "") -> CircuitsView:
    """The v₀ coefficient of each token's FFN input at the check's block (``ColoredTokens``)."""
    prefix = f"{label}: " if label else ""
    return coefficient_view(
        check.tokens, check.coefficients,
        title=f"{prefix}coefficient on v\u2080 of each token's FFN input at block {check.layer}",
    )


def ablation_views_for(check: CausalCheck, label: str = "") -> list[CircuitsView]:
    """Two before/after views of the ablation: v₀ removed, and the random-direction control.

    Values are the norms at the output of the check's block (``hook_resid_post``).
    """
    prefix = f"{label}: " if label else ""
    return [
        intervention_view(
            check.tokens, check.norms_clean, check.norms_ablated,
            title=f"{prefix}ablate v\u2080 from the FFN input of block {check.layer} (norm after the block)",
            labels=("clean", "v0 ablated"),
        ),
        intervention_view(
            check.tokens, check.norms_clean, check.norms_random,
            title=f"{prefix}control: ablate a random direction instead (block {check.layer})",
            labels=("clean", "random direction ablated"),
        ),
    ]


def patching_view_for(check: CausalCheck, label: str = "") -> CircuitsView:
    """Before/after view of the patching run: token ``check.position`` given the initial token's
    v₀ coefficient (norms at the output of the check's block)."""
    prefix = f"{label}: " if label else ""
    tok = check.tokens[check.position] if check.position < len(check.tokens) else "?"
    return intervention_view(
        check.tokens, check.norms_clean, check.norms_patched,
        title=f"{prefix}patch the initial token's v\u2080 coefficient into token {check.position} "
        f"({tok!r}) at block {check.layer}",
        labels=("clean", f"token {check.position} patched"),
    )


def attention_layers_for(result: AnalysisResult) -> list[int]:
    """Each defect's explosion block and the block after it (those that exist), sorted."""
    n = int(result.n_layers)
    return sorted({b for d in result.defects for b in (d.explosion_layer, d.explosion_layer + 1) if 0 <= b < n})


def views_for(
    model: Any,
    result: AnalysisResult,
    *,
    trigger_text: str | None = None,
    text_index: int | None = None,
    attention_layers: Sequence[int] | None = None,
    max_tokens: int = 64,
) -> dict[str, CircuitsView]:
    """Every interactive view of the report, by name.

    Keys: ``"norm_corpus"`` (the corpus text of :func:`pick_text`), ``"norm_trigger"`` (the
    trigger text of the causal checks), ``"attention_block_{l}"`` (trigger text, for each block
    of :func:`attention_layers_for` unless ``attention_layers`` is given), and per defect ``Dk``:
    ``"coefficient_Dk"``, ``"ablation_Dk"``, ``"ablation_random_Dk"``, ``"patching_Dk"``.

    Args:
        model: the model the result was computed on (one hooked forward of the trigger text).
        result: from :func:`~sd_lens.pipeline.run_analysis`.
        trigger_text: the text the causal checks ran on (default :func:`trigger_text_of`).
        text_index: corpus text of the norm view (default :func:`pick_text`).
        attention_layers: blocks of the attention views.
        max_tokens: token cap of the trigger-text views.
    """
    text = trigger_text or trigger_text_of(result)
    if attention_layers is None:
        layers = [b for b in attention_layers_for(result) if f"blocks.{b}.attn.hook_pattern" in model.hook_dict]
    else:
        layers = [int(b) for b in attention_layers]
    run = run_text(model, text, layers, max_tokens=max_tokens)
    for f in result.findings:
        if len(f.causal.tokens) and min(len(f.causal.tokens), max_tokens) != len(run.tokens):
            warnings.warn(
                f"the trigger text has {len(run.tokens)} tokens but the causal check ran on "
                f"{len(f.causal.tokens)}: pass the trigger_text that run_analysis used",
                stacklevel=2,
            )
            break
    views: dict[str, CircuitsView] = {"norm_corpus": corpus_norm_view(result, text_index)}
    views["norm_trigger"] = norm_view(
        run.tokens, run.norms, _block_labels(run.norms.shape[1]),
        title="Trigger text: residual norm of each token",
    )
    for layer in layers:
        views[f"attention_block_{layer}"] = attention_view(
            run.tokens, run.patterns[layer], layer=layer, max_tokens=max_tokens,
            title=f"Attention patterns of block {layer} on the trigger text",
        )
    for k, f in enumerate(result.findings):
        label = _label(result, k)
        views[f"coefficient_{label}"] = coefficient_view_for(f.causal, label)
        ablated, randomed = ablation_views_for(f.causal, label)
        views[f"ablation_{label}"] = ablated
        views[f"ablation_random_{label}"] = randomed
        views[f"patching_{label}"] = patching_view_for(f.causal, label)
    return views


# --------------------------------------------------------------------------------------------
# figures from a result
# --------------------------------------------------------------------------------------------
def figures_for(result: AnalysisResult, *, text_index: int | None = None, max_highlight: int = 6) -> dict[str, Figure]:
    """Every static figure of the report, by name (matplotlib figures, no pyplot).

    Keys: ``"norm_lines"`` (the corpus text of :func:`pick_text`; the initial token and up to
    ``max_highlight - 1`` non-initial high-norm tokens highlighted); when there are defects,
    ``"defect_angles"`` (u₀ of each block's L vs each defect) and ``"defect_angles_ffn"`` (u₀ of
    F); per defect ``Dk``: ``"ffn_Dk"`` (FFN output norm along ±v_k at the explosion block) and,
    when it has decay blocks, ``"decay_Dk"``.
    """
    seq = pick_text(result) if text_index is None else int(text_index)
    tokens, norms = _corpus_tokens_and_norms(result, seq)
    highlight = [0] + _high_positions(result, seq)[: max(0, max_highlight - 1)]
    figs: dict[str, Figure] = {
        "norm_lines": norm_lines_figure(
            norms, tokens, highlight=highlight, title=f"Norm of each token of corpus text {seq} across blocks"
        )
    }
    n = len(result.defects)
    if n:
        labels = [_label(result, k) for k in range(n)]
        expl = [d.explosion_layer for d in result.defects]
        figs["defect_angles"] = defect_angle_figure(
            torch.stack([result.spectra.angles(k) for k in range(n)]), labels, expl
        )
        figs["defect_angles_ffn"] = defect_angle_figure(
            torch.stack([result.spectra.angles(k, ffn=True) for k in range(n)]), labels, expl,
            title="Angle between the FFN's u\u2080 (of F alone) and each defect direction",
        )
    for k, f in enumerate(result.findings):
        label = _label(result, k)
        sub = f.subspace
        figs[f"ffn_{label}"] = ffn_singular_figure(
            sub.plus_norms, sub.minus_norms, baseline=float(sub.random_norms.mean()),
            title=f"{label}: FFN output norm at block {sub.layer} for inputs \u00b1v\u2096 "
            "(dashed: random directions)",
        )
        if f.decay_checks:
            figs[f"decay_{label}"] = decay_eigen_figure(
                [f"block {c.layer}" for c in f.decay_checks],
                [c.eigenvalue for c in f.decay_checks],
                [c.rayleigh for c in f.decay_checks],
                title=f"{label}: eigenvalue of R = L \u2212 I nearest the direction, per decay block",
            )
    return figs


# --------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------
def _num(x: float) -> str:
    """A norm for a sentence: thousands separators from 100 up, three significant digits below."""
    x = float(x)
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _defect_rows(result: AnalysisResult, k: int) -> list[list[Any]]:
    d, f = result.defects[k], result.findings[k]
    c, sub = f.causal, f.subspace
    pos = c.position
    v0_out = max(float(sub.plus_norms[0]), float(sub.minus_norms[0]))
    return [
        ["carried by", d.carriers()],
        ["explosion block", d.explosion_layer],
        ["high-norm blocks", f"{d.first_layer}\u2013{d.last_layer}"],
        ["decay blocks", ", ".join(map(str, d.decay_layers)) or "none within the model"],
        [f"peak norm (block {d.peak_layer})", d.peak_norm],
        [f"typical norm (block {d.peak_layer} median)", d.typical_norm],
        ["angle of u\u2080 of L at the explosion block to the direction (deg)", f.predicted_angle_deg],
        ["angle of u\u2080 of F (FFN alone) there (deg)", f.ffn_angle_deg],
        ["block whose u\u2080 of L is nearest the direction", f.closest_block],
        ["FFN output norm along v\u2080 / random directions (mean)", f"{_num(v0_out)} / {_num(float(sub.random_norms.mean()))}"],
        [f"ablation at block {c.layer}: initial-token norm before", c.norm_before],
        ["ablation: after removing v\u2080", c.norm_after],
        ["ablation: after removing a random direction (control)", c.random_control_after],
        [f"patching at block {c.layer}: token {pos} ({c.tokens[pos] if pos < len(c.tokens) else '?'!r}) norm before",
         float(c.norms_clean[pos])],
        ["patching: after setting its v\u2080 coefficient to the initial token's", float(c.norms_patched[pos])],
    ]


def _decay_rows(result: AnalysisResult, k: int) -> list[list[Any]]:
    rows = []
    for c in result.findings[k].decay_checks:
        reading = "cancels the state (negative)" if c.rayleigh < 0 else "does not cancel it (positive)"
        rows.append([c.layer, c.eigenvalue, c.eigenvalue_imag, c.eigvec_angle_deg, c.rayleigh, reading])
    return rows


def _summary(result: AnalysisResult) -> str:
    n = len(result.defects)
    head = (
        f"{result.model} ({result.architecture}, {result.n_layers} blocks, d_model {result.d_model}) was probed on "
        f"{len(result.texts)} text(s), {result.probe.n_tokens:,} tokens. A state counts as high-norm when its "
        f"norm exceeds {result.defects.threshold:g} times its block's median norm. "
    )
    if n == 0:
        return head + "No state crossed that line: sd_lens found no singular defect on this corpus."
    parts = [
        f"D{d.index} explodes in block {d.explosion_layer} (peak {_num(d.peak_norm)} against a typical "
        f"{_num(d.typical_norm)}), "
        + (f"decays in block(s) {', '.join(map(str, d.decay_layers))}" if d.decay_layers else "does not decay")
        + f", and the explosion block's leading singular direction is {f.predicted_angle_deg:.1f}\u00b0 from it"
        for d, f in zip(result.defects, result.findings)
    ]
    return head + f"sd_lens found {n} singular defect(s): " + "; ".join(parts) + "."


def build_report(
    model: Any,
    result: AnalysisResult,
    *,
    trigger_text: str | None = None,
    text_index: int | None = None,
    attention_layers: Sequence[int] | None = None,
) -> Page:
    """The report as a :class:`~sd_lens.report.page.Page` (not yet written; see :func:`write_report`).

    Args:
        model: the model the result was computed on (runs one hooked forward of the trigger text).
        result: from :func:`~sd_lens.pipeline.run_analysis`.
        trigger_text: the text of the causal checks (default :func:`trigger_text_of`).
        text_index: corpus text shown in the norm view (default :func:`pick_text`).
        attention_layers: blocks of the attention views (default :func:`attention_layers_for`).
    """
    t0 = time.perf_counter()
    text = trigger_text or trigger_text_of(result)
    views = views_for(model, result, trigger_text=text, text_index=text_index, attention_layers=attention_layers)
    figs = figures_for(result, text_index=text_index)
    seq = pick_text(result) if text_index is None else int(text_index)
    build_s = time.perf_counter() - t0

    page = Page(
        f"Singular defects of {result.model}",
        subtitle=f"sd_lens report \u00b7 {result.architecture}, {result.n_layers} blocks, d_model {result.d_model} "
        f"\u00b7 FFN fit: {result.fit_method} \u00b7 seed {result.seed}",
    )
    page.heading("Summary").paragraph(_summary(result))
    if len(result.defects):
        page.table(
            [
                [f"D{d.index}", d.explosion_layer, ", ".join(map(str, d.decay_layers)) or "none", d.peak_norm,
                 d.typical_norm, f.predicted_angle_deg, f.ffn_angle_deg, f.causal.norm_before, f.causal.norm_after,
                 f.causal.random_control_after]
                for d, f in zip(result.defects, result.findings)
            ],
            header=["defect", "explosion block", "decay blocks", "peak norm", "typical norm", "angle u\u2080(L) (deg)",
                    "angle u\u2080(F) (deg)", "ablation before", "after", "random control"],
        )

    # corpus
    page.heading("Corpus")
    lengths = [len(s) for s in result.probe.sequences]
    page.paragraph(
        f"{len(result.texts)} text(s), {result.probe.n_tokens:,} tokens in all (BOS included; "
        f"{min(lengths)}\u2013{max(lengths)} tokens per text). The first lines:"
    )
    page.bullets(_short(t, CORPUS_LINE_CHARS) for t in result.texts[:CORPUS_LINES_SHOWN])

    # norms
    page.heading("Norms of the residual stream")
    page.paragraph(
        f"Corpus text {seq} is the one with the most non-initial high-norm tokens. Each token is coloured by "
        "its norm after each block, relative to the block's median over that text; the first value set, "
        "peak, is each token's largest value over the blocks."
    )
    page.view(views["norm_corpus"])
    page.figure(figs["norm_lines"], "Norm of each token of the same text after each block (log scale).")
    page.paragraph(f"The trigger text of the causal checks: {text!r}.")
    page.view(views["norm_trigger"])

    # defects
    if not len(result.defects):
        page.heading("Defects")
        page.bullets(result.sentences())
    sentences = result.sentences()
    for k, (d, f) in enumerate(zip(result.defects, result.findings)):
        label = _label(result, k)
        page.heading(f"Defect {label}: explodes in block {d.explosion_layer}")
        page.paragraph(sentences[k] if k < len(sentences) else "")
        if not d.initial_token:
            page.paragraph(
                f"Note: {label} is carried only by non-initial tokens, while the causal check below measures the "
                "initial token of the trigger text and patches one token of it: it does not test this defect's "
                "own carriers."
            )
        page.table(_defect_rows(result, k), header=["quantity", "value"])
        if f.decay_checks:
            page.heading("Decay blocks: eigen-check of R = L \u2212 I", level=3)
            page.table(
                _decay_rows(result, k),
                header=["block", "eigenvalue nearest the direction (real)", "imaginary part",
                        "its eigenvector's angle to the direction (deg)", "Rayleigh quotient u\u1d40Ru", "reading"],
            )
            page.figure(figs[f"decay_{label}"], f"{label}: decay blocks; a negative value means the block cancels the state.")
        else:
            page.paragraph(f"{label} does not decay within the model: no decay block to check.")
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

    if "defect_angles" in figs:
        page.heading("Where each block's leading singular direction points")
        page.figure(
            figs["defect_angles"],
            "Angle between the leading left singular vector u\u2080 of each block's linear approximation L "
            "and each defect direction; dotted lines mark the explosion blocks.",
        )
        page.figure(figs["defect_angles_ffn"], "The same for the FFN's linearisation F alone.")

    page.heading("Attention on the trigger text")
    att = [key for key in views if key.startswith("attention_block_")]
    if att:
        page.paragraph(
            "The heads of each explosion block and of the block after it. A dark first column in every head is "
            "an attention sink on the high-norm initial token."
        )
        for key in att:
            page.view(views[key])
    else:
        page.paragraph("No explosion block: no attention view.")

    page.heading("Timings")
    timings = dict(result.timings_s)
    rows = [[name, float(sec)] for name, sec in timings.items()]
    rows.append(["report: views and figures", build_s])
    page.table(rows, header=["stage", "seconds"])

    page.heading("JSON")
    page.paragraph("The complete JSON of this run is analysis.json, next to this page.")
    page.json(result.to_dict(), max_chars=JSON_CHARS_SHOWN)
    return page


def write_report(
    model: Any,
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
        out_dir: directory to write into (created when missing; existing files are replaced).
        trigger_text: the text of the causal checks (default :func:`trigger_text_of`).
        text_index: corpus text shown in the norm view (default :func:`pick_text`).
        attention_layers: blocks of the attention views (default :func:`attention_layers_for`).

    Returns:
        The path of ``report.html``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = build_report(
        model, result, trigger_text=trigger_text, text_index=text_index, attention_layers=attention_layers
    )
    result.to_json(out / "analysis.json")
    return page.write(out / "report.html")
