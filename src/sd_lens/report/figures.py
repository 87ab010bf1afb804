"""Static matplotlib charts for what circuitsvis cannot draw.

Each function takes plain arrays (numpy, torch or lists) and returns a ``matplotlib.figure.Figure``
built without ``pyplot``: no display, no global state, and the caller's matplotlib backend is
left alone (PNGs are drawn with Agg). In a notebook the figure displays itself; for the report,
:func:`fig_to_png` turns it into small PNG bytes.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from sd_lens.errors import InputError

__all__ = [
    "decay_eigen_figure",
    "defect_angle_figure",
    "ffn_singular_figure",
    "fig_to_png",
    "norm_lines_figure",
    "perplexity_bars_figure",
    "quantization_figure",
    "FIGURE_HEIGHT",
    "FIGURE_WIDTH",
    "as_array",
    "finish_figure",
    "plain_label",
]

_WIDTH, _HEIGHT = 7.5, 3.6
_HIGHLIGHT_COLOURS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]


def _array(values: Any, name: str, ndim: int, allow_nan: bool = False) -> np.ndarray:
    try:
        import torch

        if isinstance(values, torch.Tensor):
            values = values.detach().to("cpu", dtype=torch.float64).numpy()
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != ndim:
        raise InputError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if np.any(bad):
        raise InputError(f"{name} contains {'infinite' if allow_nan else 'NaN or infinite'} values")
    return arr


def _label(text: str) -> str:
    """Plain text for matplotlib: quote tokens visibly and stop '$' from starting mathtext."""
    return text.replace("$", r"\$")


def _finish(fig: Figure, ax: Any, title: str | None) -> Figure:
    if title:
        ax.set_title(_label(title), fontsize=11)
    fig.tight_layout()
    return fig


def _token_label(tokens: Sequence[str] | None, pos: int) -> str:
    if tokens is None:
        return f"position {pos}"
    return _label(f"{pos}: {tokens[pos]!r}")


def _block_axis(ax: Any, n_blocks: int, block_labels: Sequence[Any] | None, xlabel: str = "block") -> None:
    ax.set_xlabel(xlabel)
    ax.set_xlim(-0.5, n_blocks - 0.5)
    step = max(1, int(np.ceil(n_blocks / 24)))
    ticks = list(range(0, n_blocks, step))
    ax.set_xticks(ticks)
    if block_labels is not None:
        if len(block_labels) != n_blocks:
            raise InputError(f"{len(block_labels)} block labels for {n_blocks} blocks")
        ax.set_xticklabels([_label(str(block_labels[i])) for i in ticks], rotation=0 if step > 1 else 0)


def fig_to_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes (Agg, tight bounding box, optimised; ~20-60 kB at 100 dpi).

    Args:
        fig: A matplotlib figure (from this module or anywhere else).
        dpi: Dots per inch; 100 keeps report files small and is sharp enough on screen.

    Returns:
        The PNG file's bytes.
    """
    buf = io.BytesIO()
    fig.savefig(
        buf,
        format="png",
        dpi=dpi,
        bbox_inches="tight",
        facecolor="white",
        metadata={"Software": None},
        pil_kwargs={"optimize": True},
    )
    return buf.getvalue()


