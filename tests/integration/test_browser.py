"""The HTML page in a real browser: headless Debian ``chromium`` with networking cut off.

Checks that every circuitsvis view mounted (its ``<div>`` holds the elements the React
component renders), that a before/after view shows both runs at once, that the page holds no
form control, that the figures are there, that a hostile token stays text, and keeps a
screenshot in ``artifacts/``. ``make browser`` (a dependency of ``make test``) installs Chromium;
without it these tests are skipped.
"""

from __future__ import annotations

import numpy as np
import pytest

from chromium import ARTIFACTS, DomSummary, blueness, requires_chromium, run_chromium
from sd_lens.report.figures import (
    decay_eigen_figure,
    defect_angle_figure,
    norm_lines_figure,
)
from sd_lens.report.page import Page
from sd_lens.report.views import (
    View,
    attention_view,
    coefficient_view,
    intervention_view,
    norm_view,
)

pytestmark = pytest.mark.browser

# A token that, were it ever inserted as markup, would mark the page as compromised.
# No spaces: circuitsvis turns whitespace into &nbsp;, which would defuse a spaced payload.
HOSTILE = "</script><img/src/onerror=document.body.dataset.pwned=1>"


def synthetic_page() -> tuple[Page, dict[str, tuple[str, int]], list[str]]:
    """A page with 4 views (16 circuitsvis mounts) and 3 figures from synthetic data.

    Returns the page; per mount element, (tag, minimum count) of what it must render; and the two
    mount elements of the intervention view (clean, ablated).
    """
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
    expect: dict[str, tuple[str, int]] = {}

    def add(view: View, tag: str, minimum: int) -> list[str]:
        ids = [f"sd-view-{page.n_views + i + 1}" for i in range(len(view.parts))]
        page.view(view)
        expect.update((i, (tag, minimum)) for i in ids)
        return ids

    add(intervention_view(tokens, before, after, title="Ablate v0 at block 6", labels=("clean", "ablated")),
        "span", 2 * n)  # ColoredTokens: 2 spans per token
    add(norm_view(tokens, norms), "span", 2 * n)  # one ColoredTokens per block, plus peak
    add(attention_view(tokens, attn, layer=6), "canvas", heads + 1)  # AttentionHeads: one chart per head + zoomed
    add(coefficient_view(tokens, rng.normal(0, 1, n) + np.r_[30, np.zeros(n - 1)]), "span", 2 * n)
    page.heading("Figures")
    page.figure(norm_lines_figure(norms, tokens, highlight=[0, 6]), "Norms across blocks")
    page.figure(
        defect_angle_figure(rng.uniform(40, 90, (2, blocks)), explosion_blocks=[2, 6]), "Angle of u0 to each defect"
    )
    page.figure(decay_eigen_figure(["D1 / block 5", "D2 / block 10"], [-0.8, -1.0], [-5.6, -51.3]), "Decay")
    page.table([["D1", 2, 5], ["D2", 6, 10]], header=["defect", "explosion", "decay"])
    assert len(expect) == 2 + (blocks + 1) + 1 + 1
    return page, expect, ["sd-view-1", "sd-view-2"]


@requires_chromium
def test_page_mounts_all_views_offline(tmp_path):
    page, expect, (clean, ablated) = synthetic_page()
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

    # no form control anywhere (ColoredTokensMulti would add 2 text inputs and 2 buttons per view)
    assert not {"input", "button", "select", "textarea"} & set(summary.tags), summary.tags
    # both runs of the intervention are drawn on load, with no hover: the initial token is dark
    # blue in the clean run and pale in the ablated one; the other tokens look the same in both
    assert len(summary.colours[clean]) == len(summary.colours[ablated]) == 12
    assert blueness(summary.colours[clean][0]) > 0.9 and blueness(summary.colours[ablated][0]) < 0.1
    assert summary.colours[clean][1:] == summary.colours[ablated][1:]
    assert dom.index(f'id="{clean}"') < dom.index(f'id="{ablated}"')
    group = dom[dom.rindex('class="sd-group sd-group-row"', 0, dom.index(f'id="{clean}"')):]
    assert group.index(f'id="{ablated}"') < group.index("</figure>")  # side by side in one row

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
    assert len(summary.inside) == 1 + 3  # the coefficients; the norm view's peak and 2 blocks
    for rendered in summary.inside.values():
        assert rendered.get("span", 0) >= 2 * len(tokens), rendered


@requires_chromium
def test_csp_blocks_injected_handlers_even_without_escaping(tmp_path, monkeypatch):
    """Defence in depth: were token escaping ever lost, the page's CSP still stops the script."""
    import sd_lens.report.views

    monkeypatch.setattr(sd_lens.report.views, "_escape_token", lambda token: token)
    page, _, _ = synthetic_page()
    path = page.write(tmp_path / "unescaped.html")
    summary = DomSummary()
    summary.feed(run_chromium(path.as_uri(), tmp_path / "profile", "--dump-dom").stdout)
    assert len(summary.imgs) > 3  # the injection happened (the test is meaningful) ...
    assert "data-pwned" not in summary.body_attrs  # ... but its handler never ran
