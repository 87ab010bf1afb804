"""Fast tests of the circuitsvis views, the HTML page builder and the figures (no browser)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from sd_lens.errors import InputError
from sd_lens.report.figures import (
    decay_eigen_figure,
    defect_angle_figure,
    ffn_singular_figure,
    fig_to_png,
    norm_lines_figure,
)
from sd_lens.report.page import Page
from sd_lens.report.views import (
    CircuitsView,
    ViewGroup,
    attention_view,
    circuitsvis_bundle,
    coefficient_view,
    intervention_view,
    norm_view,
    script_json,
)

EVIL = "</script><img src=x onerror=alert(1)>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCRIPT_RE = re.compile(r"<script>(.*?)</script>", re.DOTALL)


@pytest.fixture()
def data():
    rng = np.random.default_rng(0)
    tokens = ["<s>", " The", EVIL, " cat", "\u2028", " sat", " &amp;", "$x$"]
    n, blocks = len(tokens), 6
    norms = rng.uniform(50, 100, (n, blocks))
    norms[0, 2:] = 20_000.0
    attn = np.tril(rng.uniform(0, 1, (3, n, n)))
    attn /= attn.sum(-1, keepdims=True)
    return tokens, norms, attn


def _all_views(data):
    tokens, norms, attn = data
    return [
        norm_view(tokens, norms),
        attention_view(tokens, attn, layer=2),
        coefficient_view(tokens, np.linspace(-3, 5, len(tokens))),
        intervention_view(tokens, norms[:, 3], norms[:, 3] / 10, title="ablate " + EVIL),
    ]


def _page(data, n_copies=1) -> str:
    page = Page("Report " + EVIL, subtitle=EVIL)
    page.heading(EVIL).paragraph(EVIL).bullets([EVIL])
    for _ in range(n_copies):
        for v in _all_views(data):
            page.view(v)
    page.figure(norm_lines_figure(data[1]), caption=EVIL)
    page.table([[EVIL, 1.5, 25_000.0]], header=["a", "b", EVIL]).code(EVIL).json({"t": EVIL})
    return page.render()


# ---------------------------------------------------------------- escaping
def test_script_json_cannot_break_out_and_roundtrips():
    value = {"tokens": [EVIL, "<!--", "a\u2028b\u2029c", "&amp;"]}
    text = script_json(value)
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in text
    assert json.loads(text) == value


def test_script_json_refuses_nan():
    with pytest.raises(ValueError):
        script_json([float("nan")])


def test_inner_html_components_get_escaped_tokens(data):
    tokens, norms, attn = data
    for view in (norm_view(tokens, norms), coefficient_view(tokens, np.ones(len(tokens))),
                 intervention_view(tokens, norms[:, 0], norms[:, 1])):
        for part in view.parts:
            toks = part.props["tokens"]
            assert toks[2] == "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
            assert toks[6] == " &amp;amp;"
            assert all("<" not in t for t in toks)
    # AttentionHeads draws on a canvas: tokens verbatim
    assert attention_view(tokens, attn, 0).props["tokens"][2] == EVIL


@pytest.mark.parametrize("component", ["ColoredTokens", "ColoredTokensMulti", "TextNeuronActivations"])
def test_views_built_directly_are_escaped_too(component):
    """A notebook shows a view without the page's CSP: escaping must not depend on the helpers."""
    nested = component == "TextNeuronActivations"
    tokens = [[EVIL, "ok"]] if nested else [EVIL, "ok"]
    view = CircuitsView(component, {"tokens": tokens, "values": [1.0, 2.0]})
    flat = view.props["tokens"][0] if nested else view.props["tokens"]
    assert flat == ["&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;", "ok"]
    assert "<img" not in view.to_html(include_bundle=False)
    assert tokens[0] == ([EVIL, "ok"] if nested else EVIL)  # the caller's list is left alone


def test_page_has_no_raw_user_markup(data):
    page = _page(data)
    assert "<img src=x" not in page
    # every "</script" in the page closes one of our own script elements
    outside = page.replace(circuitsvis_bundle(), "")
    assert outside.lower().count("</script") == outside.count("<script>") == 2
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page


