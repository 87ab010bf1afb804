"""Interactive circuitsvis views of singular defects, for notebooks and for the HTML report.

Every function here takes plain arrays (numpy, torch or nested lists) and returns a
:class:`CircuitsView` (the name of a circuitsvis React component plus the props to mount it with)
or a :class:`ViewGroup` (several such views read together, all visible at once: the norm of each
token in every block, a run before and after an intervention). A view displays itself in Jupyter
(``_repr_html_``: it embeds circuitsvis's JavaScript bundle, so it works offline), and
:class:`sd_lens.report.page.Page` mounts many views on one page with a single copy of the bundle.

Everything a view shows is on screen without interaction: hovering a token only adds its value.
For that reason no helper uses ``ColoredTokensMulti``, which shows one value set at a time and
always renders two text inputs (with "Reset" buttons) for editing its colour bounds; the norm and
intervention views are groups of ``ColoredTokens`` on one shared colour scale instead.

Safety: circuitsvis writes token text into the page with ``innerHTML`` (``ColoredTokens``,
``ColoredTokensMulti``), so a token such as ``<img src=x onerror=...>`` would become markup.
The views therefore HTML-escape ``&``, ``<`` and ``>`` in tokens before handing them to those
components (the hover tooltip then shows the escaped text, e.g. ``&lt;``). ``AttentionHeads``
draws tokens on a canvas, so it gets them verbatim. The props themselves are embedded with
:func:`script_json`, which cannot close the surrounding ``<script>`` element.

Why one file over 600 lines: one job, the circuitsvis views and the escaping and embedding rules
they all share; split by view, each part would repeat those rules.
"""

from __future__ import annotations

import html
import json
import re
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Sequence, TypeAlias

import numpy as np

from sd_lens.errors import InputError

__all__ = [
    "BUNDLE_COMPONENTS",
    "CircuitsView",
    "View",
    "ViewGroup",
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

    @property
    def parts(self) -> tuple[CircuitsView, ...]:
        """The circuitsvis views to mount: this one (a :class:`ViewGroup` has several)."""
        return (self,)

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
        return _figure_html(self.kind, self.title, self.mount_html(div_id), self.caption)

    def mount_html(self, div_id: str) -> str:
        """The empty ``<div>`` the component is mounted into."""
        if not _ID_RE.match(div_id):
            raise InputError(f"element id {div_id!r} must match {_ID_RE.pattern}")
        return (
            f'<div id="{div_id}" class="sd-cv {html.escape(self.css_class)}" '
            f'data-component="{html.escape(self.component)}"></div>'
        )

    def to_html(self, include_bundle: bool = True, div_id: str | None = None) -> str:
        """A self-contained HTML fragment showing this view (what a notebook displays).

        Args:
            include_bundle: Embed the circuitsvis bundle (about 1.3 MB). Leave it on unless the
                page already loaded it.
            div_id: Id of the mount element; a random one by default.
        """
        div_id = div_id or _random_id()
        return _fragment(self.container_html(div_id), self.mount_js(div_id), include_bundle)

    def _repr_html_(self) -> str:
        return self.to_html()

    def __html__(self) -> str:
        return self.to_html()


@dataclass(frozen=True)
class ViewGroup:
    """Several circuitsvis views read together and shown at once, each under its own label.

    Attributes:
        parts: The views; each one's ``title`` is its label in the group (its caption is not shown).
        layout: ``"row"``: side by side (one under the other on a narrow page), for comparing a
            few runs; ``"grid"``: one line per part, labels in a column on the left, all lines
            scrolling sideways together, for the same tokens under many value sets.
        title: Short heading shown above the group (plain text; escaped when rendered).
        caption: One or two sentences saying how to read the group (plain text).
        kind: Which sd_lens function made the group (``"norm"``, ``"intervention"``, ...).
    """

    parts: tuple[CircuitsView, ...]
    layout: Literal["row", "grid"] = "row"
    title: str | None = None
    caption: str | None = None
    kind: str = "group"

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))
        if not self.parts:
            raise InputError("a view group needs at least one view")
        if not all(isinstance(p, CircuitsView) for p in self.parts):
            raise InputError("every part of a view group must be a CircuitsView")
        if self.layout not in ("row", "grid"):
            raise InputError(f"layout must be 'row' or 'grid', got {self.layout!r}")

    @property
    def components(self) -> list[str]:
        """The circuitsvis component of each part."""
        return [p.component for p in self.parts]

    def mount_js(self, div_ids: Sequence[str]) -> str:
        """JavaScript that mounts every part, part ``i`` into ``div_ids[i]``."""
        self._check_ids(div_ids)
        return "\n".join(p.mount_js(i) for p, i in zip(self.parts, div_ids))

    def container_html(self, div_ids: Sequence[str]) -> str:
        """The ``<figure>`` holding the title, each part's label and mount ``<div>``, and the caption."""
        self._check_ids(div_ids)
        cells = "".join(
            '<div class="sd-part">'
            + f'<div class="sd-part-label">{html.escape(p.title or "")}</div>'
            + p.mount_html(i)
            + "</div>"
            for p, i in zip(self.parts, div_ids)
        )
        body = f'<div class="sd-group sd-group-{self.layout}">{cells}</div>'
        return _figure_html(self.kind, self.title, body, self.caption)

    def to_html(self, include_bundle: bool = True, div_ids: Sequence[str] | None = None) -> str:
        """A self-contained HTML fragment showing the group (what a notebook displays).

        Args:
            include_bundle: Embed the circuitsvis bundle (about 1.3 MB), once for all parts.
            div_ids: Ids of the mount elements, one per part; random ones by default.
        """
        ids = list(div_ids) if div_ids is not None else [_random_id() for _ in self.parts]
        return _fragment(self.container_html(ids), self.mount_js(ids), include_bundle)

    def _check_ids(self, div_ids: Sequence[str]) -> None:
        if len(div_ids) != len(self.parts):
            raise InputError(f"{len(div_ids)} element ids for {len(self.parts)} views")

    def _repr_html_(self) -> str:
        return self.to_html()

    def __html__(self) -> str:
        return self.to_html()


