"""Interactive circuitsvis views of singular defects, for notebooks and for the HTML report.

Every function here takes plain arrays (numpy, torch or nested lists) and returns a
:class:`CircuitsView`: the name of a circuitsvis React component plus the props to mount it
with. A view displays itself in Jupyter (``_repr_html_``: it embeds circuitsvis's JavaScript
bundle, so it works offline), and :class:`sd_lens.report.page.Page` mounts many views on one page
with a single copy of the bundle.

Safety: circuitsvis writes token text into the page with ``innerHTML`` (``ColoredTokens``,
``ColoredTokensMulti``), so a token such as ``<img src=x onerror=...>`` would become markup.
The views therefore HTML-escape ``&``, ``<`` and ``>`` in tokens before handing them to those
components (the hover tooltip then shows the escaped text, e.g. ``&lt;``). ``AttentionHeads``
draws tokens on a canvas, so it gets them verbatim. The props themselves are embedded with
:func:`script_json`, which cannot close the surrounding ``<script>`` element.
"""

from __future__ import annotations

import html
import json
import re
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from sd_lens.errors import InputError

__all__ = [
    "BUNDLE_COMPONENTS",
    "CircuitsView",
    "attention_view",
    "circuitsvis_bundle",
    "coefficient_view",
    "intervention_view",
    "norm_view",
    "script_json",
]

#: The React components the circuitsvis bundle (1.43) exports and that ``CircuitsView`` accepts.
BUNDLE_COMPONENTS: frozenset[str] = frozenset(
    {
        "AttentionHeads",
        "AttentionPattern",
        "AttentionPatterns",
        "ColoredTokens",
        "ColoredTokensMulti",
        "Hello",
        "TextNeuronActivations",
        "TokenLogProbs",
        "TopkSamples",
        "TopkTokens",
    }
)

# Components that insert token strings with innerHTML: their tokens must be HTML-escaped.
_INNER_HTML_COMPONENTS = frozenset(
    {"ColoredTokens", "ColoredTokensMulti", "AttentionPatterns", "TextNeuronActivations"}
)

_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def _bundle_path() -> Path:
    import circuitsvis

    return Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"


@lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """The circuitsvis browser bundle (an IIFE defining the global ``CircuitsVis``), ready to inline.

    Read from the installed ``circuitsvis`` package, never from a CDN. Two edits make it safe to
    put inside an inline ``<script>``: every ``</script`` becomes ``<\\/script`` (the same string
    for JavaScript, but it no longer ends the element), and the ``sourceMappingURL`` comment is
    dropped so that no browser tool tries to fetch the map file.

    Returns:
        The JavaScript source (about 1.3 MB).
    """
    path = _bundle_path()
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:  # pragma: no cover - broken circuitsvis install
        raise FileNotFoundError(
            f"circuitsvis's bundled JavaScript is missing at {path}; reinstall it with "
            "'pip install --force-reinstall circuitsvis'"
        ) from exc
    source = re.sub(r"</(script)", r"<\\/\1", source, flags=re.IGNORECASE)
    source = re.sub(r"^//# sourceMappingURL=.*$", "", source, flags=re.MULTILINE)
    return source


def script_json(value: Any) -> str:
    """JSON text that is safe to place inside an inline ``<script>`` element.

    ``<``, ``>`` and ``&`` are written as ``\\u003c``, ``\\u003e`` and ``\\u0026`` (so a token
    ``</script>`` or ``<!--`` cannot end or confuse the element) and U+2028/U+2029 as escapes
    (line terminators in older JavaScript). NaN and infinities are refused, since JSON has no
    spelling for them.

    Args:
        value: Any JSON-serialisable value.

    Returns:
        The JSON text.
    """
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _escape_token(token: str) -> str:
    return token.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_tokens(tokens: Any) -> Any:
    """Escape a token string, or every string of a (nested) list of them."""
    if isinstance(tokens, str):
        return _escape_token(tokens)
    if isinstance(tokens, (list, tuple)):
        return [_escape_tokens(t) for t in tokens]
    return tokens