def norm_lines_figure(
    norms: Any,
    tokens: Sequence[str] | None = None,
    highlight: Sequence[int] | None = None,
    block_labels: Sequence[Any] | None = None,
    title: str | None = "Norm of each token across blocks",
) -> Figure:
    """One line per token: its residual norm at each block, on a log scale.

    Ordinary tokens are thin grey lines, the median over tokens is dashed black, and the
    highlighted tokens (by default the initial one) are coloured and named in the legend.

    Args:
        norms: Array ``[n_tokens, n_blocks]``.
        tokens: Token strings, used in the legend (default: positions).
        highlight: Token positions to colour (default ``[0]``).
        block_labels: Tick labels for the blocks (default their indices).
        title: Axes title.

    Returns:
        The figure.
    """
    arr = _array(norms, "norms", 2)
    n_tokens, n_blocks = arr.shape
    if n_tokens == 0 or n_blocks == 0:
        raise InputError(f"norms must be non-empty, got shape {arr.shape}")
    if tokens is not None and len(tokens) != n_tokens:
        raise InputError(f"{len(tokens)} tokens for {n_tokens} rows of norms")
    hl = [0] if highlight is None else [int(h) for h in highlight]
    for h in hl:
        if not 0 <= h < n_tokens:
            raise InputError(f"highlight position {h} outside 0..{n_tokens - 1}")
    floor = max(float(arr[arr > 0].min()) if np.any(arr > 0) else 1.0, 1e-12)
    arr = np.maximum(arr, floor)
    x = np.arange(n_blocks)

    fig = Figure(figsize=(_WIDTH, _HEIGHT))
    ax = fig.add_subplot()
    segs = [np.column_stack([x, arr[i]]) for i in range(n_tokens) if i not in set(hl)]
    if segs:
        ax.add_collection(LineCollection(segs, colors="#9a9a9a", linewidths=0.6, alpha=0.35, label="other tokens"))
    ax.plot(x, np.median(arr, axis=0), "k--", lw=1.2, label="median over tokens")
    for j, h in enumerate(hl):
        ax.plot(
            x, arr[h], color=_HIGHLIGHT_COLOURS[j % len(_HIGHLIGHT_COLOURS)], lw=2.2 if j == 0 else 1.6,
            marker="o", ms=2.5, label=_token_label(tokens, h),
        )
    ax.set_yscale("log")
    ax.set_ylim(arr.min() / 1.5, arr.max() * 1.5)
    ax.set_ylabel("norm")
    _block_axis(ax, n_blocks, block_labels)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.85)
    return _finish(fig, ax, title)


def defect_angle_figure(
    angles: Any,
    defect_labels: Sequence[str] | None = None,
    explosion_blocks: Sequence[int | None] | None = None,
    block_labels: Sequence[Any] | None = None,
    title: str | None = "Angle between the block's u\u2080 and each defect direction",
) -> Figure:
    """Acute angle (degrees) between each block's leading singular vector u₀ and each defect.

    One line per defect; a dotted vertical line of the same colour marks the defect's explosion
    block, where the angle should dip to a few degrees.

    Args:
        angles: Array ``[n_defects, n_blocks]`` in degrees (NaN for "not computed" is allowed).
        defect_labels: A name per defect (default ``"D1"``, ``"D2"``, ...).
        explosion_blocks: Per defect, the index of its explosion block (or None).
        block_labels: Tick labels for the blocks.
        title: Axes title.

    Returns:
        The figure.
    """
    arr = _array(angles, "angles", 2, allow_nan=True)
    n_def, n_blocks = arr.shape
    labels = list(defect_labels) if defect_labels is not None else [f"D{i + 1}" for i in range(n_def)]
    if len(labels) != n_def:
        raise InputError(f"{len(labels)} defect labels for {n_def} defects")
    expl = list(explosion_blocks) if explosion_blocks is not None else [None] * n_def
    if len(expl) != n_def:
        raise InputError(f"{len(expl)} explosion blocks for {n_def} defects")

    fig = Figure(figsize=(_WIDTH, _HEIGHT))
    ax = fig.add_subplot()
    x = np.arange(n_blocks)
    for i in range(n_def):
        colour = _HIGHLIGHT_COLOURS[i % len(_HIGHLIGHT_COLOURS)]
        ax.plot(x, arr[i], color=colour, marker="o", ms=3, lw=1.5, label=_label(str(labels[i])))
        b = expl[i]
        if b is not None:
            b = int(b)
            if not 0 <= b < n_blocks:
                raise InputError(f"explosion block {b} outside 0..{n_blocks - 1}")
            ax.axvline(b, color=colour, ls=":", lw=1.2)
            if np.isfinite(arr[i, b]):
                ax.annotate(
                    f"{arr[i, b]:.1f}\u00b0", (b, arr[i, b]), textcoords="offset points",
                    xytext=(4, -12 if arr[i, b] > 10 else 6), fontsize=8, color=colour,
                )
    ax.set_ylim(0, 92)
    ax.set_yticks([0, 15, 30, 45, 60, 75, 90])
    ax.set_ylabel("angle (degrees)")
    _block_axis(ax, n_blocks, block_labels)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.85, title="dotted: explosion block", title_fontsize=7)
    return _finish(fig, ax, title)


