"""The paper's claims measured on the real bundled models (issue 3 acceptance).

Numbers in comments are what we measured (default corpus, Gaussian closed-form FFN fit);
../shared/SPEC.md has the reference measurements.
"""

from __future__ import annotations

import json

import pytest

from conftest import shared_call
from sd_lens.corpus import default_corpus
from sd_lens.pipeline import AnalysisConfig, run_analysis


@pytest.fixture(scope="module")
def result(smollm2_analysis):
    return smollm2_analysis


def test_two_defects_born_at_blocks_2_and_11(result):
    defects = result.defects.defects
    assert [d.explosion_layer for d in defects] == [2, 11]
    d1, d2 = defects
    # D1: initial token and " the" (measured: 19 of 26 distinct carriers are ' the' / ' ')
    assert d1.initial_token and " the" in [t for t, _ in d1.noninitial_tokens[:3]]
    assert 8 <= d1.last_layer <= 9
    # D2: the initial token, peak ~25 100 vs typical ~140. Besides it, only a few tokens at
    # position 1 (the first word after BOS) reach a fraction of it (measured: 'Assert' ~3 000).
    assert d2.initial_token and d2.peak_norm > 20_000 and d2.typical_norm < 500
    positions = {e.position for e in d2.episodes if not e.initial}
    assert positions <= {1}
    assert d2.last_layer == result.n_layers - 1


def test_singular_direction_predicts_each_defect(result):
    for k, (d, f) in enumerate(zip(result.defects, result.findings)):
        # measured: 11.3 deg (block 2) and 4.7 deg (block 11); SPEC: 11.2 and 5.9
        assert f.predicted_angle_deg <= 15.0
        assert f.ffn_angle_deg <= 15.0  # measured 9.1 and 4.0; SPEC 8.5 and 4.7
        # the explosion block is the closest of all blocks (others can come close: block 28)
        assert f.closest_block == d.explosion_layer
        angles = result.spectra.angles(k)
        assert float(angles.min()) == pytest.approx(f.predicted_angle_deg)


def test_decay_checks_have_the_measured_signs(result):
    d1, d2 = result.findings
    by_layer1 = {c.layer: c for c in d1.decay_checks}
    by_layer2 = {c.layer: c for c in d2.decay_checks}
    assert set(result.defects[0].decay_layers) == set(by_layer1) and 9 in by_layer1
    assert set(result.defects[1].decay_layers) == set(by_layer2) and {28, 29} <= set(by_layer2)
    assert by_layer1[9].rayleigh < 0  # measured -1.9 (SPEC -5.6)
    assert by_layer2[29].rayleigh < 0  # measured -15.1 (SPEC -51.3)
    assert by_layer2[28].rayleigh > 0  # measured +221 (SPEC +720): block 28 is no cancelling block


def test_causal_verification_at_block_11(result):
    c = result.findings[1].causal
    assert c.layer == 11
    assert c.norm_before > 20_000
    assert c.norm_after < 1_000  # measured 195 (SPEC 156)
    assert c.random_control_after > 15_000  # measured 25 101
    assert float(c.norms_patched[c.position]) > 10_000  # measured 23 260 (SPEC 21 071)
    assert float(c.norms_clean[c.position]) < 1_000


def test_v0_dominates_the_explosion_subspace(result):
    sub = result.findings[1].subspace
    assert sub.dominant == 0
    # measured: |f(+sqrt(d) v0)| = 68 800 vs at most ~3 000 for v1..v7 and ~190 for random directions
    assert float(sub.plus_norms[0]) > 10 * float(max(sub.plus_norms[1:].max(), sub.minus_norms.max()))
    assert float(sub.plus_norms[0]) > 100 * float(sub.random_norms.mean())


def test_json_contract(result, tmp_path):
    data = json.loads(result.to_json(tmp_path / "a.json"))
    for key in ["model", "n_layers", "d_model", "defects", "layers", "timings_s"]:
        assert key in data
    assert data["n_layers"] == 30 and data["d_model"] == 576
    d = data["defects"][1]
    for key in [
        "explosion_layer", "decay_layers", "peak_norm", "typical_norm", "initial_token", "noninitial_tokens",
        "predicted_angle_deg", "ffn_angle_deg", "decay_checks", "ablation", "patching",
    ]:
        assert key in d
    assert set(d["ablation"]) >= {"norm_before", "norm_after", "random_control_after"}
    assert set(d["patching"]) >= {"position", "norm_before", "norm_after"}
    assert set(d["decay_checks"][0]) >= {"layer", "eigenvalue", "eigvec_angle_deg", "rayleigh"}
    assert len(data["layers"]) == 30 and len(data["layers"][0]["angles_deg"]) == 2
    assert json.loads((tmp_path / "a.json").read_text()) == data


def test_same_seed_same_json_and_the_model_unchanged(smollm2, unchanged):
    """The same model, texts and seed in one process: the same JSON, bit for bit (but the timings); and
    the model is the same after two analyses (weights, hooks, logits). Eight texts: bit-exactness does
    not depend on the corpus size, and two full-corpus analyses cost ~30 s more."""
    texts = default_corpus(8)
    with unchanged(smollm2):
        a = run_analysis(smollm2, texts, seed=0).to_dict()
        b = run_analysis(smollm2, texts, seed=0).to_dict()
    a.pop("timings_s"), b.pop("timings_s")
    assert a["defects"] and a == b


def test_gemma3_completes(gemma3_analysis):
    res = gemma3_analysis
    data = res.to_dict()
    assert data["n_layers"] == 18 and data["architecture"] == "Gemma3ForCausalLM"
    # measured: the initial token is 10-30x the median from block 0 and grows steadily
    assert len(res.defects) >= 1 and any(d.initial_token for d in res.defects)
    for f in res.findings:
        assert 0.0 <= f.predicted_angle_deg <= 90.0


def test_gemma3_channel_lens_finds_the_masked_defect_channel(gemma3):
    """With no Gemma-specific code: the initial token's defect lives in channel 400 as it enters blocks 0-6, a
    channel the pre-FFN norm masks there (effective scale 1 + w = 0), then in channel 163, which the post-FFN
    norm amplifies (gains 585-741 at blocks 3-5). Measured on the default corpus: shares 0.13 and 0.87.
    The analysis is the channel tutorial's (docs/channel_tutorial.md), shared with its executed page."""
    res = shared_call(run_analysis, gemma3, config=AnalysisConfig(channels=True, local_checks=True))
    owners = res.outliers.channel_defects(res.defects)
    assert set(owners) == {400, 163} and all(lab == "D0" for lab, _ in owners.values())
    assert owners[163][1] > 0.8 and owners[400][1] > 0.1
    assert all(res.weights.masked_before_ffn(b, 400) for b in range(0, 7))
    assert all(res.weights.is_amplified(b, 163, "mlp_post") for b in (3, 4, 5))
    assert res.outliers.blocks_of(400) == list(range(0, 7)) and res.outliers.blocks_of(163) == list(range(3, 15))
    (att,) = list(res.attribution)
    assert set(att.explosion_set) >= {3, 4, 5, 6, 7, 8}  # a build-up over blocks, FFN-dominated
    assert all(float(att.ffn[b]) > float(att.attn[b]) for b in range(3, 9))