@dataclass(frozen=True)
class CircuitsView:
    """A circuitsvis component and its props: one interactive view.

    Attributes:
        component: Name of the component in the circuitsvis bundle (``CircuitsVis.<component>``),
            one of :data:`BUNDLE_COMPONENTS`.
        props: JSON-serialisable props passed to the component (tokens already escaped where the
            component needs it).
        title: Short heading shown above the view (plain text; escaped when rendered).
        caption: One or two sentences saying how to read the view (plain text).
        kind: Which sd_lens function made the view (``"norm"``, ``"attention"``, ...).
    """

    component: str
    props: dict[str, Any]
    title: str | None = None
    caption: str | None = None
    kind: str = "custom"
    css_class: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.component not in BUNDLE_COMPONENTS:
            raise InputError(
                f"unknown circuitsvis component {self.component!r}; the bundle exports "
                f"{sorted(BUNDLE_COMPONENTS)}"
            )
        if self.component in _INNER_HTML_COMPONENTS and "tokens" in self.props:
            # these components insert tokens with innerHTML: token text is user data, escape it here
            # so that a view built directly (not by an sd_lens helper) is safe in a notebook too
            object.__setattr__(self, "props", {**self.props, "tokens": _escape_tokens(self.props["tokens"])})
        script_json(self.props)  # fail now, not in the browser, on NaN or unserialisable props

    def props_json(self) -> str:
        """The props as JSON that is safe inside ``<script>`` (see :func:`script_json`)."""
        return script_json(self.props)

    def mount_js(self, div_id: str) -> str:
        """JavaScript that mounts this view into the element ``div_id`` (bundle must be loaded).

        A failure (e.g. malformed props) is caught and shown inside the element instead of
        stopping the other views of the page.
        """
        if not _ID_RE.match(div_id):
            raise InputError(f"element id {div_id!r} must match {_ID_RE.pattern}")
        return (
            "try{CircuitsVis.render(%s,CircuitsVis.%s,%s);}catch(e){"
            "var el=document.getElementById(%s);if(el){el.textContent="
            "'circuitsvis view failed: '+e;el.className+=' sd-view-error';}"
            "console.error(e);}"
            % (script_json(div_id), self.component, self.props_json(), script_json(div_id))
        )

    def container_html(self, div_id: str) -> str:
        """The ``<figure>`` holding the title, the empty mount ``<div>`` and the caption."""
        if not _ID_RE.match(div_id):
            raise InputError(f"element id {div_id!r} must match {_ID_RE.pattern}")
        parts = [f'<figure class="sd-view sd-view-{html.escape(self.kind)}">']
        if self.title:
            parts.append(f'<div class="sd-view-title">{html.escape(self.title)}</div>')
        parts.append(
            f'<div id="{div_id}" class="sd-cv {html.escape(self.css_class)}" '
            f'data-component="{html.escape(self.component)}"></div>'
        )
        if self.caption:
            parts.append(f"<figcaption>{html.escape(self.caption)}</figcaption>")
        parts.append("</figure>")
        return "".join(parts)

    def to_html(self, include_bundle: bool = True, div_id: str | None = None) -> str:
        """A self-contained HTML fragment showing this view (what a notebook displays).

        Args:
            include_bundle: Embed the circuitsvis bundle (about 1.3 MB). Leave it on unless the
                page already loaded it.
            div_id: Id of the mount element; a random one by default.
        """
        div_id = div_id or "sd-view-" + uuid.uuid4().hex[:12]
        bundle = f"<script>{circuitsvis_bundle()}</script>" if include_bundle else ""
        return (
            f"<style>{VIEW_CSS}</style>{self.container_html(div_id)}{bundle}"
            f"<script>{self.mount_js(div_id)}</script>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def __html__(self) -> str:
        return self.to_html()


#: CSS the views need (also included by the page). ColoredTokensMulti pads itself by 20 px per
#: value set to make room for its tooltip; with one value set per block that is hundreds of
#: blank pixels, so the padding is removed.
VIEW_CSS = (
    ".sd-view{margin:1em 0;padding:0;position:relative}"
    ".sd-view-title{font-weight:600;margin-bottom:.3em}"
    ".sd-view figcaption{color:#555;font-size:.9em;margin-top:.3em}"
    ".sd-cv{position:relative;overflow-x:auto}"
    ".sd-cv-multi>div{padding-bottom:0!important}"
    ".sd-view-attention .sd-cv{max-width:760px}"
    ".sd-view-error{color:#b00020;font-family:monospace}"
)


def _as_array(values: Any, name: str, ndim: int) -> np.ndarray:
    try:
        import torch

        if isinstance(values, torch.Tensor):
            values = values.detach().to("cpu", dtype=torch.float64).numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != ndim:
        raise InputError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinite values; the view cannot colour them")
    return arr


def _labels(given: Sequence[Any] | None, default: list[str], what: str) -> list[str]:
    """User-given labels as strings (one per item), or the default ones."""
    if given is None:
        return default
    labels = [str(x) for x in given]
    if len(labels) != len(default):
        raise InputError(f"{len(labels)} {what} labels for {len(default)} {what}s")
    return labels


def _tokens(tokens: Sequence[str], n: int, name: str = "values") -> list[str]:
    tokens = [str(t) for t in tokens]
    if len(tokens) != n:
        raise InputError(f"{len(tokens)} tokens but {name} has {n} entries along the token axis")
    if n == 0:
        raise InputError("no tokens to show")
    return tokens


def _round(arr: np.ndarray, digits: int = 4) -> list:
    """Rounded nested lists, whole numbers as ints (``0`` not ``0.0``): keeps the JSON small."""
    r = np.round(arr, digits)
    flat = [int(v) if v.is_integer() else v for v in r.ravel().tolist()]
    return np.array(flat, dtype=object).reshape(r.shape).tolist()


def norm_view(
    tokens: Sequence[str],
    norms: Any,
    block_labels: Sequence[str] | None = None,
    scale: Literal["log", "linear"] = "log",
    include_peak: bool = True,
    title: str | None = "Residual-stream norm of each token",
) -> CircuitsView:
    """Tokens coloured by their residual-stream norm, with a selector over blocks.

    Uses circuitsvis ``ColoredTokensMulti``: one value set per block (hover a label to switch,
    click to lock; hover a token to see its value in every block).

    Args:
        tokens: The ``n_tokens`` token strings.
        norms: Array ``[n_tokens, n_blocks]`` of norms (any non-negative values).
        block_labels: A label per block (default ``"block 0"``, ``"block 1"``, ...).
        scale: ``"log"`` (default) colours ``log10(norm / median norm of the block)``, so that
            ordinary tokens are white, high-norm tokens blue and below-median tokens faintly
            red, and a 100x token does not wash out a 5x one; ``"linear"`` colours raw norms.
        include_peak: Prepend a value set ``"peak"`` holding each token's largest value over
            blocks (shown first, so every high-norm token stands out on load).
        title: Heading shown above the view.

    Returns:
        The view. One colour scale is shared by all blocks, so colours compare across blocks.
    """
    arr = _as_array(norms, "norms", 2)
    n_tokens, n_blocks = arr.shape
    toks = _tokens(tokens, n_tokens, "norms")
    if n_blocks == 0:
        raise InputError("norms has no blocks")
    labels = _labels(block_labels, [f"block {b}" for b in range(n_blocks)], "block")
    if scale == "log":
        if np.any(arr < 0):
            raise InputError("norms must be non-negative for scale='log'")
        tiny = np.finfo(np.float64).tiny
        median = np.maximum(np.median(arr, axis=0, keepdims=True), tiny)
        values = np.log10(np.maximum(arr, tiny) / median)
        # a zero norm would give -300: clip below at -(the positive range) to keep colours sane
        values = np.maximum(values, -max(float(values.max()), 1.0))
        unit = "log10(norm / block median)"
    elif scale == "linear":
        values = arr
        unit = "norm"
    else:
        raise InputError(f"scale must be 'log' or 'linear', got {scale!r}")
    if include_peak:
        values = np.concatenate([values.max(axis=1, keepdims=True), values], axis=1)
        labels = ["peak"] + labels
    bound = max(float(np.abs(values).max()), 1e-6)
    k = values.shape[1]
    props = {
        "tokens": list(toks),  # escaped by CircuitsView
        "values": _round(values),
        "labels": labels,
        "positiveBounds": [bound] * k,
        "negativeBounds": [-bound] * k,
    }
    caption = (
        f"Colour: {unit}, one scale for all blocks (blue high, white typical"
        + (", red below the median)." if scale == "log" else ").")
        + " Hover a block label to switch blocks, click it to lock; hover a token for its"
        " value in every block."
    )
    return CircuitsView(
        "ColoredTokensMulti", props, title=title, caption=caption, kind="norm", css_class="sd-cv-multi"
    )


def attention_view(
    tokens: Sequence[str],
    pattern: Any,
    layer: int | str,
    head_labels: Sequence[str] | None = None,
    title: str | None = None,
    max_tokens: int | None = 64,
) -> CircuitsView:
    """The attention patterns of one block's heads (circuitsvis ``AttentionHeads``).

    A column that is dark in every row is an attention sink: every later token puts its
    weight on that (high-norm) token.

    Args:
        tokens: The ``n_tokens`` token strings (drawn on a canvas, so shown verbatim).
        pattern: Array ``[n_heads, n_query, n_key]`` of attention probabilities
            (``n_query == n_key == n_tokens``).
        layer: The block index or label, used in head names (``"L3H0"``) and the title.
        head_labels: A name per head (default ``"L{layer}H{h}"``).
        title: Heading (default ``"Attention patterns of block {layer}"``).
        max_tokens: Show only the first ``max_tokens`` tokens (None: all). The data grows as
            heads x tokens², and sinks sit at the start of the text; 64 tokens of 9 heads
            embed about 150 kB.

    Returns:
        The view.
    """
    arr = _as_array(pattern, "pattern", 3)
    n_heads, n_q, n_k = arr.shape
    toks = _tokens(tokens, n_k, "pattern (key axis)")
    if n_q != n_k:
        raise InputError(f"pattern must be square per head, got {n_q} queries x {n_k} keys")
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"max_tokens must be at least 1, got {max_tokens}")
    shown = n_k if max_tokens is None else min(n_k, int(max_tokens))
    arr = arr[:, :shown, :shown] * np.tril(np.ones((shown, shown)))  # the masked half: exact zeros
    toks = toks[:shown]
    names = _labels(head_labels, [f"L{layer}H{h}" for h in range(n_heads)], "head")
    props = {
        "tokens": toks,
        "attention": _round(arr, 3),
        "attentionHeadNames": names,
        "maxValue": 1.0,
        "minValue": 0.0,
        "maskUpperTri": True,
    }
    return CircuitsView(
        "AttentionHeads",
        props,
        title=title or f"Attention patterns of block {layer}",
        caption=("" if shown == n_k else f"First {shown} of {n_k} tokens. ")
        + "Rows are query (destination) tokens, columns key (source) tokens. A dark "
        "column in every head is an attention sink on that token. Hover a head to zoom, "
        "click to lock.",
        kind="attention",
    )


