"""The rotation check and the causal ranking on both bundled models, and their executed page docs/rotation.md.

Every result comes from ``conftest.rotation_and_ranking``: the same calls as the page, shared through
``shared_call`` (the page's calls are served from it too), on the channel tutorial's shared analyses.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import rotation_and_ranking, run_page

PAGE = Path(__file__).resolve().parents[2] / "docs" / "rotation.md"


@pytest.mark.real_model
def test_smollm2_defects_survive_the_rotation_and_its_channel_vanishes(smollm2):
    result, check, _ = rotation_and_ranking(smollm2)
    assert check.restored and check.separates
    assert [r.kind for r in check.runs] == ["random", "hadamard"]
    assert check.run("hadamard").construction.endswith("Paley H_36 ⊗ Sylvester H_16")
    channels = result.outliers.channels("resid_post")
    for run in check.runs:
        assert run.logits_max_error < 1e-3  # measured: 9e-5 (float32 logits up to 27)
        assert run.massive_before > 0 and run.massive_after == 0  # measured: 26 -> 0
        assert [d.label for d in run.defects] == [d.label for d in result.defects]
        for d in run.defects:
            assert d.survives and abs(d.norm_ratio - 1) < 1e-5  # measured: 1.000000
            assert d.top_channel_share_before > 0.9 > 0.05 > d.top_channel_share_after  # measured 0.91-0.98 -> <0.02
        assert {c.channel for c in run.channels} <= set(channels)
        for c in run.channels:
            assert c.vanishes and c.before > 10_000 and c.after < c.before / 10  # measured: 12 720 -> 677 / 244


@pytest.mark.real_model
def test_gemma3_defect_survives_the_rotation_and_its_channels_vanish(gemma3):
    result, check, _ = rotation_and_ranking(gemma3)
    assert check.restored and check.separates
    assert check.run("hadamard").construction.endswith("Paley H_20 ⊗ Sylvester H_32")
    for run in check.runs:
        assert run.logits_max_error < 2e-3  # measured: 3.6e-4 (a state of norm ~4e4 in float32)
        assert run.massive_before > 0 and run.massive_after == 0  # measured: 29 -> 0
        (d,) = run.defects
        assert d.survives and abs(d.norm_ratio - 1) < 1e-5
        assert len(run.channels) == 2 and all(c.vanishes and c.after < c.before / 100 for c in run.channels)


@pytest.mark.real_model
def test_smollm2_every_finding_is_causal(smollm2):
    result, _, ranking = rotation_and_ranking(smollm2)
    names = [f.name for f in ranking]
    assert set(names) >= {d.label for d in result.defects}
    kls = [f.score.kl for f in ranking]
    assert kls == sorted(kls, reverse=True)
    assert not ranking.inert  # every finding of SmolLM2 matters
    for f in ranking:
        assert f.n_edited > 0 and len(f.control_seeds) == 2
        assert f.score.kl > 1.0 and f.score.ppl_ratio > 5  # measured: KL 3.5-12.7, perplexity x8.9 - x6e4
        assert f.score.control_kl < 0.2  # measured: <= 0.13 (2 seeds)
    top = ranking[0]
    assert top.kind == "massive activation" and top.score.kl > 10  # the channel of D1 at its emergence block


@pytest.mark.real_model
def test_gemma3_channels_are_massive_but_inert(gemma3):
    _, _, ranking = rotation_and_ranking(gemma3)
    assert ranking[0].name == "D0" and ranking[0].score.kl > 1.0  # measured: KL 4.4, perplexity x37
    assert ranking[0].score.kl > ranking[0].score.control_kl + 1.0  # measured: control KL 2.6 (2 seeds)
    massive = [f for f in ranking if f.kind == "massive activation"]
    assert len(massive) == 2
    for f in massive:
        assert f.label == "massive but inert" and f.score.kl < 0.1  # measured: 0.070, 0.053
        assert f.n_edited > 0
    assert ranking.to_dict()["inert"] == [f.name for f in massive]


@pytest.mark.real_model
def test_rotation_page_runs(smollm2, gemma3, tmp_path, monkeypatch):
    """docs/rotation.md's Python blocks, in order; its calls are served from the shared results above (taken
    before the page runs: inside it the functions are the page's serving wrappers)."""
    _, smol_check, smol_rank = rotation_and_ranking(smollm2)
    _, gemma_check, gemma_rank = rotation_and_ranking(gemma3)
    ns = run_page(PAGE, tmp_path, monkeypatch, {"smollm2-135m-instruct": smollm2, "gemma-3-270m": gemma3})
    assert ns["smol_check"] is smol_check and ns["smol_rank"] is smol_rank
    assert ns["gemma_check"] is gemma_check and ns["gemma_rank"] is gemma_rank
