"""Analysis 3: linear fits of the FFN (closed form, Monte Carlo, real inputs) and input collection."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sd_lens import model_view
from sd_lens.analyses.ffn_fit import FFNFit, fit_ffn
from sd_lens.analyses.ffn_inputs import collect_ffn_inputs, ffn_hook_name
from sd_lens.errors import InputError
from sd_lens.linalg import acute_angle_deg, unit
from sd_lens.models.hooked import backend
from sd_lens.models.view import _ACTIVATIONS, BlockView

METHODS = ("gaussian", "monte_carlo", "real")


TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs!",
    "How vexingly quick daft zebras jump; 0123456789.",
    "Sphinx of black quartz, judge my vow (again).",
]


def _center(view: BlockView) -> torch.Tensor:
    d = view.d_model
    return torch.eye(d) - 1.0 / d if view.norm == "layer" else torch.eye(d)


def _random_inputs(view: BlockView, n: int, seed: int = 0) -> torch.Tensor:
    """Normalised inputs of a non-isotropic, non-centred distribution (as real ones are)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, view.d_model, generator=g) * torch.linspace(0.3, 3.0, view.d_model) + 0.7
    return view.normalize(x)


@pytest.fixture
def identity_act(monkeypatch):
    monkeypatch.setitem(_ACTIVATIONS, "identity", lambda z: z)


def _linear_view(view: BlockView) -> BlockView:
    """The block with its FFN made linear: identity activation, no gate, no biases.

    (Biases would make it affine, which the intercept-free Monte-Carlo fit of the paper only
    recovers up to O(|bias| / √n_samples).)
    """
    return dataclasses.replace(view, act_fn="identity", W_gate=None, b_gate=None, b_in=None, ln2_bias=None)


def _scaled(view: BlockView, scale: float) -> BlockView:
    """The block with its FFN pre-activations scaled (drives the activation into its non-linear range)."""
    return dataclasses.replace(
        view,
        W_in=view.W_in * scale,
        b_in=None if view.b_in is None else view.b_in * scale,
        W_gate=None if view.W_gate is None else view.W_gate * scale,
        b_gate=None if view.b_gate is None else view.b_gate * scale,
    )


# --------------------------------------------------------------------------------------------
# exactness on linear FFNs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_linear_ffn_is_fitted_exactly(tiny_variant, method, identity_act):
    view = _linear_view(model_view(tiny_variant).block(1))
    inputs = _random_inputs(view, 2000) if method == "real" else None
    fit = fit_ffn(view, None, method, n_samples=4000, inputs=inputs)
    # hidden = (n γ + β) W_in + b_in, so M = W_inᵀ diag(γ) (times the centring P for LayerNorm)
    M_true = (view.W_in.T * view.ln2_scale) @ _center(view)
    torch.testing.assert_close(fit.M, M_true, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fit.F, view.W_out.T @ M_true, atol=1e-5, rtol=1e-4)
    assert fit.r2 > 0.999999 and fit.r2_hidden > 0.999999
    assert fit.method == method and fit.layer == 1


def test_gated_bilinear_closed_form(tiny, identity_act):
    """A gated unit with identity activation, h = (g·n + b_g)(u·n + c), has the exact Gaussian
    least-squares map c g + b_g u (Stein); Monte Carlo converges to it."""
    view = model_view(tiny).block(1)
    if view.W_gate is None:
        pytest.skip("non-gated family")
    gen = torch.Generator().manual_seed(0)
    d_mlp = view.W_in.shape[1]
    view = dataclasses.replace(view, act_fn="identity", b_gate=torch.randn(d_mlp, generator=gen),
                               b_in=torch.randn(d_mlp, generator=gen))
    G = view.W_gate.T * view.ln2_scale
    U = view.W_in.T * view.ln2_scale
    M_true = view.b_in[:, None] * G + view.b_gate[:, None] * U
    fit = fit_ffn(view, None, "gaussian", n_eval=0)
    torch.testing.assert_close(fit.M, M_true, atol=1e-6, rtol=1e-5)
    b_true = view.b_gate * view.b_in + (G * U).sum(1)  # E[(g·n + b_g)(u·n + c)]
    torch.testing.assert_close(fit.b_hidden, b_true, atol=1e-6, rtol=1e-5)


