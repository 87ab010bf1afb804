"""The quantization chart: perplexity per scheme and kept set (style of :mod:`sd_lens.report.figures`).

Built without ``pyplot`` (no global state); :func:`sd_lens.report.figures.fig_to_png` turns it into PNG bytes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from sd_lens.errors import InputError
from sd_lens.report.figures import _HEIGHT, _WIDTH, _array, _finish, _label

__all__ = ["perplexity_bars_figure", "quantization_figure"]

_COLOURS = {"float": "#7f7f7f", "none": "#d62728", "defects": "#2ca02c", "random": "#ff7f0e", "all": "#1f77b4"}


def perplexity_bars_figure(
    labels: Sequence[str],
    values: Any,
    *,
    kinds: Sequence[str] | None = None,
    lows: Any = None,
    highs: Any = None,
    reference: float | None = None,
    title: str | None = None,
) -> Figure:
    """One bar per label (log scale); ``lows``/``highs`` draw a range on a bar (NaN: none), ``kinds``
    colour the bars (``"float"``, ``"none"``, ``"defects"``, ``"random"``, ``"all"``) and ``reference``
    draws the float perplexity as a dashed line."""
    vals = _array(values, "values", 1)
    if len(labels) != len(vals) or len(vals) == 0:
        raise InputError(f"{len(labels)} labels for {len(vals)} values")
    if np.any(vals <= 0):
        raise InputError("perplexities must be positive")
    kinds = list(kinds) if kinds is not None else ["none"] * len(vals)
    fig = Figure(figsize=(_WIDTH, _HEIGHT + 0.4))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(vals))
    ax.bar(x, vals, color=[_COLOURS.get(k, "#9467bd") for k in kinds], width=0.7)
    if lows is not None and highs is not None:
        lo, hi = _array(lows, "lows", 1, allow_nan=True), _array(highs, "highs", 1, allow_nan=True)
        has = ~np.isnan(lo)
        ax.errorbar(x[has], vals[has], yerr=[vals[has] - lo[has], hi[has] - vals[has]], fmt="none", ecolor="black",
                    capsize=4, linewidth=1)
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1, label=f"float {reference:.2f}")
        ax.legend(fontsize=8, loc="upper right")
    for xi, v in zip(x, vals):
        ax.text(float(xi), float(v), f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels([_label(s) for s in labels], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("perplexity (held-out)")
    return _finish(fig, ax, title)


def quantization_figure(result: Any, title: str | None = None) -> Figure:
    """Bar chart of a :class:`~sd_lens.quantize.evaluate.QuantizationResult`: every row, the random
    controls as one bar (their mean, the range as an error bar), the float perplexity dashed."""
    labels: list[str] = []
    vals: list[float] = []
    kinds: list[str] = []
    lows: list[float] = []
    highs: list[float] = []
    for r, s in result.display_rows():
        if s is not None:  # the random controls of a scheme: one bar, their range as the error bar
            labels.append(f"{r.scheme}\n+ random F2 ({int(s['n'])} seeds)")
            vals.append(s["mean"])
            lows.append(s["min"])
            highs.append(s["max"])
            kinds.append("random")
            continue
        kinds.append("float" if r.scheme == "float" else r.kept)
        labels.append("float" if r.scheme == "float" else r.scheme + ("" if r.kept == "none" else f"\n+ {r.kept} F2"))
        vals.append(r.perplexity)
        lows.append(float("nan"))
        highs.append(float("nan"))
    prot = ", ".join(map(str, result.protected)) or "none"
    return perplexity_bars_figure(
        labels, vals, kinds=kinds, lows=lows, highs=highs, reference=result.row("float").perplexity,
        title=title or f"{result.model}: W8A8 perplexity; defect blocks {prot}",
    )
