"""From results to views and figures: every circuitsvis view and matplotlib figure of the report.

This module turns an :class:`~sd_lens.pipeline.AnalysisResult` (or a model and a text) into the
drawings of :mod:`~sd_lens.report.views` and :mod:`~sd_lens.report.figures`; it writes no prose
(:mod:`~sd_lens.report.prose`) and places nothing on a page (:mod:`~sd_lens.report.build`). Each
function is also there for a notebook:

* :func:`views_for` / :func:`figures_for`: all of them for a result, as dicts;
* :func:`norm_view_for_text`, :func:`attention_view_for_text`: one text, one hooked forward;
* :func:`corpus_norm_view`: a corpus text's norms straight from the probe (no forward);
* :func:`coefficient_view_for`, :func:`ablation_views_for`, :func:`patching_view_for`: the causal
  check of one defect (:class:`~sd_lens.analyses.causal.CausalCheck`).

Forward passes go through :func:`~sd_lens.analyses.text_run.run_text` (temporary hooks, removed
on exit, also on error) and never touch the weights.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from sd_lens.analyses.text_run import run_text
from sd_lens.errors import InputError
from sd_lens.report import results as _builtin_reports  # noqa: F401  (registers the built-in results' views)
from sd_lens.report.figures import (
    decay_eigen_figure,
    defect_angle_figure,
    ffn_singular_figure,
    norm_lines_figure,
)
from sd_lens.report.registry import registered_reports
from sd_lens.report.views import (
    CircuitsView,
    View,
    ViewGroup,
    attention_view,
    coefficient_view,
    intervention_view,
    norm_view,
)
from sd_lens.runtime.hooks import act_name
from sd_lens.types import HookedModel

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from sd_lens.analyses.causal import CausalCheck
    from sd_lens.pipeline import AnalysisResult

__all__ = [
    "ablation_views_for",
    "attention_layers_for",
    "attention_view_for_text",
    "coefficient_view_for",
    "corpus_norm_view",
    "defect_label",
    "figures_for",
    "norm_view_for_text",
    "patching_view_for",
    "pick_text",
    "trigger_text_of",
    "views_for",
]


def _block_labels(n_layers: int) -> list[str]:
    return [f"block {layer}" for layer in range(n_layers)]


def norm_view_for_text(model: HookedModel, text: str, max_tokens: int | None = 64, title: str | None = None) -> ViewGroup:
    """Tokens of ``text`` coloured by their residual norm after each block (one hooked forward).

    Args:
        model: a TransformerLens model.
        text: any text.
        max_tokens: show only the first ``max_tokens`` tokens.
        title: heading of the view.

    Returns:
        A :func:`~sd_lens.report.views.norm_view` (log colour scale relative to each block's median,
        one line per block).
    """
    run = run_text(model, text, max_tokens=max_tokens)
    return norm_view(
        run.tokens, run.norms, _block_labels(run.norms.shape[1]),
        title=title or "Residual-stream norm of each token of the text",
    )


def attention_view_for_text(
    model: HookedModel, text: str, layer: int, max_tokens: int | None = 64, title: str | None = None
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


def corpus_norm_view(result: AnalysisResult, text_index: int | None = None) -> ViewGroup:
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


def defect_label(result: AnalysisResult, k: int) -> str:
    """The name of the ``k``-th defect in views, figures and headings: ``"D{index}"``."""
    return f"D{result.defects[k].index}"


def coefficient_view_for(check: CausalCheck, label: str = "") -> CircuitsView:
    """The v₀ coefficient of each token's FFN input at the check's block (``ColoredTokens``)."""
    prefix = f"{label}: " if label else ""
    return coefficient_view(
        check.tokens, check.coefficients,
        title=f"{prefix}coefficient on v\u2080 of each token's FFN input at block {check.layer}",
    )


def ablation_views_for(check: CausalCheck, label: str = "") -> list[ViewGroup]:
    """Two before/after views of the ablation: v₀ removed, and the random-direction control.

    Each shows the clean run and the ablated run side by side; values are the norms at the output
    of the check's block (``hook_resid_post``).
    """
    prefix = f"{label}: " if label else ""
    return [
        intervention_view(
            check.tokens, check.norms_clean, check.norms_ablated,
            title=f"{prefix}ablate v\u2080 from the FFN input of block {check.layer} (norm after the block)",
            labels=("clean", "v\u2080 ablated"),
        ),
        intervention_view(
            check.tokens, check.norms_clean, check.norms_random,
            title=f"{prefix}control: ablate a random direction instead (block {check.layer})",
            labels=("clean", "random direction ablated"),
        ),
    ]


def patching_view_for(check: CausalCheck, label: str = "") -> ViewGroup:
    """Before/after view of the patching run, clean and patched side by side: token
    ``check.position`` given the initial token's v₀ coefficient (norms at the output of the check's
    block)."""
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
    model: HookedModel,
    result: AnalysisResult,
    *,
    trigger_text: str | None = None,
    text_index: int | None = None,
    attention_layers: Sequence[int] | None = None,
    max_tokens: int = 64,
) -> dict[str, View]:
    """Every interactive view of the report, by name.

    Keys: ``"norm_corpus"`` (the corpus text of :func:`pick_text`), ``"norm_trigger"`` (the
    trigger text of the causal checks), ``"attention_block_{l}"`` (trigger text, for each block
    of :func:`attention_layers_for` unless ``attention_layers`` is given), and per defect ``Dk``:
    ``"coefficient_Dk"``, ``"ablation_Dk"``, ``"ablation_random_Dk"``, ``"patching_Dk"``; then each
    registered late result's views (:mod:`~sd_lens.report.registry`), e.g. ``"sink_head_{block}_{head}"``
    with ``channels=True``.

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
        layers = [b for b in attention_layers_for(result) if act_name("pattern", b) in model.hook_dict]
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
    views: dict[str, View] = {"norm_corpus": corpus_norm_view(result, text_index)}
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
        label = defect_label(result, k)
        views[f"coefficient_{label}"] = coefficient_view_for(f.causal, label)
        ablated, randomed = ablation_views_for(f.causal, label)
        views[f"ablation_{label}"] = ablated
        views[f"ablation_random_{label}"] = randomed
        views[f"patching_{label}"] = patching_view_for(f.causal, label)
    for entry in registered_reports():  # the late results' views (the strongest sink heads, ...)
        if entry.views is not None:
            views.update(entry.views(model, result, text, max_tokens))
    return views


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
        labels = [defect_label(result, k) for k in range(n)]
        expl = [d.explosion_layer for d in result.defects]
        figs["defect_angles"] = defect_angle_figure(
            torch.stack([result.spectra.angles(k) for k in range(n)]), labels, expl
        )
        figs["defect_angles_ffn"] = defect_angle_figure(
            torch.stack([result.spectra.angles(k, ffn=True) for k in range(n)]), labels, expl,
            title="Angle between the FFN's u\u2080 (of F alone) and each defect direction",
        )
    for k, f in enumerate(result.findings):
        label = defect_label(result, k)
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
