"""W8A8 fake quantization (Wang et al. 2025 §6; Xiao et al. 2023) on the tiny models of every family."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure

from conftest import planted_bos_model
from sd_lens.analyses.defects import find_defects
from sd_lens.analyses.outlier_interventions import perplexity
from sd_lens.analyses.probe import probe_norms
from sd_lens.errors import InputError, UnsupportedArchitectureError
from sd_lens.models.hooked import backend
from sd_lens.models.tiny import tiny_model
from sd_lens.quantize import (
    PER_TOKEN,
    RTN,
    SITES,
    Scheme,
    defect_blocks,
    fake_quantize,
    linear_weights,
    quantization_experiment,
    quantize_activation,
    quantize_weight,
    random_blocks,
    rtn,
    site_hook,
    smoothquant_scales,
)
from sd_lens.quantize import fake as fake_module
from sd_lens.quantize.figures import quantization_figure
from sd_lens.runtime import run, tokenize
from sd_lens.runtime.reducers import keep

TEXTS = ["hello world, this is it.", "a b c d e f", "the quick brown fox jumps over", "xy"]
LOGITS = "unembed.hook_out"


def _logits(model, tokens, hooks=()):
    return run(model, tokens, {LOGITS: keep}, fwd_hooks=hooks, stop_at_layer=None)[LOGITS]


def _tokens(model, text="The cat sat on the mat, then it slept."):
    return tokenize(model, [text]).sequences[0]


# ------------------------------------------------------------------------------------------------
# where the activations and weights are
# ------------------------------------------------------------------------------------------------
def test_sites_and_linears_exist(tiny):
    linears = linear_weights(tiny)
    n = int(tiny.cfg.n_layers)
    assert set(linears) == {(b, s) for b in range(n) for s in SITES}
    for (b, s), lins in linears.items():
        assert site_hook(b, s) in tiny.hook_dict
        names = [lin.name for lin in lins]
        expected = {"qkv": ["attn.q", "attn.k", "attn.v"], "o": ["attn.o"], "down": ["mlp.out"],
                    "mlp_in": ["mlp.gate", "mlp.in"] if tiny.cfg.gated_mlp else ["mlp.in"]}[s]
        if backend() == "hooked":  # a HookedTransformer's parameters: W_Q ... W_out
            expected = [f"{n.split('.')[0]}.W_{n.split('.')[1].upper() if n.startswith('attn') else n.split('.')[1]}"
                        for n in expected]
        assert names == expected
        # every linear of a site reads the same number of features
        assert len({lin.d_in for lin in lins}) == 1


@pytest.mark.bridge_only(reason="compares with the bias of the bridge's wrapped nn.Linear")
def test_site_edits_reach_the_linears(tiny):
    """A new tensor returned at a site's hook is exactly what its linear reads (also for neox's parallel
    block and GPT-2's Conv1D): the input hooks of q, v, o and F2 see it, and the FFN's first
    pre-activation is it times the (first) input weight."""
    tok = _tokens(tiny)
    lin = linear_weights(tiny)
    for site, reader in [("qkv", "attn.q.hook_in"), ("qkv", "attn.v.hook_in"), ("o", "attn.o.hook_in"),
                         ("down", "mlp.out.hook_in"), ("mlp_in", "mlp.hook_pre")]:
        seen = {}

        def edit(act, hook):
            seen["x"] = torch.randn_like(act)
            return seen["x"]

        name = f"blocks.0.{reader}"
        got = run(tiny, tok, {name: keep}, fwd_hooks=[(site_hook(0, site), edit)], stop_at_layer=None)[name]
        x = seen["x"].reshape(got.shape[0], got.shape[1], -1)
        if site == "mlp_in":
            first = lin[(0, "mlp_in")][0]
            w = first.param.detach()
            expected = x @ (w.T if first.in_axis == 1 else w)
            bias = getattr(getattr(tiny.blocks[0].mlp, first.name.split(".")[1]).original_component, "bias", None)
            if bias is not None:
                expected = expected + bias
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(got.reshape(x.shape), x)


def test_the_swapped_weights_are_the_ones_the_forward_uses(tiny):
    """Under the quantization hooks (the norm's python path), perturbing any weight fake_quantize
    swaps changes the logits: no copy, no unused fused qkv."""
    tok = _tokens(tiny)
    with fake_quantize(tiny, RTN) as hooks:
        base = _logits(tiny, tok, hooks)
        for lins in linear_weights(tiny).values():
            for lin in lins:
                old = lin.param.data
                lin.param.data = old + 0.5 * torch.randn_like(old)
                try:
                    out = _logits(tiny, tok, hooks)
                finally:
                    lin.param.data = old
                assert not torch.equal(out, base), (lin.block, lin.name)


def test_not_a_bridge_is_refused():
    class Fake:
        cfg = type("C", (), {"n_layers": 1})()
        blocks = [object()]

    with pytest.raises(UnsupportedArchitectureError, match="TransformerBridge"):
        linear_weights(Fake())


# ------------------------------------------------------------------------------------------------
# reversibility
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", [RTN, PER_TOKEN], ids=["rtn", "per_token"])
def test_restored_bit_for_bit(tiny, unchanged, scheme):
    tok = _tokens(tiny)
    clean = _logits(tiny, tok)
    # (parameter, address of its original data): `param.data` is a new wrapper at every access
    params = {id(lin.param): (lin.param, lin.param.data_ptr()) for lins in linear_weights(tiny).values() for lin in lins}
    with unchanged(tiny):
        with fake_quantize(tiny, scheme, keep=[0]) as hooks:
            quant = _logits(tiny, tok, hooks)
            swapped = [p for p, d in params.values() if p.data_ptr() != d]
            # every weight but block 0's F2 is swapped
            assert len(swapped) == len(params) - 1
            assert all(p.data_ptr() == d for (b, s), lins in linear_weights(tiny).items() if (b, s) == (0, "down")
                       for lin in lins for p, d in [params[id(lin.param)]])
        assert not torch.equal(quant, clean)
    assert all(p.data_ptr() == d for p, d in params.values())  # the very same storage is back
    assert torch.equal(_logits(tiny, tok), clean)


def test_restored_after_an_exception_mid_run(tiny, unchanged):
    tok = _tokens(tiny)

    def boom(act, hook):
        raise RuntimeError("boom")

    with unchanged(tiny):
        with pytest.raises(RuntimeError, match="boom"):
            with fake_quantize(tiny, RTN) as hooks:
                _logits(tiny, tok, hooks + [("blocks.1.hook_resid_post", boom)])


def test_restored_after_a_failure_while_swapping(tiny, unchanged, monkeypatch):
    calls = {"n": 0}
    real = fake_module.quantize_weight

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(fake_module, "quantize_weight", failing)
    with unchanged(tiny):
        with pytest.raises(RuntimeError, match="out of memory"):
            with fake_quantize(tiny, RTN):
                pass  # pragma: no cover
    assert calls["n"] == 5


def test_hooks_refuse_to_run_after_the_context(tiny):
    tok = _tokens(tiny)
    with fake_quantize(tiny, RTN) as hooks:
        pass
    with pytest.raises(InputError, match="after its fake_quantize context"):
        _logits(tiny, tok, hooks)


def test_keeping_everything_is_the_float_model(tiny):
    tok = _tokens(tiny)
    n = int(tiny.cfg.n_layers)
    with fake_quantize(tiny, RTN, keep=range(n), keep_sites=SITES) as hooks:
        assert hooks == []
        assert torch.equal(_logits(tiny, tok, hooks), _logits(tiny, tok))


def test_nested_contexts_restore_in_order(tiny, unchanged):
    tok = _tokens(tiny)
    with unchanged(tiny):
        with fake_quantize(tiny, PER_TOKEN) as outer:
            a = _logits(tiny, tok, outer)
            with fake_quantize(tiny, RTN) as inner:
                _logits(tiny, tok, outer + inner)
            assert torch.equal(_logits(tiny, tok, outer), a)


def test_bad_arguments_are_refused(tiny):
    with pytest.raises(InputError, match="block"):
        with fake_quantize(tiny, RTN, keep=[99]):
            pass  # pragma: no cover
    with pytest.raises(InputError, match="keep_sites"):
        with fake_quantize(tiny, RTN, keep_sites=["ffn"]):
            pass  # pragma: no cover
    with pytest.raises(InputError, match="calibrate"):
        with fake_quantize(tiny, Scheme("sq", smooth_alpha=0.5)):
            pass  # pragma: no cover
    with pytest.raises(InputError):
        Scheme("x", weights="row")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        Scheme("x", a_bits=1)


# ------------------------------------------------------------------------------------------------
# the quantizer
# ------------------------------------------------------------------------------------------------
_floats = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


@settings(max_examples=80, deadline=None)
@given(st.lists(_floats, min_size=1, max_size=64), st.integers(min_value=2, max_value=8))
@example([1.4e-45], 3)  # amax / qmax underflows float32: the step is 0 and x is returned unquantized
def test_rtn_error_at_most_half_a_step_and_idempotent(values, bits):
    x = torch.tensor(values, dtype=torch.float32)
    amax = x.abs().max()
    q = rtn(x, amax, bits)
    qmax = 2 ** (bits - 1) - 1
    step = float(amax / qmax)  # the float32 step rtn uses: 0 for a subnormal amax (then x comes back as it is)
    tol = 1e-6 * float(amax) + 1e-30
    assert float((q - x).abs().max()) <= step / 2 + tol
    if step > 0:
        codes = torch.round(q / step)
        assert float(codes.abs().max()) <= qmax
        assert len(torch.unique(codes)) <= 2 * qmax + 1
    # idempotent (to float rounding: the second grid is the first one up to one ulp of amax)
    q2 = rtn(q, q.abs().max(), bits)
    assert float((q2 - q).abs().max()) <= tol


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 8), st.integers(0, 2**16))
def test_activation_granularities(batch, pos, d, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, pos, d, generator=g) * torch.rand(batch, pos, 1, generator=g) * 10
    for gran, dims in (("token", (2,)), ("tensor", (1, 2))):
        q = quantize_activation(x, gran, 8)
        assert q.shape == x.shape
        amax = x.abs().amax(dims, keepdim=True)
        assert bool(((q - x).abs() <= amax / 127 / 2 + 1e-6 * amax).all())
    # per-token: a token's result does not depend on the others; per-tensor: a row's does not depend on
    # other rows, nor on positions outside `real`
    y = x.clone()
    y[:, 0] *= 100
    if pos > 1:
        assert torch.equal(quantize_activation(x, "token")[:, 1:], quantize_activation(y, "token")[:, 1:])
        real = torch.ones(batch, pos, dtype=torch.bool)
        real[:, 0] = False
        assert torch.equal(quantize_activation(x, "tensor", real=real)[:, 1:],
                           quantize_activation(y, "tensor", real=real)[:, 1:])
    if batch > 1:
        z = x.clone()
        z[0] *= 100
        assert torch.equal(quantize_activation(x, "tensor")[1:], quantize_activation(z, "tensor")[1:])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(1, 8), st.sampled_from([0, 1]), st.integers(0, 2**16))
def test_weight_granularities(rows, cols, in_axis, seed):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 3
    for gran in ("tensor", "channel"):
        q = quantize_weight(w, gran, 8, in_axis)
        assert q.shape == w.shape and q.dtype == w.dtype
        amax = w.abs().amax() if gran == "tensor" else w.abs().amax(in_axis, keepdim=True)
        assert bool(((q - w).abs() <= amax / 127 / 2 + 1e-6 * amax).all())
        # the largest entry of each channel (or of the tensor) is on the grid
        assert torch.allclose(q.abs().amax(in_axis if gran == "channel" else None), w.abs().amax(
            in_axis if gran == "channel" else None), rtol=1e-6)


def test_per_channel_weight_scale_follows_the_output_channel():
    w = torch.tensor([[1.0, 0.01], [100.0, 0.5]])  # nn.Linear [out, in]: output channel 1 is large
    q = quantize_weight(w, "channel", 8, in_axis=1)
    assert float(q[0, 1]) == pytest.approx(0.01, abs=1 / 127 / 2)  # small channel keeps a fine grid
    assert float(quantize_weight(w, "tensor", 8)[0, 1]) == 0.0  # per-tensor rounds it away


# ------------------------------------------------------------------------------------------------
# SmoothQuant
# ------------------------------------------------------------------------------------------------
def test_smoothing_alone_is_the_float_function(tiny, unchanged):
    """x / s @ (s W) == x @ W: with quantization off the smoothed model computes the float function."""
    tok = _tokens(tiny)
    smooth = smoothquant_scales(tiny, TEXTS, sites=SITES)
    assert set(smooth.scales) == {(b, s) for b in range(int(tiny.cfg.n_layers)) for s in SITES}
    assert any(not torch.allclose(s, torch.ones_like(s)) for s in smooth.scales.values())
    clean = _logits(tiny, tok)
    with unchanged(tiny):
        with fake_quantize(tiny, Scheme("smooth only", None, None, smooth_alpha=0.5), smooth=smooth) as hooks:
            assert len(hooks) == len(smooth.scales)
            smoothed = _logits(tiny, tok, hooks)
    torch.testing.assert_close(smoothed, clean, rtol=1e-4, atol=1e-4)


def test_smoothquant_factors_follow_the_formula(tiny):
    smooth = smoothquant_scales(tiny, TEXTS, alpha=0.5)
    assert smooth.sites == ("qkv", "mlp_in")
    lin = linear_weights(tiny)
    tok = tokenize(tiny, TEXTS)
    name = site_hook(1, "mlp_in")
    acts = [run(tiny, s, {name: keep})[name] for s in tok.sequences]
    xmax = torch.stack([a.abs().reshape(-1, a.shape[-1]).amax(0) for a in acts]).amax(0)
    torch.testing.assert_close(smooth.act_max[(1, "mlp_in")], xmax)
    wmax = torch.stack([w.matrix(w.param.detach()).abs().amax(1 - w.in_axis) for w in lin[(1, "mlp_in")]]).amax(0)
    torch.testing.assert_close(smooth.scales[(1, "mlp_in")], (xmax.sqrt() / wmax.sqrt()).clamp(min=1e-5))
    with pytest.raises(InputError):
        smoothquant_scales(tiny, TEXTS, alpha=1.5)
    with pytest.raises(InputError):
        smoothquant_scales(tiny, TEXTS, sites=["ffn"])
    with pytest.raises(InputError, match="alpha"):
        with fake_quantize(tiny, Scheme("sq", smooth_alpha=0.8), smooth=smooth):
            pass  # pragma: no cover


# ------------------------------------------------------------------------------------------------
# blocks to protect, the experiment, the figure
# ------------------------------------------------------------------------------------------------
def test_random_blocks():
    a = random_blocks(30, 6, seed=0, exclude=[2, 8, 9, 11, 28, 29])
    assert len(a) == 6 and len(set(a)) == 6 and not set(a) & {2, 8, 9, 11, 28, 29}
    assert a == random_blocks(30, 6, seed=0, exclude=[2, 8, 9, 11, 28, 29])
    assert a != random_blocks(30, 6, seed=1, exclude=[2, 8, 9, 11, 28, 29])
    with pytest.raises(InputError):
        random_blocks(4, 4, seed=0, exclude=[1])


@pytest.fixture(scope="module")
def planted():
    model = planted_bos_model()
    probe = probe_norms(model, TEXTS)
    return model, find_defects(model, probe)


def test_defect_blocks_come_from_the_report(planted):
    model, report = planted
    assert len(report.defects) >= 1
    blocks = defect_blocks(report)
    expected = sorted({d.explosion_layer for d in report.defects} | {b for d in report.defects for b in d.decay_layers})
    assert blocks == expected
    with pytest.raises(InputError):
        defect_blocks("not a report")


def test_experiment_on_a_tiny_model(planted, unchanged):
    model, report = planted
    held = ["zebras run fast.", "quiet rivers flow", "one two three four"]
    with unchanged(model):
        res = quantization_experiment(model, TEXTS, held, analysis=report, seeds=(0, 1))
    prot = defect_blocks(report)
    assert res.protected == tuple(prot)
    kinds = [(r.scheme, r.kept) for r in res.rows]
    assert kinds[0] == ("float", "none")
    assert ("W8A8 RTN", "defects") in kinds and ("SmoothQuant W8A8", "defects") in kinds
    assert len(res.random_rows()) == (2 if len(prot) < 4 else 0)
    clean = perplexity(model, held)
    assert res.row("float").perplexity == pytest.approx(clean.perplexity)
    assert all(r.tokens == clean.n_tokens for r in res.rows)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["protected_blocks"] == prot and len(d["rows"]) == len(res.rows)
    assert "| float |" in res.table()
    # the random controls: one line (and one bar, below) for all their seeds
    shown = res.display_rows()
    assert len(shown) == len(res.rows) - max(0, len(res.random_rows()) - 1)
    assert [s is not None for _, s in shown].count(True) == (1 if res.random_rows() else 0)
    assert res.table().count("| random (") == (1 if res.random_rows() else 0)
    assert math.isfinite(res.recovered())
    fig = quantization_figure(res)
    assert isinstance(fig, Figure) and len(fig.axes[0].patches) == len({r.label for r in res.rows
                                                                        if r.kept != "random"}) + (1 if res.random_rows() else 0)


def test_experiment_refuses_bad_input_before_any_forward(planted):
    model, report = planted
    with pytest.raises(InputError, match="held-out"):
        quantization_experiment(model, TEXTS, TEXTS[:1], analysis=report)
    with pytest.raises(InputError, match="unknown scheme"):
        quantization_experiment(model, TEXTS, ["abc def"], analysis=report, schemes=["int4"])
    with pytest.raises(InputError, match="seeds"):
        quantization_experiment(model, TEXTS, ["abc def"], analysis=report, seeds=(1, 1))


def test_quantization_hurts_a_model_with_a_massive_activation():
    """On a model whose BOS carries a huge value through every block, per-tensor RTN loses the other
    tokens under its grid; per-token activations do not (the scale is per token)."""
    model = tiny_model("llama", seed=1, n_layers=2)
    tok = tokenize(model, ["the cat sat on the mat and looked around"]).sequences[0]
    clean = _logits(model, tok)

    def plant(act, hook):
        out = act.clone()
        out[:, 0, 3] = 1e4
        return out

    planted_hook = [("blocks.0.mlp.hook_post", plant)]
    ref = _logits(model, tok, planted_hook)
    with fake_quantize(model, Scheme("A8 tensor", weights=None)) as hooks:
        err_tensor = float((_logits(model, tok, planted_hook + hooks) - ref)[0, 1:].abs().max())
    with fake_quantize(model, Scheme("A8 token", weights=None, activations="token")) as hooks:
        err_token = float((_logits(model, tok, planted_hook + hooks) - ref)[0, 1:].abs().max())
    assert not torch.equal(ref, clean)
    assert err_token < err_tensor / 5


# ------------------------------------------------------------------------------------------------
# the command line: bad input exits 2 before any model loads
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def no_load(monkeypatch):
    import sd_lens

    monkeypatch.setattr(sd_lens, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))


def _fails(capsys, argv, message):
    from sd_lens.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sd-lens: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_cli_bad_input_exits_2_before_loading(tmp_path, capsys, no_load):
    out = str(tmp_path / "q.json")
    _fails(capsys, ["quantize", "--json", str(tmp_path)], "is a folder")
    _fails(capsys, ["quantize", "--json", out, "--text-file", str(tmp_path / "missing.txt")], "cannot read text file")
    _fails(capsys, ["quantize", "--json", out, "--schemes", "rtn,int4"], "--schemes")
    from sd_lens.corpus import default_corpus

    f = tmp_path / "t.txt"
    f.write_text(default_corpus()[3] + "\n")
    _fails(capsys, ["quantize", "--json", out, "--text-file", str(f)], "analysis corpus")
    assert not (tmp_path / "q.json").exists()


def test_cli_argument_types(tmp_path, capsys):
    from sd_lens.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["quantize", "--json", str(tmp_path / "q.json"), "--seeds", "0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["quantize"])  # --json is required


def test_quantization_grid_sees_a_planted_massive_activation():
    from sd_lens.quantize.grid import quantization_grid

    model = tiny_model("llama", seed=1, n_layers=2)
    grid = quantization_grid(model, TEXTS)
    assert grid.range_ratio.shape == (2, len(SITES))
    assert bool((grid.zeroed_token <= grid.zeroed + 1e-6).all())  # a finer grid never zeroes more
    down = grid.at(1, "down")
    # the down-projection input of block 1 with one entry per text made 1000x the largest
    big = {}

    def plant(act, hook):
        out = act.clone()
        out[:, 0, 0] = 1000 * act.abs().max()
        return out

    from sd_lens.quantize.grid import QuantGrid  # noqa: F401 - the result type is public

    with pytest.MonkeyPatch.context() as mp:
        import sd_lens.quantize.grid as g

        real_stream = g.stream
        mp.setattr(g, "stream", lambda m, s, r, **kw: real_stream(m, s, r, fwd_hooks=[("blocks.1.mlp.hook_post", plant)],
                                                                  **kw))
        big = quantization_grid(model, TEXTS).at(1, "down")
    assert big["range_ratio"] > 100 * down["range_ratio"]
    assert big["zeroed"] > 0.9 > down["zeroed"]


def test_run_analysis_quantize_option_writes_json_and_a_report_section(tmp_path):
    """quantize=True (sd-lens analyze/report --quantize): the experiment's rows in the JSON, a report section."""
    from sd_lens.pipeline import run_analysis
    from sd_lens.report import write_report

    model = planted_bos_model()
    texts = ["the cat sat on the mat", "a b c d e f g", "hello there"]
    result = run_analysis(model, texts, quantize=True, held_out_lines=8)
    q = json.loads(result.to_json())["quantization"]
    assert q["protected_blocks"] == sorted({b for d in result.defects for b in [d.explosion_layer, *d.decay_layers]})
    assert [r["scheme"] for r in q["rows"]][0] == "float" and len(q["rows"]) > 4
    assert "quantization" in result.timings_s
    assert "quantization" not in json.loads(run_analysis(model, texts).to_json())
    html = write_report(model, result, tmp_path / "r").read_text(encoding="utf-8")
    assert "W8A8 quantization and the defect blocks" in html and "random (" in html
