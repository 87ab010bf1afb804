"""Super weights on tiny models: a planted super weight is recovered exactly on every family, the zeroing
hooks compute what the zeroed parameter computes, the weights come back bit for bit (also after an error)
and the consistency check names its mismatches."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sd_lens.analyses.defects import find_defects
from sd_lens.analyses.probe import probe_norms
from sd_lens.analyses.super_weights import (
    SuperWeight,
    consistency,
    down_entry,
    super_weights,
    zero_entry_hooks,
    zeroed,
)
from sd_lens.corpus import default_corpus
from sd_lens.errors import InputError
from sd_lens.models.tiny import FAMILIES, tiny_model
from sd_lens.quantize.fake import linear_weights

pytestmark = pytest.mark.bridge_only(reason="the planted super weight is built through the bridge's Hugging Face modules (mlp.hook_in, original_component)")

TEXTS = default_corpus(8)
HELD = default_corpus(12)[8:]
#: the planted entry: block, row (residual channel), col (FFN neuron)
BLOCK, ROW, COL = 1, 17, 5


def _set_column(lin: Any, col: int, vec: torch.Tensor) -> None:
    """Input weights of FFN neuron ``col`` of a gate/up linear (either layout)."""
    if lin.in_axis == 1:  # nn.Linear [out, in]
        lin.param.data[col, :] = vec
    else:  # Conv1D [in, out]
        lin.param.data[:, col] = vec


def _ffn_inputs(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """What the FFN of ``BLOCK`` reads: at the initial token, and at every other token of ``TEXTS``."""
    seen: list[torch.Tensor] = []
    for text in TEXTS:
        model.run_with_hooks(model.to_tokens(text)[:, :64], fwd_hooks=[
            (f"blocks.{BLOCK}.mlp.hook_in", lambda act, hook: seen.append(act[0].detach().float()))])
    return seen[0][0], torch.cat([s[1:] for s in seen])


def planted(family: str) -> Any:
    """A private 3-block tiny model whose ``W_down[ROW, COL]`` of block ``BLOCK`` is large and whose neuron
    ``COL`` spikes on the initial token: its up weights point along that token's FFN input, its gate (gated
    families) is fitted to open there and stay shut elsewhere. On Gemma-3 the post-FFN norm's gain of
    channel ``ROW`` is large too (with a sandwich norm, the norm's gain is what makes it massive)."""
    model = tiny_model(family, seed=3, n_layers=3)
    n0, others = _ffn_inputs(model)
    lins = linear_weights(model)
    gated = len(lins[(BLOCK, "mlp_in")]) == 2
    target = 6.0 if gated else 30.0  # pre-activation of the neuron on the initial token
    with torch.no_grad():
        mlp = model.blocks[BLOCK].mlp
        bias = getattr(getattr(mlp, "in").original_component, "bias", None)
        b = 0.0 if bias is None or gated else float(bias[COL])
        up = (target - b) * n0 / n0.pow(2).sum()
        # open (+8) on the initial token, shut (-8) on the others: least squares, the initial token weighted
        rows = torch.cat([100 * n0[None], others])
        goal = torch.cat([torch.tensor([800.0]), torch.full((len(others),), -8.0)])
        gate = torch.linalg.lstsq(rows, goal[:, None]).solution[:, 0]
        for lin in lins[(BLOCK, "mlp_in")]:
            _set_column(lin, COL, (gate if lin.name == "mlp.gate" else up).to(lin.param.dtype))
        down = lins[(BLOCK, "down")][0]
        down.param.data[(ROW, COL) if down.in_axis == 1 else (COL, ROW)] = 12.0
        if family == "gemma3":
            model.blocks[BLOCK].ln2_post.original_component.weight[ROW] = 99.0  # effective scale 1 + w = 100
    return model


_cache: dict[str, Any] = {}


def analysed(family: str) -> tuple[Any, Any, Any]:
    if family not in _cache:
        model = planted(family)
        probe = probe_norms(model, TEXTS)
        _cache[family] = (model, probe, find_defects(model, probe))
    return _cache[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_planted_super_weight_is_recovered_exactly(family, unchanged):
    model, probe, report = analysed(family)
    assert len(report) >= 1
    with unchanged(model):
        result = super_weights(model, report, probe, HELD, n_seeds=5, iterations=1)
    d = result[0]
    sw = d.super_weight
    assert sw is not None
    assert (sw.block, sw.row, sw.col) == (BLOCK, ROW, COL)
    assert sw.value == pytest.approx(12.0)
    assert sw.spike > 10  # the neuron spikes on the initial token
    assert sw.output == pytest.approx(sw.value * sw.spike)
    assert sw.effective == pytest.approx(sw.gain * sw.output, rel=1e-6)
    if family == "gemma3":
        assert sw.norm_scale == pytest.approx(100.0)
    else:
        assert sw.norm_scale is None and sw.gain == 1.0
    assert d.consistency.rows_agree and d.consistency.super_block == BLOCK
    # removing it matters more than zeroing same-size random entries; the restore control keeps its output at
    # the initial token of every held-out text (a random model's other positions use the weight too, so it
    # does not undo the whole effect here: that is measured on the real models)
    v = sw.verification
    assert v is not None and len(v.controls) == 5
    assert v.score.kl > 100 * abs(v.score.control_kl or 0.0) + 1e-4  # a random model barely uses its BOS state
    assert v.restored_positions >= len(HELD) and v.restore_kl >= 0
    # the iterative search zeroes it and probes again: the peak collapses
    assert d.emergence[0].zeroed == [sw.name] and d.emergence[0].peak_ratio < 0.5
    out = result.to_dict()
    assert out["defects"][0]["super_weight"] == f"W[{ROW},{COL}]@{BLOCK}"


def test_zeroing_hooks_compute_what_the_zeroed_parameter_computes(tiny, unchanged):
    tokens = tiny.to_tokens("The cat sat on the mat.")
    value = down_entry(tiny, 0, 3, 7)
    assert value != 0.0
    with unchanged(tiny):
        hooked = tiny.run_with_hooks(tokens, fwd_hooks=zero_entry_hooks(tiny, 0, 3, 7, value)).detach()
        with zeroed(tiny, [(0, 3, 7)]):
            assert down_entry(tiny, 0, 3, 7) == 0.0
            direct = tiny(tokens).detach()
    clean = tiny(tokens).detach()
    assert not torch.equal(direct, clean)
    torch.testing.assert_close(hooked, direct, rtol=1e-4, atol=1e-5)  # float32 rounding of y - h w


def test_weights_come_back_bit_exactly_after_an_error(tiny, unchanged):
    with unchanged(tiny):
        with pytest.raises(RuntimeError, match="boom"):
            with zeroed(tiny, [(0, 1, 2), (1, 3, 4), (1, 5, 6)]):
                assert down_entry(tiny, 1, 5, 6) == 0.0
                raise RuntimeError("boom")


def _weight(block: int, row: int, col: int, role: str = "emitter") -> SuperWeight:
    return SuperWeight(block=block, row=row, col=col, role=role, value=1.0, spike=1.0, output=1.0,  # type: ignore[arg-type]
                       norm_scale=None, gain=1.0, effective=1.0, along=1.0 if role == "emitter" else -1.0,
                       share=0.9, peak_share=0.5)


def test_consistency_names_the_mismatches():
    _, _, report = analysed("llama")
    d = replace(report[0], explosion_layer=BLOCK, decay_layers=[2])
    ok = consistency(d, [_weight(BLOCK, ROW, COL)], [_weight(2, ROW, 9, "canceller")], ROW)
    assert ok.agrees and ok.rows_agree and ok.blocks_agree and ok.mismatches == []
    spread = [_weight(5, ROW, 1), _weight(4, ROW, 2), _weight(6, ROW, 3), _weight(8, ROW, 4)]
    bad = consistency(d, spread, [_weight(7, 3, 9, "canceller")], 40)
    assert not bad.rows_agree and not bad.blocks_agree
    text = "; ".join(bad.mismatches)
    assert "the massive activation is in channel 40" in text
    assert "build-up over blocks 4-6, 8 (largest single weight at block 5, explosion block 1)" in text
    assert "cancelled at block 7, outside the decay blocks (2)" in text
    wrong_row = consistency(d, [_weight(BLOCK, 3, COL)], [], ROW)
    assert f"the super weight writes channel 3, the defect's dominant channel is {ROW}" in wrong_row.mismatches
    assert "no single weight cancels it at the decay blocks 2" in wrong_row.mismatches
    late = consistency(d, [_weight(2, ROW, COL)], [], ROW)
    assert f"the super weight is at block 2, the explosion block is {BLOCK}" in late.mismatches


@pytest.mark.parametrize("bad", [{"n_seeds": 0}, {"min_share": 1.5}, {"iterations": -1}, {"restore_fraction": 0}])
def test_bad_arguments_fail_before_any_forward(bad):
    model, probe, report = analysed("llama")
    with pytest.raises(InputError):
        super_weights(model, report, probe, HELD, **bad)


def test_the_page_names_no_block_channel_or_neuron_of_a_model():
    """docs/super_weights.md reads every block, channel and neuron from the results."""
    from pathlib import Path

    from conftest import tutorial_module

    page = Path(__file__).resolve().parents[2] / "docs" / "super_weights.md"
    code = "\n".join(b.body for b in tutorial_module().blocks(page.read_text(encoding="utf-8")) if b.lang == "python")
    assert "super_weights(" in code
    for forbidden in ("507", "163", "1229", "584", "678", "287", "block=", "row="):
        assert forbidden not in code, forbidden


def test_pipeline_json_report_and_cli_flag(unchanged):
    """``super_weights=True``: the result, the JSON key, the report section and summary sentence, the CLI flag."""
    from sd_lens.cli import build_parser
    from sd_lens.pipeline import run_analysis
    from sd_lens.report.page import Page
    from sd_lens.report.results import super_weights_section

    model, _, _ = analysed("llama")
    with unchanged(model):
        result = run_analysis(model, TEXTS, super_weights=True, super_weight_seeds=5)
    assert result.errors == {}
    assert result.super_weights is not None and result.super_weights.n_seeds == 5
    data = result.to_dict()
    assert data["super_weights"]["defects"][0]["super_weight"] == f"W[{ROW},{COL}]@{BLOCK}"
    assert "super_weights" not in run_analysis(model, TEXTS[:4]).to_dict()
    from sd_lens.report.prose import report_summary

    assert f"Super weights (Yu et al. 2024): D0's is W[{ROW},{COL}]@{BLOCK}" in report_summary(result)
    page = Page("test")
    super_weights_section(page, type("Ctx", (), {"result": result})())  # type: ignore[arg-type]
    assert "Super weights" in page.render()
    import io

    from sd_lens.cli import _print_findings_summary

    printed = io.StringIO()
    _print_findings_summary(result, printed)  # what `sd-lens analyze --super-weights --json FILE` prints
    assert f"D0: super weight W[{ROW},{COL}]@{BLOCK}" in printed.getvalue()
    args = build_parser().parse_args(["analyze", "--super-weights", "--super-weight-seeds", "6"])
    assert args.super_weights is True and args.super_weight_seeds == 6
    with pytest.raises(InputError, match="super_weight_seeds"):
        run_analysis(model, TEXTS, super_weight_seeds=0)


def _private_llama() -> Any:
    """A private tiny Llama (the property test zeroes its weights), built once."""
    if "private" not in _cache:
        _cache["private"] = tiny_model("llama", seed=5, n_layers=2)
    return _cache["private"]


@settings(max_examples=15, deadline=None)
@given(block=st.integers(0, 1), row=st.integers(0, 63), col=st.integers(0, 127))
def test_zeroing_any_entry_by_hooks_or_parameter_agrees_and_restores(block, row, col):
    _llama = _private_llama()
    tokens = _llama.to_tokens("Hello, world.")
    before = [p.detach().clone() for p in _llama.parameters()]
    value = down_entry(_llama, block, row, col)
    hooked = _llama.run_with_hooks(tokens, fwd_hooks=zero_entry_hooks(_llama, block, row, col, value)).detach()
    with zeroed(_llama, [(block, row, col)]):
        assert down_entry(_llama, block, row, col) == 0.0
        direct = _llama(tokens).detach()
    torch.testing.assert_close(hooked, direct, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, _llama.parameters()))


def test_the_causal_ranking_ranks_the_super_weights_in(unchanged):
    """``super_weights=True, causal_ranking=True``: the planted weight is a finding of the ranking, with the
    score its own verification measured, judged against the ranking's ``inert_kl``, in causal order."""
    from sd_lens.analyses.causal_score import ranked
    from sd_lens.pipeline import run_analysis

    model, _, _ = analysed("llama")
    with unchanged(model):
        result = run_analysis(
            model, TEXTS, super_weights=True, super_weight_seeds=5, causal_ranking=True, inert_kl=1e9, held_out_lines=8
        )
    assert result.errors == {} and result.ranking is not None and result.super_weights is not None
    name = f"W[{ROW},{COL}]@{BLOCK}"
    found = result.ranking.find(name)
    own = next(w for d in result.super_weights.defects for w in d.weights if w.name == name)
    assert found.kind == "super weight" and found.blocks == (BLOCK,) and found.channel == ROW
    assert found.score.kl == own.score.kl and found.label == "massive but inert"  # inert_kl=1e9 applies to it too
    assert [f.score for f in result.ranking] == ranked(f.score for f in result.ranking)
    assert name in [f["name"] for f in result.to_dict()["causal_ranking"]["findings"]]