# ---------------------------------------------------------------- bundle & URLs
def _url_attributes(page: str) -> list[str]:
    """Values of every attribute of the parsed page that can make a browser load something."""
    found: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            for name, value in attrs:
                if name in {"src", "href", "action", "srcset", "poster", "data", "formaction"}:
                    found.append(value or "")
                elif value and re.search(r"(https?:|//|url\()", value) and name != "content":
                    found.append(value)

    Parser().feed(page)
    return found


def test_bundle_is_embedded_once_with_many_views(data):
    page = _page(data, n_copies=3)
    assert page.count("var CircuitsVis=") == 1
    scripts = SCRIPT_RE.findall(page)
    assert len(scripts) == 2
    # per copy: norm view (peak + 6 blocks), attention, coefficient, intervention (2 runs)
    n_parts = 3 * (7 + 1 + 1 + 2)
    assert sum(len(v.parts) for v in _all_views(data)) * 3 == n_parts
    assert scripts[1].count("CircuitsVis.render(") == n_parts
    ids = re.findall(r'<div id="(sd-view-\d+)"', page)
    assert len(ids) == len(set(ids)) == n_parts
    for div_id in ids:
        assert f'CircuitsVis.render("{div_id}",' in scripts[1]


def test_bundle_has_no_closing_script_tag_or_source_map():
    bundle = circuitsvis_bundle()
    assert len(bundle) > 500_000
    assert "</script" not in bundle.lower()
    assert "sourceMappingURL" not in bundle


def test_no_external_urls(data):
    page = _page(data)
    bundle = circuitsvis_bundle()
    outside = page.replace(bundle, "")
    assert "http://" not in outside and "https://" not in outside
    attrs = _url_attributes(page)
    assert attrs and all(a.startswith("data:image/png;base64,") for a in attrs), attrs
    assert "url(" not in outside and "@import" not in outside
    # inside the bundle, URLs only appear in error messages and XML namespaces, never as a
    # loaded resource: no script/link element, no import() of an absolute URL
    assert not re.search(r"""import\(\s*["']https?:""", bundle)
    assert not re.search(r"""\.src\s*=\s*["']https?:""", bundle)


def test_csp_allows_exactly_the_page_scripts(data):
    page = _page(data)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src &#x27;none&#x27;" in csp and "img-src data:" in csp
    hashes = set(re.findall(r"sha256-([A-Za-z0-9+/=]+)", csp))
    expected = {
        base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in SCRIPT_RE.findall(page)
    }
    assert hashes == expected and len(hashes) == 2
    assert "unsafe-inline&#x27;; img" not in csp.split("script-src")[1].split(";")[0]


def test_page_without_views_has_no_bundle():
    page = Page("plain").paragraph("hello").render()
    assert "CircuitsVis" not in page and "<script" not in page
    assert "script-src &#x27;none&#x27;" in page


@pytest.mark.parametrize("which", [0, 2])
def test_repr_html_is_self_contained(data, which):
    view = _all_views(data)[which]  # a group (the norm view) and a single view (coefficients)
    frag = view._repr_html_()
    assert frag.count("var CircuitsVis=") == 1
    assert frag.count("CircuitsVis.render(") == len(view.parts) and "CircuitsVis.ColoredTokens," in frag
    ids = re.findall(r'<div id="(sd-view-[0-9a-f]+)"', frag)
    assert len(ids) == len(set(ids)) == len(view.parts)
    assert "https://" not in frag.replace(circuitsvis_bundle(), "")
    assert view.to_html(include_bundle=False).count("var CircuitsVis=") == 0


# ---------------------------------------------------------------- view contents
def test_norm_view_log_scale_makes_the_initial_token_stand_out(data):
    tokens, norms, _ = data
    view = norm_view(tokens, norms, block_labels=[f"b{i}" for i in range(norms.shape[1])])
    assert isinstance(view, ViewGroup) and view.layout == "grid" and view.kind == "norm"
    assert view.components == ["ColoredTokens"] * 7  # one line per block, no ColoredTokensMulti
    labels = [p.title for p in view.parts]
    assert labels[0] == "peak" and labels[1:] == [f"b{i}" for i in range(6)]
    values = _values(view)
    assert values.shape == (len(tokens), 7)
    assert np.argmax(values[:, 0]) == 0
    assert values[0, 0] > 2 and np.all(np.abs(values[1:, 1:]) < 0.5)
    bound = view.parts[0].props["maxValue"]
    assert bound == pytest.approx(np.abs(values).max(), abs=1e-4)  # full colour at the largest value
    assert all(p.props["maxValue"] == bound and p.props["minValue"] == -bound for p in view.parts)  # one scale
    lin = norm_view(tokens, norms, scale="linear", include_peak=False)
    assert np.allclose(_values(lin), np.round(norms, 4))