def test_relu_closed_form_matches_analytic(tiny, monkeypatch):
    """Non-gated relu: M_j = Φ(c_j/s_j) u_j and E[h_j] = c Φ(c/s) + s φ(c/s)."""
    view = model_view(tiny).block(0)
    gen = torch.Generator().manual_seed(0)
    d_mlp = view.W_in.shape[1]
    view = dataclasses.replace(view, act_fn="relu", W_gate=None, b_gate=None,
                               b_in=0.05 * torch.randn(d_mlp, generator=gen))
    fit = fit_ffn(view, None, "gaussian", n_eval=0)
    U = ((view.W_in.T.double() * view.ln2_scale.double()) @ _center(view).double())
    c = view.b_in.double() + (view.ln2_bias.double() @ view.W_in.double() if view.ln2_bias is not None else 0)
    s = U.norm(dim=1)
    Phi = 0.5 * (1 + torch.erf(c / s / math.sqrt(2)))
    phi = torch.exp(-0.5 * (c / s) ** 2) / math.sqrt(2 * math.pi)
    torch.testing.assert_close(fit.M.double(), Phi[:, None] * U, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fit.b_hidden.double(), c * Phi + s * phi, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# closed form versus Monte Carlo
# --------------------------------------------------------------------------------------------
def test_closed_form_agrees_with_monte_carlo(tiny):
    """With pre-activations scaled ×30 (R² of the fit only 0.3–0.75: far from linear), the
    closed form and a 200 000-sample Monte-Carlo fit differ by 2–3 % (relative Frobenius norm;
    measured 0.019–0.029 over the four families, shrinking as 1/√n_samples); bound 0.05."""
    view = _scaled(model_view(tiny).block(1), 30.0)
    cf = fit_ffn(view, None, "gaussian", n_eval=20_000)
    mc = fit_ffn(view, None, "monte_carlo", n_samples=200_000, n_eval=20_000, chunk_size=8192)
    rel = float((mc.M - cf.M).norm() / cf.M.norm())
    rel_F = float((mc.F - cf.F).norm() / cf.F.norm())
    print(f"{view.family}: |M_mc - M_cf| / |M_cf| = {rel:.4f}, F: {rel_F:.4f}, R² cf {cf.r2:.4f} mc {mc.r2:.4f}")
    assert rel < 0.05 and rel_F < 0.05
    assert cf.r2 == pytest.approx(mc.r2, abs=0.02)
    assert cf.r2 < 0.9  # the test is not vacuous: the FFN is far from linear here


def test_monte_carlo_error_shrinks_with_samples(tiny):
    view = _scaled(model_view(tiny).block(1), 30.0)
    cf = fit_ffn(view, None, "gaussian", n_eval=0)
    errs = [float((fit_ffn(view, None, "monte_carlo", n_samples=n, n_eval=0).M - cf.M).norm() / cf.M.norm())
            for n in (10_000, 160_000)]
    assert errs[1] < errs[0] / 2.5  # 1/√16 = 1/4 in expectation


def test_monte_carlo_intercept_option(tiny, identity_act):
    """An affine FFN: the intercept-free reference fit is off by O(|bias|/√n); with an intercept
    it is exact."""
    mv = model_view(tiny)
    view = dataclasses.replace(model_view(tiny).block(1), act_fn="identity", W_gate=None, b_gate=None,
                               b_in=torch.full((mv.d_mlp,), 5.0))
    M_true = (view.W_in.T * view.ln2_scale) @ _center(view)
    free = fit_ffn(view, None, "monte_carlo", n_samples=4000, n_eval=0)
    with_b = fit_ffn(view, None, "monte_carlo", n_samples=4000, n_eval=0, intercept=True)
    assert float((free.M - M_true).abs().max()) > 1e-3
    torch.testing.assert_close(with_b.M, M_true, atol=1e-5, rtol=1e-4)


def test_monte_carlo_is_deterministic_for_a_seed(tiny):
    view = model_view(tiny).block(1)
    a = fit_ffn(view, None, "monte_carlo", n_samples=3000, n_eval=1000, seed=7)
    b = fit_ffn(view, None, "monte_carlo", n_samples=3000, n_eval=1000, seed=7)
    c = fit_ffn(view, None, "monte_carlo", n_samples=3000, n_eval=1000, seed=8)
    assert torch.equal(a.M, b.M) and torch.equal(a.F, b.F) and a.r2 == b.r2
    assert not torch.equal(a.M, c.M)
    # the chunking is an implementation detail: same samples, same fit up to rounding
    d = fit_ffn(view, None, "monte_carlo", n_samples=3000, n_eval=0, seed=7, chunk_size=3000)
    e = fit_ffn(view, None, "monte_carlo", n_samples=3000, n_eval=0, seed=7, chunk_size=3000)
    assert torch.equal(d.M, e.M)


def test_gaussian_closed_form_is_deterministic(tiny):
    view = model_view(tiny).block(0)
    assert torch.equal(fit_ffn(view, None, "gaussian", n_eval=0).M, fit_ffn(view, None, "gaussian", n_eval=0).M)


def test_layernorm_fits_live_on_the_centred_subspace(tiny):
    view = model_view(tiny).block(1)
    for method in ("gaussian", "monte_carlo"):
        fit = fit_ffn(view, None, method, n_samples=2000, n_eval=500)
        if view.norm == "layer":
            assert float((fit.M @ torch.ones(view.d_model)).abs().max()) < 1e-5 * float(fit.M.abs().max()) * view.d_model


# --------------------------------------------------------------------------------------------
# R²
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_r2_is_at_most_one_and_near_one_for_a_near_linear_ffn(tiny, method):
    view = model_view(tiny).block(1)
    inputs = _random_inputs(view, 1500)
    fit = fit_ffn(view, None, method, n_samples=3000, inputs=inputs, n_eval=2000)
    assert fit.r2 <= 1.0 and fit.r2_hidden <= 1.0
    assert fit.n_eval == (300 if method == "real" else 2000)
    # near-linear: a smooth non-gated activation on tiny pre-activations (R² = 1 − O(scale²))
    if view.W_gate is None:
        lin = dataclasses.replace(_scaled(view, 1e-3), b_in=None, ln2_bias=None)
        fit = fit_ffn(lin, None, method, n_samples=3000, inputs=inputs, n_eval=2000)
        assert 0.9999 < fit.r2 <= 1.0


def test_r2_can_be_skipped(tiny):
    fit = fit_ffn(model_view(tiny).block(0), None, "gaussian", n_eval=0)
    assert math.isnan(fit.r2) and fit.n_eval == 0 and math.isnan(fit.r2_se)


def test_r2_standard_error_tracks_the_spread_over_seeds_and_shrinks_with_samples(tiny):
    """The jackknife standard error of R² is an honest error bar: of the order of the seed-to-seed spread, and
    about half as large with four times the held-out inputs."""
    view = model_view(tiny).block(1)
    fits = [fit_ffn(view, None, "gaussian", n_eval=256, seed=s) for s in range(12)]
    spread = float(torch.tensor([f.r2 for f in fits]).std())
    se = sum(f.r2_se for f in fits) / len(fits)
    assert spread > 0 and 1 / 3 < se / spread < 3, (se, spread)
    big = sum(fit_ffn(view, None, "gaussian", n_eval=1024, seed=s).r2_se for s in range(12)) / 12
    assert 0.3 < big / se < 0.75, (big, se)


def test_r2_does_not_depend_on_how_the_output_is_predicted(tiny):
    """The prediction ``F n + W_outᵀ b`` (what the fits use) is ``W_outᵀ (M n + b)`` summed in another order."""
    from sd_lens.analyses.ffn_fit import _evaluate, _gaussian_batches

    view = model_view(tiny).block(1)
    fit = fit_ffn(view, None, "gaussian", n_eval=0)

    def batches():
        return _gaussian_batches(512, view.d_model, None, torch.Generator().manual_seed(3), 200, torch.device("cpu"))

    via_f, via_m = _evaluate(view, fit.M, fit.b_hidden, batches(), fit.F), _evaluate(view, fit.M, fit.b_hidden, batches())
    assert via_f[3] == via_m[3] == 512
    assert via_f[0] == pytest.approx(via_m[0], abs=1e-5) and via_f[1] == pytest.approx(via_m[1], abs=1e-5)
    assert via_f[2] == via_m[2]  # the hidden R² is computed the same way


def test_real_fit_with_intercept_recovers_affine_map_on_shifted_inputs(tiny, identity_act):
    """Real inputs have a non-zero mean; the real fit has an intercept, so an affine FFN is exact
    and the intercept is the constant part."""
    base = model_view(tiny).block(0)
    view = dataclasses.replace(_linear_view(base), b_in=torch.linspace(-1, 1, model_view(tiny).d_mlp),
                               ln2_bias=base.ln2_bias)
    fit = fit_ffn(view, None, "real", inputs=_random_inputs(view, 1000, seed=3))
    c = view.b_in + (view.ln2_bias @ view.W_in if view.ln2_bias is not None else 0.0)
    torch.testing.assert_close(fit.b_hidden, c, atol=1e-5, rtol=1e-4)
    x = _random_inputs(view, 10, seed=4)
    torch.testing.assert_close(fit.predict_hidden(x), view.ffn_hidden(x), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# result object and arguments
# --------------------------------------------------------------------------------------------
def test_fit_result_svd_and_shapes(tiny):
    mv = model_view(tiny)
    fit = fit_ffn(mv, 1, "gaussian", n_eval=256)
    assert isinstance(fit, FFNFit)
    assert fit.M.shape == (mv.d_mlp, mv.d_model) and fit.F.shape == (mv.d_model, mv.d_model)
    assert fit.M.dtype == torch.float32 and fit.F.device.type == "cpu"
    torch.testing.assert_close(fit.F, mv.block(1).W_out.T @ fit.M, atol=1e-6, rtol=1e-5)
    U, S, Vh = fit.svd()
    assert fit.svd() is fit.svd()
    torch.testing.assert_close(fit.F @ fit.v0, fit.s0 * fit.u0, atol=1e-5, rtol=1e-4)
    assert fit.s0 == pytest.approx(float(torch.linalg.matrix_norm(fit.F.double(), ord=2)), rel=1e-5)
    assert fit.seconds >= fit.fit_seconds >= 0


def test_accepts_model_modelview_or_blockview_and_leaves_model_unchanged(tiny, unchanged):
    with unchanged(tiny):
        a = fit_ffn(tiny, 1, "gaussian", n_eval=0)
        b = fit_ffn(model_view(tiny), 1, "gaussian", n_eval=0)
        c = fit_ffn(model_view(tiny).block(1), method="gaussian", n_eval=0)
    assert torch.equal(a.M, b.M) and torch.equal(a.M, c.M)


def test_argument_errors(tiny):
    view = model_view(tiny).block(0)
    with pytest.raises(InputError, match="method"):
        fit_ffn(view, None, "lstsq")
    with pytest.raises(InputError, match="inputs"):
        fit_ffn(view, None, "real")
    with pytest.raises(InputError, match="shape"):
        fit_ffn(view, None, "real", inputs=torch.zeros(100, view.d_model + 1))
    with pytest.raises(InputError, match="NaN"):
        fit_ffn(view, None, "real", inputs=torch.full((100, view.d_model), float("nan")))
    with pytest.raises(InputError, match="holdout"):
        fit_ffn(view, None, "gaussian", holdout=1.0)
    with pytest.raises(InputError, match="n_samples"):
        fit_ffn(view, None, "monte_carlo", n_samples=10)
    with pytest.raises(InputError):
        fit_ffn(tiny, 99, "gaussian")


def test_ridge_shrinks_the_real_fit(tiny):
    view = model_view(tiny).block(1)
    X = _random_inputs(view, 400)
    plain = fit_ffn(view, None, "real", inputs=X)
    assert torch.equal(fit_ffn(view, None, "real", inputs=X, ridge=0.0).M, plain.M)
    shrunk = fit_ffn(view, None, "real", inputs=X, ridge=1.0)
    assert float(shrunk.M.norm()) < float(plain.M.norm())


def test_underdetermined_real_fit_warns(tiny):
    view = model_view(tiny).block(0)
    with pytest.warns(UserWarning, match="under-determined"):
        fit_ffn(view, None, "real", inputs=_random_inputs(view, 40))


# --------------------------------------------------------------------------------------------
# collecting real inputs
# --------------------------------------------------------------------------------------------
def test_hook_normalized_equals_view_normalize(tiny_variant):
    """The claim collect_ffn_inputs rests on: ln2.hook_normalized == BlockView.normalize(FFN's
    residual input) — resid_mid, or resid_pre for parallel (NeoX) blocks."""
    mv = model_view(tiny_variant)
    if backend() == "hooked" and mv.block(0).norm == "layer" and not mv.block(0).ln1_folded:
        pytest.skip("bridge only: an unfolded HookedTransformer LayerNorm applies its weight and bias before hook_normalized")
    for layer in range(mv.n_layers):
        v = mv.block(layer)
        store = {}

        def grab(key):
            def hook(t, hook):
                store[key] = t.detach().clone()

            return hook

        resid = f"blocks.{layer}.hook_resid_pre" if v.parallel else f"blocks.{layer}.hook_resid_mid"
        with torch.no_grad():
            tiny_variant.run_with_hooks(tiny_variant.to_tokens(TEXTS[:2]), stop_at_layer=layer + 1,
                                        fwd_hooks=[(ffn_hook_name(layer), grab("n")), (resid, grab("x"))])
        torch.testing.assert_close(store["n"], v.normalize(store["x"]), atol=1e-5, rtol=1e-5)
        # and the view's FFN of it is the model's FFN output
        assert store["n"].shape[-1] == mv.d_model


def test_collect_matches_unbatched_and_respects_positions(tiny, unchanged):
    with unchanged(tiny):
        X = collect_ffn_inputs(tiny, TEXTS, 1, exclude_positions=(), batch_size=3)
        singles = [collect_ffn_inputs(tiny, [t], 1, exclude_positions=()) for t in TEXTS]
    torch.testing.assert_close(X, torch.cat(singles), atol=1e-5, rtol=1e-5)
    lengths = [tiny.to_tokens(t).shape[1] for t in TEXTS]
    assert X.shape == (sum(lengths), tiny.cfg.d_model)
    X0 = collect_ffn_inputs(tiny, TEXTS, 1)  # default drops position 0 of every sequence
    keep = torch.cat([torch.arange(n) > 0 for n in lengths])
    torch.testing.assert_close(X0, X[keep])
    Xl = collect_ffn_inputs(tiny, TEXTS, 1, exclude_positions=(0, -1))
    assert Xl.shape[0] == sum(lengths) - 2 * len(TEXTS)
    assert collect_ffn_inputs(tiny, TEXTS, 1, max_tokens=50).shape[0] == 50
    # normalised: rms 1 (LayerNorm: centred, std 1), a little less where eps matters
    rms = X.pow(2).mean(-1).sqrt()
    assert bool(((rms < 1 + 1e-5) & (rms > 0.9)).all())


def test_collect_several_layers_and_token_inputs(tiny):
    both = collect_ffn_inputs(tiny, TEXTS, [0, 1])
    assert set(both) == {0, 1}
    torch.testing.assert_close(both[1], collect_ffn_inputs(tiny, TEXTS, 1))
    tokens = tiny.to_tokens(TEXTS[0])
    from_tensor = collect_ffn_inputs(tiny, tokens, 0, exclude_positions=())
    from_list = collect_ffn_inputs(tiny, [tokens[0].tolist()], 0, exclude_positions=())
    torch.testing.assert_close(from_tensor, from_list)
    torch.testing.assert_close(from_tensor, collect_ffn_inputs(tiny, TEXTS[0], 0, exclude_positions=()))


def test_collect_runs_only_the_needed_blocks(tiny):
    """stop_at_layer = layer + 1: nothing of a deeper block, nor the final norm, runs."""
    fired = []
    last = tiny.cfg.n_layers - 1
    deeper = [(name, lambda t, hook: fired.append(hook.name))
              for name in (f"blocks.{last}.ln1.hook_normalized", f"blocks.{last}.hook_attn_out", "ln_final.hook_normalized")]
    with tiny.hooks(fwd_hooks=deeper):
        collect_ffn_inputs(tiny, TEXTS[:1], 0)
    assert fired == []


def test_collect_removes_its_hook_on_error_and_keeps_user_hooks(tiny, unchanged):
    bad = torch.tensor([[1, 2, 10_000]])  # token id beyond the vocabulary: the forward raises
    with unchanged(tiny):
        with pytest.raises(Exception):
            collect_ffn_inputs(tiny, bad, 0)
    seen = []
    with tiny.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda t, hook: seen.append(1))]):
        collect_ffn_inputs(tiny, TEXTS[:1], 0)
        assert tiny.hook_dict["blocks.0.hook_resid_pre"].fwd_hooks  # the user's hook is still there
    assert seen