#: What :meth:`sd_lens.report.page.Page.view` takes: one circuitsvis view or a group of them.
View: TypeAlias = CircuitsView | ViewGroup


def _random_id() -> str:
    return "sd-view-" + uuid.uuid4().hex[:12]


def _figure_html(kind: str, title: str | None, body: str, caption: str | None) -> str:
    parts = [f'<figure class="sd-view sd-view-{html.escape(kind)}">']
    if title:
        parts.append(f'<div class="sd-view-title">{html.escape(title)}</div>')
    parts.append(body)
    if caption:
        parts.append(f"<figcaption>{html.escape(caption)}</figcaption>")
    parts.append("</figure>")
    return "".join(parts)


def _fragment(container: str, mount: str, include_bundle: bool) -> str:
    bundle = f"<script>{circuitsvis_bundle()}</script>" if include_bundle else ""
    return f"<style>{VIEW_CSS}</style>{container}{bundle}<script>{mount}</script>"


#: CSS the views need (also included by the page). ColoredTokensMulti pads itself by 20 px per
#: value set to make room for its tooltip; with one value set per block that is hundreds of
#: blank pixels, so the padding is removed (``css_class="sd-cv-multi"``). In a ``"grid"`` group
#: each part stays on one line (a newline token's line break is dropped; it shows as ¶), so that
#: a token sits in the same column in every line.
VIEW_CSS = (
    ".sd-view{margin:1em 0;padding:0;position:relative}"
    ".sd-view-title{font-weight:600;margin-bottom:.3em}"
    ".sd-view figcaption{color:#555;font-size:.9em;margin-top:.3em}"
    ".sd-cv{position:relative;overflow-x:auto}"
    ".sd-cv-multi>div{padding-bottom:0!important}"
    ".sd-view-attention .sd-cv{max-width:760px}"
    ".sd-view-error{color:#b00020;font-family:monospace}"
    ".sd-part-label{color:#444;font-size:.85em;white-space:nowrap}"
    ".sd-group-row{display:flex;flex-wrap:wrap;gap:.3em 2em}"
    ".sd-group-row>.sd-part{flex:1 1 320px;min-width:0}"
    ".sd-group-row .sd-part-label{font-weight:600;margin-bottom:.2em}"
    ".sd-group-grid{display:grid;grid-template-columns:max-content max-content;column-gap:.6em;"
    "align-items:center;overflow-x:auto;padding-bottom:.2em}"
    ".sd-group-grid>.sd-part{display:contents}"
    ".sd-group-grid .sd-part-label{position:sticky;left:0;z-index:1;background:#fff;padding-right:.2em}"
    ".sd-group-grid .sd-cv{overflow:visible}"
    ".sd-group-grid .colored-tokens{white-space:nowrap}"
    ".sd-group-grid .colored-tokens br{display:none}"
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


def _colored_tokens_group(
    tokens: list[str],
    values: np.ndarray,
    labels: Sequence[str],
    layout: Literal["row", "grid"],
    title: str | None,
    caption: str,
    kind: str,
) -> ViewGroup:
    """One ``ColoredTokens`` view per column of ``values [n_tokens, k]``, all on one symmetric scale."""
    bound = max(float(np.abs(values).max()), 1e-12)
    parts = tuple(
        CircuitsView(
            "ColoredTokens",
            {"tokens": list(tokens), "values": _round(values[:, j]), "minValue": -bound, "maxValue": bound},
            title=str(label),
            kind=kind,
        )  # tokens escaped by CircuitsView
        for j, label in enumerate(labels)
    )
    return ViewGroup(parts, layout=layout, title=title, caption=caption, kind=kind)


def norm_view(
    tokens: Sequence[str],
    norms: Any,
    block_labels: Sequence[str] | None = None,
    scale: Literal["log", "linear"] = "log",
    include_peak: bool = True,
    title: str | None = "Residual-stream norm of each token",
) -> ViewGroup:
    """Tokens coloured by their residual-stream norm, one line per block, all on screen at once.

    A ``"grid"`` :class:`ViewGroup` of circuitsvis ``ColoredTokens``: the same tokens on every
    line, the block's label on the left, one colour scale for all lines, so a column that turns
    blue from some block on is a token whose norm exploded there. Hover a token for its value.

    Args:
        tokens: The ``n_tokens`` token strings.
        norms: Array ``[n_tokens, n_blocks]`` of norms (any non-negative values).
        block_labels: A label per block (default ``"block 0"``, ``"block 1"``, ...).
        scale: ``"log"`` (default) colours ``log10(norm / median norm of the block)``, so that
            ordinary tokens are white, high-norm tokens blue and below-median tokens faintly
            red, and a 100x token does not wash out a 5x one; ``"linear"`` colours raw norms.
        include_peak: Put a first line ``"peak"`` holding each token's largest value over
            blocks, so every high-norm token stands out at the top.
        title: Heading shown above the view.

    Returns:
        The group, one part per line (``parts[j].props["values"]`` is line ``j``).
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
    caption = (
        f"Colour: {unit}, one scale for all blocks (blue high, white typical"
        + (", red below the median)." if scale == "log" else ").")
        + " One line per block"
        + (", after the first, peak: each token's largest value over the blocks." if include_peak else ".")
        + " Hover a token for its value."
    )
    return _colored_tokens_group(toks, values, labels, "grid", title, caption, "norm")


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
) -> ViewGroup:
    """Per-token values before and after an ablation or patching run, side by side.

    A ``"row"`` :class:`ViewGroup` of two circuitsvis ``ColoredTokens``, both on screen at once
    and on one colour scale, so the token that loses (ablation) or gains (patching) its high norm
    is dark in one and pale in the other without any interaction.

    Args:
        tokens: The ``n_tokens`` token strings.
        before: Array ``[n_tokens]`` (e.g. norms at the output of the explosion block, clean run).
        after: Array ``[n_tokens]`` (the same with the intervention hook).
        title: Heading shown above the pair.
        labels: Names of the two runs, shown above each.
        scale: ``"linear"`` (default) or ``"log"`` (``log10`` of the values; needs them positive).

    Returns:
        The group: ``parts[0]`` the run before, ``parts[1]`` the run after.
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
    caption = f"Colour: {unit}, one scale for both runs (blue high, white zero). Hover a token for its value."
    return _colored_tokens_group(toks, values, [str(labels[0]), str(labels[1])], "row", title, caption, "intervention")