def decay_eigen_figure(
    labels: Sequence[str],
    eigenvalues: Any,
    rayleigh_quotients: Any,
    title: str | None = "Decay blocks: eigenvalue of R nearest the defect direction",
) -> Figure:
    """Grouped bars per decay block: the eigenvalue of ``R = L - I`` whose eigenvector is nearest
    the defect direction, and the Rayleigh quotient ``uᵀRu`` along the direction.

    A negative bar means the block cancels the state (claim ii). The y axis is symmetric-log,
    so -5 and +700 are both readable, and the value is printed on each bar.

    Args:
        labels: One label per decay block, e.g. ``"D2 / block 29"``.
        eigenvalues: Array ``[n]`` (real parts).
        rayleigh_quotients: Array ``[n]``.
        title: Axes title.

    Returns:
        The figure.
    """
    ev = _array(eigenvalues, "eigenvalues", 1, allow_nan=True)
    rq = _array(rayleigh_quotients, "rayleigh_quotients", 1, allow_nan=True)
    n = len(labels)
    if ev.shape != (n,) or rq.shape != (n,):
        raise InputError(f"{n} labels but {ev.shape[0]} eigenvalues and {rq.shape[0]} Rayleigh quotients")
    fig = Figure(figsize=(max(4.0, min(_WIDTH, 1.4 + 1.1 * n)), _HEIGHT))
    ax = fig.add_subplot()
    x = np.arange(n)
    w = 0.38
    for off, vals, name, colour in ((-w / 2, ev, "eigenvalue", "#1f77b4"), (w / 2, rq, "Rayleigh quotient uᵀRu", "#ff7f0e")):
        bars = ax.bar(x + off, np.nan_to_num(vals), w, label=name, color=colour)
        for rect, v in zip(bars, vals):
            if np.isfinite(v):
                ax.annotate(
                    f"{v:.3g}", (rect.get_x() + rect.get_width() / 2, v), ha="center",
                    va="bottom" if v >= 0 else "top", fontsize=8, xytext=(0, 2 if v >= 0 else -2),
                    textcoords="offset points",
                )
    ax.axhline(0, color="k", lw=0.8)
    finite = np.concatenate([ev[np.isfinite(ev)], rq[np.isfinite(rq)]])
    top = float(np.abs(finite).max()) if finite.size else 1.0
    if top > 10:
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(-top * 4, top * 4)
    else:
        ax.set_ylim(-top * 1.3 - 0.1, top * 1.3 + 0.1)
    ax.axhspan(ax.get_ylim()[0], 0, color="#2ca02c", alpha=0.06, lw=0)
    ax.set_xticks(x)
    ax.set_xticklabels([_label(str(s)) for s in labels], fontsize=9)
    ax.set_ylabel("value (negative = cancels)")
    ax.legend(fontsize=8, framealpha=0.85)
    ax.grid(True, axis="y", alpha=0.3)
    return _finish(fig, ax, title)