def test_collect_argument_errors(tiny):
    with pytest.raises(InputError):
        collect_ffn_inputs(tiny, TEXTS, tiny.cfg.n_layers)
    with pytest.raises(InputError):
        collect_ffn_inputs(tiny, ["", ""], 0)


def test_real_fit_on_collected_inputs(tiny):
    X = collect_ffn_inputs(tiny, TEXTS * 8, 1, exclude_positions=())
    fit = fit_ffn(tiny, 1, "real", inputs=X)
    assert fit.n_samples + fit.n_eval == X.shape[0]
    assert fit.r2 <= 1.0


# --------------------------------------------------------------------------------------------
# geometry helpers
# --------------------------------------------------------------------------------------------
def test_acute_angle_and_unit():
    a = torch.tensor([1.0, 0.0])
    assert float(acute_angle_deg(a, torch.tensor([0.0, 2.0]))) == pytest.approx(90.0)
    assert float(acute_angle_deg(a, -a)) == pytest.approx(0.0, abs=1e-6)
    assert float(acute_angle_deg(a, torch.tensor([-1.0, 1.0]))) == pytest.approx(45.0)
    batch = acute_angle_deg(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), a)
    torch.testing.assert_close(batch, torch.tensor([0.0, 90.0, 45.0], dtype=torch.float64), atol=1e-6, rtol=0)
    big = torch.tensor([1e30, 1e30])
    assert float(acute_angle_deg(big, a)) == pytest.approx(45.0)  # no overflow
    assert math.isnan(float(acute_angle_deg(torch.zeros(2), a)))
    torch.testing.assert_close(unit(torch.tensor([3.0, 4.0])), torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(unit(torch.zeros(3)), torch.zeros(3))
    assert unit(torch.randn(4, 5)).norm(dim=-1).sub(1).abs().max() < 1e-6


def test_reference_convention_is_the_reference_codes_sampling():
    """method="reference": isotropic inputs z at the MLP input *after* γ₂, fit h(z) ≈ M_z z, then M = M_z diag(γ₂).
    Checked against that recipe done by sampling, on an unfolded tiny Llama with a far-from-1 γ₂ (one channel
    masked, one amplified ×8); it differs from the default convention there."""
    from sd_lens.models.tiny import tiny_model

    # pre-activations scaled x30 as in test_closed_form_agrees_with_monte_carlo: a signal well above the sampling noise
    view = _scaled(model_view(tiny_model("llama", seed=3, compatibility_mode=False)).block(1), 30.0)
    gamma = torch.linspace(0.2, 3.0, view.d_model)
    gamma[5], gamma[7] = 0.0, 8.0
    view = dataclasses.replace(view, ln2_scale=gamma)
    ref = fit_ffn(view, None, "reference", n_eval=4096)
    z = torch.randn(200_000, view.d_model, generator=torch.Generator().manual_seed(0))
    h = dataclasses.replace(view, ln2_scale=torch.ones_like(gamma)).ffn_hidden(z)
    M_z = torch.linalg.lstsq(z.double(), h.double()).solution.T.float()
    rel = float((ref.M - M_z * gamma).norm() / ref.M.norm())
    assert rel < 0.03, rel  # Monte-Carlo noise of 200 000 samples
    assert float(ref.M[:, 5].abs().max()) == 0.0  # a masked channel has no column
    ours = fit_ffn(view, None, "gaussian", n_eval=0)
    assert float((ours.M - ref.M).norm() / ref.M.norm()) > 0.1  # the conventions differ when γ₂ is not 1


def test_reference_convention_warns_on_folded_norms(tiny):
    view = model_view(tiny).block(1)
    if not view.ln2_folded:
        pytest.skip("this family's compatibility mode keeps the norm scale apart")
    with pytest.warns(UserWarning, match="compatibility_mode=False"):
        fit = fit_ffn(view, None, "reference", n_eval=0)
    torch.testing.assert_close(fit.M, fit_ffn(view, None, "gaussian", n_eval=0).M)