def _values(group: ViewGroup) -> np.ndarray:
    """``[n_tokens, n_parts]``: each part's values as a column."""
    return np.array([p.props["values"] for p in group.parts]).T


def test_intervention_view_shows_both_runs_on_one_scale(data):
    tokens, norms, _ = data
    before, after = norms[:, 3], norms[:, 3].copy()
    after[0] = 1.0
    view = intervention_view(tokens, before, after, title="ablate", labels=("clean", "ablated"))
    assert isinstance(view, ViewGroup) and view.layout == "row" and view.kind == "intervention"
    assert view.components == ["ColoredTokens", "ColoredTokens"]
    assert [p.title for p in view.parts] == ["clean", "ablated"]
    assert np.allclose(_values(view), np.round(np.stack([before, after], 1), 4))
    assert {(p.props["minValue"], p.props["maxValue"]) for p in view.parts} == {(-before.max(), before.max())}
    html = view.to_html(include_bundle=False, div_ids=["a1", "a2"])
    assert html.index('class="sd-group sd-group-row"') < html.index('id="a1"') < html.index('id="a2"')
    assert ">clean</div>" in html and ">ablated</div>" in html
    logged = intervention_view(tokens, before, after, scale="log")
    assert np.allclose(_values(logged)[:, 0], np.round(np.log10(before), 4))


def test_no_helper_uses_a_component_with_bound_inputs(data):
    """``ColoredTokensMulti`` renders text inputs (and Reset buttons) for its colour bounds."""
    for view in _all_views(data):
        assert "ColoredTokensMulti" not in [p.component for p in view.parts]


def test_view_group_checks_its_parts(data):
    part = _all_views(data)[2]
    with pytest.raises(InputError):
        ViewGroup(())
    with pytest.raises(InputError):
        ViewGroup((part, "<b>not a view</b>"))  # type: ignore[arg-type]
    with pytest.raises(InputError):
        ViewGroup((part,), layout="carousel")  # type: ignore[arg-type]
    group = ViewGroup((part, part), title="t " + EVIL)
    with pytest.raises(InputError):
        group.mount_js(["only-one"])
    with pytest.raises(InputError):
        group.container_html(["ok", 'x");alert(1);("'])
    assert "<img" not in group.to_html(include_bundle=False)


def test_views_accept_torch_and_lists(data):
    torch = pytest.importorskip("torch")
    tokens, norms, attn = data
    a = norm_view(tokens, torch.tensor(norms, dtype=torch.float16).float())
    b = attention_view(tokens, attn.tolist(), layer="x")
    assert a.parts[0].props["values"] and b.props["attentionHeadNames"][0] == "LxH0"


@pytest.mark.parametrize(
    "make",
    [
        lambda t, n, a: norm_view(t[:-1], n),
        lambda t, n, a: norm_view(t, n[:, 0]),
        lambda t, n, a: norm_view(t, np.where(n > 0, np.nan, n)),
        lambda t, n, a: norm_view(t, n, block_labels=["x"]),
        lambda t, n, a: norm_view(t, n, scale="cubic"),
        lambda t, n, a: attention_view(t, a[:, :, :-1], 0),
        lambda t, n, a: coefficient_view(t, [np.inf] * len(t)),
        lambda t, n, a: intervention_view(t, n[:, 0], n[:-1, 0]),
        lambda t, n, a: intervention_view(t, n[:, 0] - 100, n[:, 0], scale="log"),
        lambda t, n, a: CircuitsView("NoSuchComponent", {}),
        lambda t, n, a: norm_view(t, n, block_labels=["only one"]),
        lambda t, n, a: attention_view(t, a, 0, head_labels=["h"] * (a.shape[0] + 1)),
    ],
)
def test_bad_input_is_refused(data, make):
    with pytest.raises(InputError):
        make(*data)