def ffn_singular_figure(
    plus_norms: Any,
    minus_norms: Any | None = None,
    labels: Sequence[str] | None = None,
    baseline: float | None = None,
    log: bool = True,
    title: str | None = "FFN output norm for inputs \u00b1v\u2096 (right singular vectors of F)",
) -> Figure:
    """Bars of the FFN output norm when its normalised input is ``+v_k`` (and ``-v_k``).

    Claim (iv): at the explosion block the bar for ``v₀`` (one sign) towers over the others.

    Args:
        plus_norms: Array ``[K]``: output norm for input ``+v_k``, k = 0..K-1.
        minus_norms: Optional array ``[K]`` for ``-v_k``.
        labels: Tick labels (default ``"v0"``, ``"v1"``, ...).
        baseline: Optional reference drawn as a dashed line (e.g. the mean output norm for
            random unit inputs).
        log: Logarithmic y axis (default; the v₀ bar is often orders of magnitude taller).
        title: Axes title.

    Returns:
        The figure.
    """
    plus = _array(plus_norms, "plus_norms", 1)
    k = plus.shape[0]
    if k == 0:
        raise InputError("plus_norms is empty")
    minus = _array(minus_norms, "minus_norms", 1) if minus_norms is not None else None
    if minus is not None and minus.shape != plus.shape:
        raise InputError(f"minus_norms has shape {minus.shape}, plus_norms {plus.shape}")
    names = [str(s) for s in labels] if labels is not None else [f"v{i}" for i in range(k)]
    if len(names) != k:
        raise InputError(f"{len(names)} labels for {k} singular vectors")
    fig = Figure(figsize=(max(4.0, min(_WIDTH, 1.5 + 0.45 * k)), _HEIGHT))
    ax = fig.add_subplot()
    x = np.arange(k)
    w = 0.4 if minus is not None else 0.7
    ax.bar(x - (w / 2 if minus is not None else 0), plus, w, label="+v\u2096", color="#1f77b4")
    if minus is not None:
        ax.bar(x + w / 2, minus, w, label="\u2212v\u2096", color="#d62728")
    if baseline is not None:
        ax.axhline(float(baseline), color="k", ls="--", lw=1, label="baseline")
    if log:
        positive = np.concatenate([plus, minus if minus is not None else plus])
        positive = positive[positive > 0]
        if positive.size:
            ax.set_yscale("log")
            ax.set_ylim(positive.min() / 2, positive.max() * 2)
    ax.set_xticks(x)
    ax.set_xticklabels([_label(n) for n in names], fontsize=8, rotation=0 if k <= 16 else 90)
    ax.set_ylabel("FFN output norm")
    ax.legend(fontsize=8, framealpha=0.85)
    ax.grid(True, axis="y", alpha=0.3)
    return _finish(fig, ax, title)



# ------------------------------------------------------------------------------------------------
# the house style, public for figures drawn elsewhere (an application's chart in the report's look)
# ------------------------------------------------------------------------------------------------
#: the width and height (inches) of a one-panel figure
FIGURE_WIDTH, FIGURE_HEIGHT = _WIDTH, _HEIGHT


def as_array(values: Any, name: str, ndim: int, allow_nan: bool = False) -> np.ndarray:
    """``values`` (numpy, torch or lists) as a finite float array of ``ndim`` dimensions, or :class:`InputError`."""
    return _array(values, name, ndim, allow_nan)


def plain_label(text: str) -> str:
    """Plain text for matplotlib: tokens quoted visibly, ``$`` not starting mathtext."""
    return _label(text)


def finish_figure(fig: Figure, ax: Any, title: str | None) -> Figure:
    """The title (plain text) and tight layout every figure of the report gets."""
    return _finish(fig, ax, title)

# ------------------------------------------------------------------------------------------------
# perplexity bars (the W8A8 quantization experiment of sd_lens.quantize; drawn here so the report,
# one floor below the applications, imports no application)
# ------------------------------------------------------------------------------------------------
_PERPLEXITY_COLOURS = {"float": "#7f7f7f", "none": "#d62728", "defects": "#2ca02c", "random": "#ff7f0e", "all": "#1f77b4"}


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
    ax.bar(x, vals, color=[_PERPLEXITY_COLOURS.get(k, "#9467bd") for k in kinds], width=0.7)
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