def coefficient_view(
    tokens: Sequence[str],
    coefs: Any,
    title: str | None = "Coefficient on v\u2080 of each token",
    bound: float | None = None,
) -> CircuitsView:
    """Tokens coloured by a signed per-token value, e.g. the coefficient on v₀ (``ColoredTokens``).

    Args:
        tokens: The ``n_tokens`` token strings.
        coefs: Array ``[n_tokens]`` of signed values.
        title: Heading shown above the view.
        bound: Magnitude that gets the full colour (default: the largest ``|coef|``). The scale
            is symmetric, so zero is white, positive blue, negative red.

    Returns:
        The view.
    """
    arr = _as_array(coefs, "coefs", 1)
    toks = _tokens(tokens, arr.shape[0], "coefs")
    b = float(bound) if bound is not None else max(float(np.abs(arr).max()), 1e-12)
    props = {
        "tokens": list(toks),  # escaped by CircuitsView
        "values": _round(arr),
        "minValue": -b,
        "maxValue": b,
        "positiveColor": "#1e63c6",
        "negativeColor": "#c62828",
    }
    return CircuitsView(
        "ColoredTokens",
        props,
        title=title,
        caption=f"Blue positive, red negative, white zero; full colour at \u00b1{b:.3g}. "
        "Hover a token for its value.",
        kind="coefficient",
    )