def test_labels_are_used(data):
    tokens, norms, pattern = data
    blocks = [f"b{i}" for i in range(norms.shape[1])]
    heads = [f"head-{i}" for i in range(pattern.shape[0])]
    assert [p.title for p in norm_view(tokens, norms, block_labels=blocks, include_peak=False).parts] == blocks
    assert attention_view(tokens, pattern, 3, head_labels=heads).props["attentionHeadNames"] == heads
    assert attention_view(tokens, pattern, 3).props["attentionHeadNames"][0] == "L3H0"


def test_page_refuses_bad_ids_and_non_png(data):
    with pytest.raises(InputError):
        _all_views(data)[2].mount_js('x");alert(1);("')
    group = _all_views(data)[0]
    with pytest.raises(InputError):
        group.mount_js(['x");alert(1);("'] * len(group.parts))
    with pytest.raises(InputError):
        Page("p").figure(b"GIF89a...")
    with pytest.raises(InputError):
        Page("p").view("<b>not a view</b>")


def test_page_write(tmp_path, data):
    page = Page("t")
    page.view(_all_views(data)[2])
    path = page.write(tmp_path / "sub" / "index.html")
    assert path.read_text(encoding="utf-8") == page.render()


# ---------------------------------------------------------------- figures
def test_figures_produce_small_pngs(data):
    tokens, norms, _ = data
    rng = np.random.default_rng(1)
    figs = [
        norm_lines_figure(norms, tokens=tokens, highlight=[0, 7], block_labels=list("abcdef")),
        defect_angle_figure(np.array([[80, 60, 5.9, 70, np.nan, 50], [88, 3.0, 40, 60, 70, 80]]),
                            defect_labels=["D1", "D2 $"], explosion_blocks=[2, 1]),
        decay_eigen_figure(["D1 / block 9", "D2 / block 28", "D2 / block 29"], [-0.9, 3.0, -1.0], [-5.6, 720, -51.3]),
        decay_eigen_figure(["only"], [-0.5], [-0.7]),
        ffn_singular_figure(np.r_[3000.0, rng.uniform(5, 20, 15)], rng.uniform(5, 20, 16), baseline=12.0),
        ffn_singular_figure([1.0, 2.0], log=False),
    ]
    for fig in figs:
        png = fig_to_png(fig, dpi=100)
        assert png.startswith(PNG_MAGIC)
        assert 2_000 < len(png) < 150_000
    assert len(fig_to_png(figs[0], dpi=50)) < len(fig_to_png(figs[0], dpi=100))


def test_figures_refuse_bad_input(data):
    tokens, norms, _ = data
    with pytest.raises(InputError):
        norm_lines_figure(norms, tokens=tokens[:-1])
    with pytest.raises(InputError):
        norm_lines_figure(norms, highlight=[99])
    with pytest.raises(InputError):
        defect_angle_figure(np.zeros((2, 6)), explosion_blocks=[1])
    with pytest.raises(InputError):
        decay_eigen_figure(["a", "b"], [1.0], [1.0, 2.0])
    with pytest.raises(InputError):
        ffn_singular_figure([1.0, np.inf])


def test_page_embeds_figure_objects_and_png_bytes(data):
    fig = norm_lines_figure(data[1])
    page = Page("f").figure(fig, "as figure").figure(fig_to_png(fig), "as bytes").render()
    assert page.count('src="data:image/png;base64,') == 2


def test_attention_view_keeps_the_embedded_data_small():
    rng = np.random.default_rng(2)
    n = 200
    attn = np.tril(rng.uniform(0, 1, (9, n, n)))
    attn /= attn.sum(-1, keepdims=True)
    view = attention_view([f"t{i}" for i in range(n)], attn, layer=3)
    assert len(view.props["tokens"]) == 64 and np.array(view.props["attention"]).shape == (9, 64, 64)
    assert view.caption.startswith("First 64 of 200 tokens")
    assert len(view.props_json()) < 200_000
    full = attention_view([f"t{i}" for i in range(8)], attn[:, :8, :8], layer=3, max_tokens=None)
    assert np.array(full.props["attention"]).shape == (9, 8, 8)
    assert full.props["attention"][0][0][1:] == [0] * 7  # masked half sent as bare zeros
