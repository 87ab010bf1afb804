"""The rotation check (issue #23 item 4) and the causal ranking (item 5) on tiny models of every family."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import token_embedding
from sd_lens.analyses.causal_ranking import causal_ranking
from sd_lens.analyses.causal_score import CausalScore, ranked
from sd_lens.analyses.defects import find_defects
from sd_lens.analyses.probe import probe_norms
from sd_lens.analyses.rotation_check import (
    fixing_ones,
    hadamard_matrix,
    random_orthogonal,
    randomized_hadamard,
    rotation_check,
    rotation_hooks,
)
from sd_lens.corpus import default_corpus
from sd_lens.errors import InputError
from sd_lens.models.tiny import FAMILIES, tiny_model

TEXTS = default_corpus(8)
HELD_OUT = default_corpus(16)[8:]


# ------------------------------------------------------------------------------------------------
# the matrices
# ------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=160))
def test_hadamard_matrix_is_orthogonal_up_to_n(n):
    h, how = hadamard_matrix(n)
    assert h.shape == (n, n)
    torch.testing.assert_close(h @ h.T, n * torch.eye(n, dtype=torch.float64), atol=1e-9, rtol=0)
    if "random orthogonal" not in how:  # a true Hadamard matrix: entries +-1
        assert bool((h.abs() == 1).all()), how


@pytest.mark.parametrize("n, how", [(576, "Paley H_36 ⊗ Sylvester H_16"), (640, "Paley H_20 ⊗ Sylvester H_32"),
                                    (64, "Sylvester H_64")])
def test_hadamard_of_the_bundled_widths(n, how):
    """SmolLM2 (576) and Gemma-3 (640) get true Hadamard matrices, not the random fallback."""
    assert hadamard_matrix(n)[1] == how


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=2, max_value=96), st.integers(min_value=0, max_value=1000))
def test_rotations_are_orthogonal_and_fixing_ones_fixes_ones(d, seed):
    eye = torch.eye(d, dtype=torch.float64)
    for q in (random_orthogonal(d, seed), randomized_hadamard(d, seed)[0]):
        torch.testing.assert_close(q @ q.T, eye, atol=1e-9, rtol=0)
        f = fixing_ones(q)
        torch.testing.assert_close(f @ f.T, eye, atol=1e-9, rtol=0)
        torch.testing.assert_close(f @ torch.ones(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64),
                                   atol=1e-9, rtol=0)


def test_randomized_hadamard_flattens_a_channel():
    q, _ = randomized_hadamard(64, 3)
    assert torch.allclose(q.abs(), torch.full_like(q, 1 / 8))  # every channel spread evenly over all 64


# ------------------------------------------------------------------------------------------------
# the hooks: the same function in another basis, nothing left behind
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["random", "hadamard"])
def test_logits_unchanged_and_stream_rotated(tiny, unchanged, kind):
    d = tiny.cfg.d_model
    q = random_orthogonal(d, 1) if kind == "random" else randomized_hadamard(d, 1)[0]
    if tiny.cfg.normalization_type not in ("RMS", "RMSPre"):
        q = fixing_ones(q)
    tokens = tiny.to_tokens(["The cat sat on the mat.", "A dog."])
    grabbed = {}

    def grab(act, hook):
        grabbed["x"] = act.detach().clone()

    name = f"blocks.{tiny.cfg.n_layers - 1}.hook_resid_post"
    with unchanged(tiny), torch.no_grad():
        clean, cache = tiny.run_with_cache(tokens)
        rotated = tiny.run_with_hooks(tokens, fwd_hooks=rotation_hooks(tiny, q) + [(name, grab)])
    assert (rotated - clean).abs().max() < 1e-4
    torch.testing.assert_close(grabbed["x"], cache[name] @ q.float(), atol=1e-4, rtol=1e-4)


def test_rotation_hooks_refuse_bad_matrices(tiny):
    d = tiny.cfg.d_model
    with pytest.raises(InputError, match="d_model"):
        rotation_hooks(tiny, torch.eye(d + 1))
    with pytest.raises(InputError, match="orthogonal"):
        rotation_hooks(tiny, 2 * torch.eye(d))
    if tiny.cfg.normalization_type not in ("RMS", "RMSPre"):
        with pytest.raises(InputError, match="all-ones"):
            rotation_hooks(tiny, random_orthogonal(d, 0))


# ------------------------------------------------------------------------------------------------
# a planted mechanism: one token that is a defect *and* a massive channel
# ------------------------------------------------------------------------------------------------
_planted: dict[str, tuple] = {}


def _skip_gemma3_on_transformer_lens_2(family: str) -> None:
    from sd_lens.models.hooked import backend

    if family == "gemma3" and backend() == "hooked":
        pytest.skip("TransformerLens 2.x's Gemma-3 rescales the planted embedding: channel 7 is not massive by "
                    "Sun et al.'s criterion there, so there is no channel to vanish (the defect still survives)")


def planted(family: str) -> tuple:
    """A private tiny model whose space token embeds as 300 in channel 7 only (a high-norm token along one
    channel: a defect and a massive activation at once), its defects and both analyses, once per family."""
    if family not in _planted:
        model = tiny_model(family, seed=1, n_layers=3, d_model=256)
        with torch.no_grad():
            e = token_embedding(model)
            space = int(model.to_tokens(" ", prepend_bos=False)[0, 0])
            e[space] = 0.0
            e[space, 7] = 300.0
        report = find_defects(model, probe_norms(model, TEXTS))
        check = rotation_check(model, report, TEXTS)
        ranking = causal_ranking(model, report, held_out=HELD_OUT, texts=TEXTS, seeds=2)
        _planted[family] = (model, report, check, ranking)
    return _planted[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_planted_channel_vanishes_while_the_defect_survives(family):
    _skip_gemma3_on_transformer_lens_2(family)
    model, report, check, _ = planted(family)
    assert len(report) == 1
    assert check.restored and check.separates
    for run in check.runs:
        assert run.logits_max_error < 1e-4
        assert run.massive_before > 0 and run.massive_after == 0
        (d,) = run.defects
        assert d.n_states > 0 and abs(d.norm_ratio - 1) < 1e-5 and abs(d.component_ratio - 1) < 1e-5
        assert d.top_channel_share_before > 0.99 > 0.2 > d.top_channel_share_after
        (c,) = run.channels
        assert c.channel == 7 and c.before > 1000 and c.vanishes and c.massive_after == 0
        assert c.after < c.before / 5
    hadamard = check.run("hadamard")
    assert hadamard.channels[0].after < hadamard.channels[0].before / 10  # flattened over 256 channels
    js = check.to_dict()
    assert js["separates"] and [r["kind"] for r in js["runs"]] == ["random", "hadamard"]


def test_rotation_check_leaves_the_model_unchanged(tiny, unchanged):
    report = find_defects(tiny, probe_norms(tiny, TEXTS[:4]))
    with unchanged(tiny):
        check = rotation_check(tiny, report, TEXTS[:4], kinds=("hadamard",))
    assert check.restored and [r.kind for r in check.runs] == ["hadamard"]
    with pytest.raises(InputError, match="kinds"):
        rotation_check(tiny, report, TEXTS[:4], kinds=("householder",))


@pytest.mark.parametrize("family", FAMILIES)
def test_ranking_of_the_planted_findings(family):
    _skip_gemma3_on_transformer_lens_2(family)
    model, report, _, ranking = planted(family)
    names = [f.name for f in ranking]
    assert sorted(names) == ["D0", "c7@0"]
    kls = [f.score.kl for f in ranking]
    assert kls == sorted(kls, reverse=True)
    assert [f.score for f in ranking] == ranked(f.score for f in ranking)
    for f in ranking:
        assert f.n_edited > 0 and f.score.control_kl is not None and len(f.control_seeds) == 2
        assert f.label == ("massive but inert" if f.score.kl < ranking.inert_kl else "causal")
        assert math.isfinite(f.score.ppl_ratio)
    js = ranking.to_dict()
    assert [f["name"] for f in js["findings"]] == names
    assert js["inert"] == [f.name for f in ranking if f.score.inert]


def test_inert_label_follows_the_threshold(unchanged):
    model, report, _, _ = planted("llama")
    with unchanged(model):
        everything = causal_ranking(model, report, held_out=HELD_OUT, texts=TEXTS, seeds=0, inert_kl=1e9)
    assert [f.label for f in everything] == ["massive but inert"] * len(everything)
    assert all(f.score.control_kl is None for f in everything)
    assert "massive but inert" in everything.summary()
    assert all(f["label"] == "massive but inert" and f["inert"] for f in everything.to_dict()["findings"])
    with pytest.raises(InputError, match="inert_kl"):
        causal_ranking(model, report, held_out=HELD_OUT, texts=TEXTS, inert_kl=0)
    with pytest.raises(InputError, match="held-out"):
        causal_ranking(model, report, held_out=TEXTS[:2], texts=TEXTS)


def test_ranking_order_is_by_kl_then_perplexity():
    scores = [CausalScore("a", 2.0, 0.5), CausalScore("b", 9.0, 3.0), CausalScore("c", 1.0, 0.01)]
    assert [s.name for s in ranked(scores)] == ["b", "a", "c"]
    assert [s.label for s in ranked(scores)] == ["causal", "causal", "massive but inert"]


def test_pipeline_json_report_and_cli_summary(tmp_path):
    """run_analysis with rotation and causal_ranking: the JSON keys, the report sections and the summary sentences."""
    from sd_lens.pipeline import AnalysisConfig, run_analysis
    from sd_lens.report.build import page_sections
    from sd_lens.report.prose import ranking_table, rotation_table
    from sd_lens.report.results import findings_summary

    model, _, _, _ = planted("llama")
    result = run_analysis(model, TEXTS, rotation=True, causal_ranking=True, inert_kl=1e9, held_out_lines=8)
    js = result.to_dict()
    assert js["rotation_check"]["separates"] is True
    assert [f["label"] for f in js["causal_ranking"]["findings"]] == ["massive but inert"] * 2
    text = findings_summary(result)
    assert "every defect survives and every massive channel vanishes" in text and "massive but inert" in text
    assert rotation_table(result)[1] and ranking_table(result)[1]
    assert {"rotation_section", "ranking_section"} <= {s.__name__ for s in page_sections()}
    from sd_lens.report.build import ReportContext, summary_section
    from sd_lens.report.page import Page
    from sd_lens.report.results import ranking_section, rotation_section

    page = Page("t")
    ctx = ReportContext(model, result, "x", 0, {}, {}, 0.0)
    for section in (summary_section, rotation_section, ranking_section):
        section(page, ctx)
    html = page.render()
    assert "Rotation: directions survive, channels vanish" in html and "Causal ranking: which findings matter" in html
    assert html.count("massive but inert") >= 3  # summary, section text, table rows
    assert "rotation_check" not in run_analysis(model, TEXTS[:4]).to_dict()
    with pytest.raises(InputError, match="inert_kl"):
        AnalysisConfig(inert_kl=-1.0)


def test_cli_flags():
    from sd_lens.cli import build_parser, config_from_args

    args = build_parser().parse_args(["analyze", "--rotation", "--causal-ranking", "--inert-kl", "0.5"])
    cfg = config_from_args(args)
    assert cfg.rotation and cfg.causal_ranking and cfg.inert_kl == 0.5


def test_rotation_page_names_no_block_channel_or_token_of_a_model():
    """docs/rotation.md reads every block and channel from the results: no such number in its Python blocks."""
    from pathlib import Path

    from conftest import tutorial_module

    page = Path(__file__).resolve().parents[2] / "docs" / "rotation.md"
    code = "\n".join(b.body for b in tutorial_module().blocks(page.read_text(encoding="utf-8")) if b.lang == "python")
    assert "rotation_check(" in code and "causal_ranking(" in code
    from sd_lens.cli import build_parser

    for line in tutorial_module().cli_lines(page.read_text(encoding="utf-8")):
        args = build_parser().parse_args(line.split()[1:])
        assert args.rotation and args.causal_ranking
    for forbidden in ("507", "400", "163", "@11", "@0", "@3", "block=", "layer="):
        assert forbidden not in code, forbidden
