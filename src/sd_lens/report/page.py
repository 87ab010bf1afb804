"""One self-contained, offline HTML page: text, tables, static figures and circuitsvis views.

The page embeds circuitsvis's JavaScript bundle exactly once, however many views it holds:
each view is an empty ``<div>`` plus one ``CircuitsVis.render(id, CircuitsVis.<Component>,
props)`` call in a single script after the bundle. Figures are inline base64 PNGs. Nothing
in the page refers to a URL, and a Content-Security-Policy (``default-src 'none'``, scripts
allowed only by their SHA-256 hash, images only from ``data:``) makes the browser refuse any
network request or injected script handler, should some text ever slip through unescaped.

Example:
    ```python
    page = Page("Singular defects of my model")
    page.heading("Defect 1").paragraph("The first token's norm jumps in block 11.")
    page.view(norm_view(tokens, norms)).figure(norm_lines_figure(norms), "Norms")
    page.write("report/index.html")
    ```
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import numbers
from pathlib import Path
from typing import Any, Iterable, Sequence

from sd_lens.errors import InputError
from sd_lens.outputs import atomic_write_text
from sd_lens.report.views import VIEW_CSS, CircuitsView, View, ViewGroup, circuitsvis_bundle

__all__ = ["PAGE_CSS", "Page"]

PAGE_CSS = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1100px;"
    "margin:2em auto;padding:0 1.2em;color:#222;line-height:1.45}"
    "h1{font-size:1.7em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}"
    "table{border-collapse:collapse;margin:1em 0;font-size:.92em}"
    "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}"
    "pre{background:#f6f8fa;padding:.8em;overflow:auto;max-height:30em;font-size:.85em}"
    "figure.sd-fig{margin:1em 0}figure.sd-fig img{max-width:100%;height:auto}"
    "figure.sd-fig figcaption{color:#555;font-size:.9em}"
    ".sd-subtitle{color:#555;margin-top:0}"
)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fmt_cell(value: Any) -> tuple[str, bool]:
    """Cell text and whether it is numeric (right-aligned)."""
    if isinstance(value, bool) or value is None:
        return ("" if value is None else str(value)), False
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}" if abs(int(value)) >= 10_000 else str(int(value)), True
    if isinstance(value, numbers.Real):
        x = float(value)
        if not math.isfinite(x):
            return str(x), True
        if x != 0 and (abs(x) >= 1e4):
            return f"{x:,.0f}", True
        if x != 0 and abs(x) < 1e-3:
            return f"{x:.2e}", True
        return f"{x:.4g}", True
    return str(value), False


def _csp_hash(script: str) -> str:
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


class Page:
    """A self-contained HTML page, built block by block.

    Every method that adds content returns the page, so calls chain. All text is plain text and
    is HTML-escaped; there is deliberately no way to add raw markup.

    Args:
        title: The page title (``<title>`` and the top ``<h1>``).
        subtitle: An optional line under the title.
    """

    def __init__(self, title: str, subtitle: str | None = None) -> None:
        self.title = str(title)
        self.subtitle = subtitle
        self._blocks: list[str] = []
        self._views: list[tuple[str, CircuitsView]] = []

    # ------------------------------------------------------------------ content
    def heading(self, text: str, level: int = 2) -> Page:
        """Add a heading (``level`` 2 to 4; the page title is the only level 1)."""
        if level not in (2, 3, 4):
            raise InputError(f"heading level must be 2, 3 or 4, got {level}")
        self._blocks.append(f"<h{level}>{html.escape(str(text))}</h{level}>")
        return self

    def paragraph(self, text: str) -> Page:
        """Add a paragraph of plain text."""
        self._blocks.append(f"<p>{html.escape(str(text))}</p>")
        return self

    def bullets(self, items: Iterable[str]) -> Page:
        """Add a bulleted list, one plain-text sentence per item."""
        lis = "".join(f"<li>{html.escape(str(i))}</li>" for i in items)
        self._blocks.append(f"<ul>{lis}</ul>")
        return self

    def view(self, view: View) -> Page:
        """Add an interactive circuitsvis view, or a group of them (mounted when the page loads)."""
        if not isinstance(view, (CircuitsView, ViewGroup)):
            raise InputError(
                f"expected a CircuitsView or ViewGroup (from sd_lens.report.views), got {type(view).__name__}"
            )
        ids = []
        for part in view.parts:
            ids.append(f"sd-view-{len(self._views) + 1}")
            self._views.append((ids[-1], part))
        self._blocks.append(view.container_html(ids[0]) if isinstance(view, CircuitsView) else view.container_html(ids))
        return self

    def figure(self, fig: Any, caption: str | None = None, alt: str | None = None, dpi: int = 100) -> Page:
        """Add a static figure as an inline PNG.

        Args:
            fig: A matplotlib ``Figure`` or the bytes of a PNG file.
            caption: Text under the figure.
            alt: Alternative text (default: the caption).
            dpi: Resolution used when ``fig`` is a Figure.
        """
        if isinstance(fig, (bytes, bytearray)):
            png = bytes(fig)
            if not png.startswith(_PNG_MAGIC):
                raise InputError("figure bytes are not a PNG file")
        else:
            from sd_lens.report.figures import fig_to_png

            png = fig_to_png(fig, dpi=dpi)
        data = base64.b64encode(png).decode("ascii")
        alt_text = html.escape(alt if alt is not None else (caption or "figure"))
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._blocks.append(
            f'<figure class="sd-fig"><img alt="{alt_text}" src="data:image/png;base64,{data}">{cap}</figure>'
        )
        return self

    def table(self, rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> Page:
        """Add a table. Numbers are formatted compactly and right-aligned; the rest is text."""
        out = ["<table>"]
        if header:
            out.append("<thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr></thead>")
        out.append("<tbody>")
        for row in rows:
            cells = []
            for value in row:
                text, numeric = _fmt_cell(value)
                cls = ' class="num"' if numeric else ""
                cells.append(f"<td{cls}>{html.escape(text)}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
        self._blocks.append("".join(out))
        return self

    def code(self, text: str) -> Page:
        """Add a pre-formatted block (escaped)."""
        self._blocks.append(f"<pre><code>{html.escape(str(text))}</code></pre>")
        return self

    def json(self, obj: Any, max_chars: int | None = 20_000) -> Page:
        """Add a pre-formatted, indented JSON block (truncated after ``max_chars`` characters)."""
        text = json.dumps(obj, indent=2, ensure_ascii=False, default=str)
        if max_chars is not None and len(text) > max_chars:
            text = text[:max_chars] + f"\n... ({len(text) - max_chars:,} more characters; see the JSON file)"
        return self.code(text)

    # ------------------------------------------------------------------ output
    @property
    def n_views(self) -> int:
        """How many circuitsvis views the page holds (each part of a group counts)."""
        return len(self._views)

    def render(self) -> str:
        """The whole page as an HTML string (bundle included once if there is any view)."""
        scripts: list[str] = []
        if self._views:
            scripts.append(circuitsvis_bundle())
            scripts.append("\n".join(v.mount_js(div_id) for div_id, v in self._views))
        script_src = " ".join(_csp_hash(s) for s in scripts) or "'none'"
        csp = (
            "default-src 'none'; "
            f"script-src {script_src}; "
            "style-src 'unsafe-inline'; "
            "img-src data:; "
            "base-uri 'none'; form-action 'none'"
        )
        head = (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{html.escape(csp)}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(self.title)}</title>"
            f"<style>{PAGE_CSS}{VIEW_CSS}</style></head>\n<body>\n"
        )
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        if self.subtitle:
            body.append(f'<p class="sd-subtitle">{html.escape(self.subtitle)}</p>')
        body.extend(self._blocks)
        tail = "".join(f"\n<script>{s}</script>" for s in scripts)
        return head + "\n".join(body) + tail + "\n</body></html>\n"

    def write(self, path: str | Path) -> Path:
        """Write the page (UTF-8, atomically: a reader never sees half a page), creating parent
        folders; returns the path."""
        return atomic_write_text(path, self.render())
