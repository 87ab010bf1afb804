"""Spectra, decay eigen-check and causal hooks: properties on tiny models."""

from __future__ import annotations

import pytest
import torch

from sd_lens.analyses.causal import verify_trigger
from sd_lens.analyses.defects import find_defects
from sd_lens.analyses.explosion import (
    explosion_subspace,
    noninitial_pathway,
    vocab_coefficients,
)
from sd_lens.analyses.ffn_fit import fit_ffn
from sd_lens.analyses.probe import probe_norms
from sd_lens.analyses.spectra import (
    BlockLinearization,
    decay_check,
    layer_spectra,
    linearize_block,
    nearest_eigenvector,
)
from sd_lens.errors import InputError
from sd_lens.interventions import (
    ablation_hooks,
    ffn_input_hook_name,
    intervene,
    patching_hooks,
    project_out,
    set_coefficient,
)
from sd_lens.linalg import acute_angle_deg, svd_signed, unit
from sd_lens.models.view import model_view
from sd_lens.report.prose import defects_summary


def test_block_linearization_form(tiny):
    view = model_view(tiny)
    lin = linearize_block(view.block(1), 1, n_eval=0)
    eye = torch.eye(view.d_model)
    expected = eye + lin.A + lin.F if view.parallel else (eye + lin.F) @ (eye + lin.A)
    torch.testing.assert_close(lin.L, expected)
    assert view.parallel == (view.family == "neox")


def test_spectra_angles_are_sign_free_and_bounded(tiny):
    d = torch.randn(tiny.cfg.d_model)
    a = layer_spectra(tiny, [d, -d], n_eval=0)
    for b in a.blocks:
        assert 0.0 <= b.angles_deg[0] <= 90.0
        assert b.angles_deg[0] == pytest.approx(b.angles_deg[1], abs=1e-9)
        # u0 of L is what it says: the top left singular vector of L
        lin = linearize_block(tiny, b.layer, n_eval=0)
        assert float(acute_angle_deg(lin.L @ b.v0, b.u0)) < 1e-2
        # the same triplet with the same signs as a full SVD (svd_signed, used by FFNFit)
        U, S, Vh = svd_signed(lin.F)
        assert b.ffn_s0 == pytest.approx(float(S[0]), rel=1e-4)
        torch.testing.assert_close(b.ffn_u0, U[:, 0], atol=1e-4, rtol=0)
        torch.testing.assert_close(b.ffn_v0, Vh[0], atol=1e-4, rtol=0)
    # the direction u0 itself has angle 0 at its block
    b0 = a.blocks[0]
    assert layer_spectra(tiny, [b0.u0], layers=[0], n_eval=0).blocks[0].angles_deg[0] < 1e-3


def test_decay_check_finds_a_planted_cancelling_direction():
    d = 16
    torch.manual_seed(0)
    u = unit(torch.randn(d))
    Q, _ = torch.linalg.qr(torch.cat([u[:, None], torch.randn(d, d - 1)], 1))
    eigs = torch.linspace(0.2, 0.9, d)
    eigs[0] = -0.97  # R u = -0.97 u: the block cancels the state u
    R = Q @ torch.diag(eigs) @ Q.T
    fake = BlockLinearization(layer=5, A=R, F=torch.zeros(d, d), L=torch.eye(d) + R, parallel=True, ffn_fit=None)  # type: ignore[arg-type]
    check = decay_check(None, 5, u, lin=fake)
    assert check.eigenvalue == pytest.approx(-0.97, abs=1e-5)
    assert check.eigvec_angle_deg < 1e-3
    assert check.rayleigh == pytest.approx(-0.97, abs=1e-5)
    assert decay_check(None, 5, -u, lin=fake).rayleigh == pytest.approx(-0.97, abs=1e-5)


