"""The HTML page in a real browser: headless Debian ``chromium`` with networking cut off.

Checks that every circuitsvis view mounted (its ``<div>`` holds the elements the React
component renders), that the figures are there, that a hostile token stays text, and keeps a
screenshot in ``artifacts/``. ``make browser`` (a dependency of ``make test``) installs Chromium;
without it these tests are skipped.
"""

from __future__ import annotations

import numpy as np
import pytest

from chromium import ARTIFACTS, DomSummary, requires_chromium, run_chromium
from sd_lens.report.figures import (
    decay_eigen_figure,
    defect_angle_figure,
    norm_lines_figure,
)
from sd_lens.report.page import Page
from sd_lens.report.views import (
    attention_view,
    coefficient_view,
    intervention_view,
    norm_view,
)

pytestmark = pytest.mark.browser

# A token that, were it ever inserted as markup, would mark the page as compromised.
# No spaces: circuitsvis turns whitespace into &nbsp;, which would defuse a spaced payload.
HOSTILE = "</script><img/src/onerror=document.body.dataset.pwned=1>"


def synthetic_page() -> tuple[Page, dict[str, tuple[str, int]]]:
    """A page with 4 views and 3 figures from synthetic data; per view: (tag, minimum count)."""
    rng = np.random.default_rng(0)
    tokens = ["<|start|>", " The", " cat", HOSTILE, " sat", " on", " the", " mat", "\n", " and", " slept", "."]
    n, blocks, heads = len(tokens), 12, 4
    norms = rng.uniform(60, 120, (n, blocks))
    norms[0, 2:6] *= 8
    norms[6, 2:6] *= 6
    norms[0, 6:11] = 25_000.0
    attn = np.tril(rng.uniform(0, 1, (heads, n, n)))
    attn[:, :, 0] += 4
    attn = np.tril(attn) / np.tril(attn).sum(-1, keepdims=True)
    before = norms[:, 6].copy()
    after = before.copy()
    after[0] = 150.0

    page = Page("Synthetic singular-defect report", subtitle="browser test " + HOSTILE)
    page.heading("Views").paragraph("Token " + HOSTILE + " must stay text.")
    page.view(norm_view(tokens, norms))
    page.view(attention_view(tokens, attn, layer=6))
    page.view(coefficient_view(tokens, rng.normal(0, 1, n) + np.r_[30, np.zeros(n - 1)]))
    page.view(intervention_view(tokens, before, after, title="Ablate v0 at block 6"))
    page.heading("Figures")
    page.figure(norm_lines_figure(norms, tokens, highlight=[0, 6]), "Norms across blocks")
    page.figure(
        defect_angle_figure(rng.uniform(40, 90, (2, blocks)), explosion_blocks=[2, 6]), "Angle of u0 to each defect"
    )
    page.figure(decay_eigen_figure(["D1 / block 5", "D2 / block 10"], [-0.8, -1.0], [-5.6, -51.3]), "Decay")
    page.table([["D1", 2, 5], ["D2", 6, 10]], header=["defect", "explosion", "decay"])
    expect = {
        "sd-view-1": ("span", 2 * n),  # ColoredTokensMulti: 2 spans per token
        "sd-view-2": ("canvas", heads + 1),  # AttentionHeads: one chart per head + zoomed
        "sd-view-3": ("span", 2 * n),  # ColoredTokens
        "sd-view-4": ("span", 2 * n),
    }
    return page, expect


@requires_chromium
def test_page_mounts_all_views_offline(tmp_path):
    page, expect = synthetic_page()
    ARTIFACTS.mkdir(exist_ok=True)
    path = page.write(ARTIFACTS / "synthetic-report.html")

    dom = run_chromium(path.as_uri(), tmp_path / "profile-dom", "--dump-dom").stdout
    summary = DomSummary()
    summary.feed(dom)
    assert set(summary.inside) == set(expect)
    for vid, (tag, minimum) in expect.items():
        rendered = summary.inside[vid]
        assert rendered.get(tag, 0) >= minimum, f"{vid} did not mount: {rendered}"
        assert "sd-view-error" not in summary.classes[vid]
    pngs = [i for i in summary.imgs if (i.get("src") or "").startswith("data:image/png;base64,")]
    assert len(pngs) == 3 and len(summary.imgs) == 3  # the hostile token made no <img>
    assert "data-pwned" not in summary.body_attrs

    shot = ARTIFACTS / "synthetic-report.png"
    shot.unlink(missing_ok=True)
    run_chromium(
        path.as_uri(), tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000",
        "--hide-scrollbars",
    )
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    assert int.from_bytes(data[16:20], "big") == 1280 and int.from_bytes(data[20:24], "big") == 2000


@requires_chromium
def test_notebook_fragments_mount_side_by_side(tmp_path):
    """Two ``_repr_html_`` outputs in one document (as in an exported notebook) both mount."""
    tokens = ["a", " b", " <c>"]
    frags = [
        coefficient_view(tokens, [1.0, -2.0, 0.5])._repr_html_(),
        norm_view(tokens, np.array([[10.0, 900.0], [9.0, 11.0], [12.0, 10.0]]))._repr_html_(),
    ]
    path = tmp_path / "notebook.html"
    path.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                    + "".join(frags) + "</body></html>", encoding="utf-8")
    summary = DomSummary()
    summary.feed(run_chromium(path.as_uri(), tmp_path / "profile", "--dump-dom").stdout)
    assert len(summary.inside) == 2
    for rendered in summary.inside.values():
        assert rendered.get("span", 0) >= 2 * len(tokens), rendered


@requires_chromium
def test_csp_blocks_injected_handlers_even_without_escaping(tmp_path, monkeypatch):
    """Defence in depth: were token escaping ever lost, the page's CSP still stops the script."""
    import sd_lens.report.views

    monkeypatch.setattr(sd_lens.report.views, "_escape_token", lambda token: token)
    page, _ = synthetic_page()
    path = page.write(tmp_path / "unescaped.html")
    summary = DomSummary()
    summary.feed(run_chromium(path.as_uri(), tmp_path / "profile", "--dump-dom").stdout)
    assert len(summary.imgs) > 3  # the injection happened (the test is meaningful) ...
    assert "data-pwned" not in summary.body_attrs  # ... but its handler never ran