def intervention_view(
    tokens: Sequence[str],
    before: Any,
    after: Any,
    title: str = "Before / after the intervention",
    labels: tuple[str, str] = ("before", "after"),
    scale: Literal["log", "linear"] = "linear",
) -> CircuitsView:
    """Per-token values before and after an ablation or patching run (``ColoredTokensMulti``).

    Both value sets share one colour scale, so a token that loses (ablation) or gains (patching)
    its high norm visibly changes colour when switching between them.

    Args:
        tokens: The ``n_tokens`` token strings.
        before: Array ``[n_tokens]`` (e.g. norms at the output of the explosion block, clean run).
        after: Array ``[n_tokens]`` (the same with the intervention hook).
        title: Heading shown above the view.
        labels: Names of the two value sets.
        scale: ``"linear"`` (default) or ``"log"`` (``log10`` of the values; needs them positive).

    Returns:
        The view.
    """
    b = _as_array(before, "before", 1)
    a = _as_array(after, "after", 1)
    if a.shape != b.shape:
        raise InputError(f"before has shape {b.shape} but after has {a.shape}")
    toks = _tokens(tokens, b.shape[0], "before")
    values = np.stack([b, a], axis=1)
    if scale == "log":
        if np.any(values <= 0):
            raise InputError("scale='log' needs positive values")
        values = np.log10(values)
        unit = "log10(value)"
    elif scale == "linear":
        unit = "value"
    else:
        raise InputError(f"scale must be 'log' or 'linear', got {scale!r}")
    bound = max(float(np.abs(values).max()), 1e-12)
    props = {
        "tokens": list(toks),  # escaped by CircuitsView
        "values": _round(values),
        "labels": [str(labels[0]), str(labels[1])],
        "positiveBounds": [bound, bound],
        "negativeBounds": [-bound, -bound],
    }
    return CircuitsView(
        "ColoredTokensMulti",
        props,
        title=title,
        caption=f"Colour: {unit}, one scale for both runs. Hover '{labels[0]}' / '{labels[1]}' "
        "to switch; hover a token for both values.",
        kind="intervention",
        css_class="sd-cv-multi",
    )