@pytest.mark.parametrize("phase", [0.0, 0.7, 2.0])
def test_eigenvector_angle_is_phase_free_for_complex_pairs(phase):
    # a rotation-scaling block on (e0, e1): eigenvectors (e0 -/+ i e1)/sqrt 2, 45 deg from e0 and e1
    d = 6
    R = torch.diag(torch.tensor([0.0, 0.0, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64))
    R[0, 0] = R[1, 1] = -0.5
    R[0, 1], R[1, 0] = -0.8, 0.8
    c, s = torch.cos(torch.tensor(phase)), torch.sin(torch.tensor(phase))
    rot = torch.eye(d, dtype=torch.float64)  # a rotation inside the plane moves u, not the answer
    rot[0, 0], rot[0, 1], rot[1, 0], rot[1, 1] = c, -s, s, c
    value, angle = nearest_eigenvector(R, rot[:, 0])
    assert angle == pytest.approx(45.0, abs=1e-6)
    assert value.real == pytest.approx(-0.5) and abs(value.imag) == pytest.approx(0.8)
    value, angle = nearest_eigenvector(R, unit(torch.tensor([0, 0, 1.0, 0, 0, 0], dtype=torch.float64)))
    assert angle == pytest.approx(0.0, abs=1e-5) and value.real == pytest.approx(0.3)


def test_project_out_and_set_coefficient_math():
    torch.manual_seed(0)
    act = torch.randn(2, 5, 8)
    d = torch.randn(8)
    u = unit(d)
    out = project_out(d, positions=[1, 3])(act.clone(), None)
    torch.testing.assert_close(out[:, [1, 3]] @ u, torch.zeros(2, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, [0, 2, 4]], act[:, [0, 2, 4]])
    out = set_coefficient(d, 7.0, 2)(act.clone(), None)
    torch.testing.assert_close(out[:, 2] @ u, torch.full((2,), 7.0))
    # the part orthogonal to u is untouched
    torch.testing.assert_close(out[:, 2] - (out[:, 2] @ u)[:, None] * u, act[:, 2] - (act[:, 2] @ u)[:, None] * u)
    # hooks return a new tensor (TransformerBridge ignores in-place edits of norm hooks)
    assert project_out(d)(act, None) is not act


def test_interventions_reach_the_ffn_and_leave_nothing_attached(tiny, unchanged):
    layer = 1
    tokens = tiny.to_tokens("Hello world")
    got: dict[str, torch.Tensor] = {}

    def grab(act, hook):
        got["mlp"] = act.detach().clone()

    v = torch.randn(tiny.cfg.d_model)
    with unchanged(tiny):
        tiny.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_mlp_out", grab)], return_type=None)
        clean = got["mlp"]
        tiny.run_with_hooks(
            tokens, fwd_hooks=ablation_hooks(layer, v) + [(f"blocks.{layer}.hook_mlp_out", grab)], return_type=None
        )
        assert not torch.allclose(got["mlp"], clean), "ablation did not change the FFN output"
        with pytest.raises(RuntimeError, match="boom"), intervene(tiny, patching_hooks(layer, v, 3.0, 0)):
            raise RuntimeError("boom")


def test_user_hooks_survive_our_interventions(tiny):
    calls = []
    name = ffn_input_hook_name(0)
    tiny.add_hook(name, lambda act, hook: calls.append(1))
    try:
        verify_trigger(tiny, 0, torch.randn(tiny.cfg.d_model), "Hello there")
        n = len(calls)
        tiny(tiny.to_tokens("hi"), return_type=None)
        assert len(calls) == n + 1, "the user's own hook was removed"
    finally:
        tiny.reset_hooks()


def test_verify_trigger_errors(tiny):
    with pytest.raises(InputError, match="block"):
        verify_trigger(tiny, 99, torch.randn(tiny.cfg.d_model))
    with pytest.raises(InputError):
        verify_trigger(tiny, 0, torch.randn(tiny.cfg.d_model), "")


def test_random_model_has_an_explicit_empty_or_valid_defect_report(tiny):
    probe = probe_norms(tiny, ["Hello world, the cat sat.", "Another line of text here."])
    report = find_defects(tiny, probe, threshold=50.0)
    assert report.defects == [] and len(report) == 0
    assert "no defect" in defects_summary(report)


def test_explosion_subspace_and_sweeps_on_tiny(tiny, unchanged):
    fit = fit_ffn(tiny, 0, n_eval=0)
    with unchanged(tiny):
        sub = explosion_subspace(tiny, 0, fit=fit, k=4)
        vc = vocab_coefficients(tiny, 0, fit.v0, batch_size=32, limit=64)
        pw = noninitial_pathway(tiny, 0, threshold=-1.0, batch_size=32, limit=64)
    assert sub.plus_norms.shape == (4,) and (sub.plus_norms > 0).all()
    assert vc.initial.shape == (64,) and vc.second.shape == (64,)
    assert len(pw.exploding) == 64  # negative threshold: every token "explodes"
    assert [n for _, _, n in pw.exploding] == sorted((n for _, _, n in pw.exploding), reverse=True)


def test_top_singular_matches_full_svd():
    from sd_lens.analyses.spectra import top_singular

    torch.manual_seed(1)
    m = torch.randn(40, 40) + 5 * torch.outer(torch.randn(40), torch.randn(40))
    s0, u0, v0 = top_singular(m)
    U, S, Vh = torch.linalg.svd(m.double())
    assert s0 == pytest.approx(float(S[0]), rel=1e-9)
    assert float(acute_angle_deg(u0, U[:, 0])) < 1e-3 and float(acute_angle_deg(v0, Vh[0])) < 1e-3
    torch.testing.assert_close((m @ v0.double().float()), s0 * u0, rtol=1e-4, atol=1e-4)
