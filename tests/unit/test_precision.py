"""The forward's dtype: cast for an analysis and restored bit-exactly; the float32 check of half-precision defects."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import pytest
import torch

from conftest import planted_bos_model
from sd_lens.analyses.defects import find_defects
from sd_lens.analyses.dtype_check import compare_defects, dtype_check
from sd_lens.analyses.probe import probe_norms
from sd_lens.errors import InputError
from sd_lens.models.loading import model_dtype
from sd_lens.models.tiny import tiny_model
from sd_lens.pipeline import AnalysisConfig, run_analysis
from sd_lens.runtime import precision
from sd_lens.runtime.precision import check_memory, extra_bytes, forward_dtype, parse_dtype

TEXTS = ["the cat sat on the mat", "a b c d e f g", "hello there, general"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_half_precision_value_survives_the_float32_round_trip(dtype):
    """Why casting back is exact: every one of the 65 536 bit patterns comes back (NaNs stay NaN)."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    x = bits.view(dtype)
    back = x.to(torch.float32).to(dtype)
    nan = torch.isnan(x)
    assert torch.equal(back.view(torch.int16)[~nan], bits[~nan])
    assert torch.isnan(back[nan]).all()


@pytest.mark.parametrize(
    "start, target",
    [(torch.float16, "float32"), (torch.bfloat16, "float32"), (torch.float32, "float16"), (torch.float32, "bfloat16")],
)
def test_forward_dtype_runs_in_the_target_and_restores_the_model_bit_exactly(start, target, unchanged):
    model = tiny_model("llama", seed=2, dtype=start)
    with unchanged(model):
        with forward_dtype(model, target) as m:
            assert m is model
            assert model_dtype(model) == target
            assert model.cfg.dtype == parse_dtype(target)
            probe = probe_norms(model, TEXTS)
            assert torch.isfinite(probe.norms[..., 1:]).all()
    assert model_dtype(model) == str(start).removeprefix("torch.")


def test_forward_dtype_restores_after_an_error(unchanged):
    model = tiny_model("gemma3", seed=3, dtype=torch.bfloat16)
    with unchanged(model):
        with pytest.raises(RuntimeError, match="boom"):
            with forward_dtype(model, "float32"):
                probe_norms(model, TEXTS)
                raise RuntimeError("boom")


def test_forward_dtype_none_or_the_same_dtype_changes_nothing():
    model = tiny_model("gpt2", seed=1)
    before = [p.data.data_ptr() for p in model.parameters()]
    for dtype in (None, "float32", torch.float32):
        with forward_dtype(model, dtype):
            assert [p.data.data_ptr() for p in model.parameters()] == before


def test_the_float32_copy_is_refused_when_the_memory_is_not_there(monkeypatch):
    """A cast that needs more than the free memory is refused with the figures, before anything changes."""
    model = tiny_model("llama", seed=2, dtype=torch.float16)
    need = extra_bytes(model, "float32")
    n_half = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers() if b.is_floating_point())
    assert sum(need.values()) <= 2 * n_half and sum(need.values()) >= 2 * sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(precision, "free_bytes", lambda device: 1000)
    with pytest.raises(InputError, match=r"needs .* GiB more on cpu, which has .* GiB free"):
        check_memory(model, "float32")
    with pytest.raises(InputError, match="GiB free"):
        with forward_dtype(model, "float32"):
            pass  # pragma: no cover
    assert model_dtype(model) == "float16"


@pytest.mark.parametrize("bad", ["float64", "int8", 3, torch.int32])
def test_parse_dtype_names_the_choices(bad):
    with pytest.raises(InputError, match="float32, bfloat16, float16"):
        parse_dtype(bad)


def test_forward_dtype_option_is_checked_when_the_config_is_built():
    with pytest.raises(InputError, match="forward_dtype"):
        AnalysisConfig(forward_dtype="float64")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# pairing the defects of two dtypes
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted():
    model = planted_bos_model()
    probe = probe_norms(model, TEXTS)
    return model, probe, find_defects(model, probe)


def test_a_report_pairs_with_itself_at_zero_angle(planted):
    _, _, report = planted
    assert len(report.all) >= 1
    pairs, ours, theirs = compare_defects(report, report)
    assert (ours, theirs) == ([], [])
    assert [(a.label, b.label) for a, b, _ in pairs] == [(d.label, d.label) for d in report.all]
    assert all(ang < 1e-3 for *_, ang in pairs)


def test_a_defect_without_a_partner_is_a_phantom_and_the_reverse_is_missed(planted):
    _, _, report = planted
    empty = replace(report, defects=[], minor=[])
    pairs, phantom, missed = compare_defects(report, empty)
    assert pairs == [] and [d.label for d in phantom] == [d.label for d in report.all] and missed == []
    pairs, phantom, missed = compare_defects(empty, report)
    assert pairs == [] and phantom == [] and [d.label for d in missed] == [d.label for d in report.all]


def test_a_defect_turned_away_from_its_partner_is_not_paired(planted):
    """Overlapping blocks are not enough: the directions must agree within split_angle_deg (sign-blind)."""
    _, _, report = planted
    d = report[0]
    u = d.direction / d.direction.norm()
    perp = torch.randn_like(u)
    perp -= (perp @ u) * u
    turned = replace(d, direction=perp, block_directions={k: perp for k in d.block_directions})
    flipped = replace(d, direction=-d.direction, block_directions={k: -v for k, v in d.block_directions.items()})
    assert compare_defects(replace(report, defects=[turned], minor=[]), replace(report, minor=[]))[0] == []
    pairs = compare_defects(replace(report, defects=[flipped], minor=[]), replace(report, minor=[]))[0]
    assert len(pairs) == 1 and pairs[0][2] < 1e-3
    with pytest.raises(InputError, match="split_angle_deg"):
        compare_defects(report, report, split_angle_deg=0)


def test_dtype_check_of_a_half_precision_model_against_float32(unchanged):
    """bfloat16 on the planted model: the same defect, peaks within bfloat16's precision, the model unchanged."""
    model = planted_bos_model()
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            t.data = t.data.to(torch.bfloat16)
    # the config too: a HookedTransformer's norms cast their output to cfg.dtype (left at float32, they
    # fed float32 activations to the bfloat16 weights — why this test was once bridge-only)
    model.cfg.dtype = torch.bfloat16
    probe = probe_norms(model, TEXTS)
    report = find_defects(model, probe)
    with unchanged(model):
        check = dtype_check(model, probe, report)
    assert check.dtype == "bfloat16" and check.reference == "float32"
    assert check.agrees, check.summary()
    assert 0 < float(check.norm_change.max()) < 0.05  # bfloat16 keeps ~3 significant digits
    assert check.max_peak_change < 0.02
    d = json.loads(json.dumps(check.to_dict()))
    assert d["agrees"] and d["phantom"] == [] and "Same defects as float32" in d["summary"]
    assert len(d["norm_change"]) == model.cfg.n_layers


# ------------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------------
def test_run_analysis_checks_half_precision_defects_against_float32():
    model = tiny_model("llama", seed=1, n_layers=3, dtype=torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_analysis(model, TEXTS)
    d = result.to_dict()
    assert d["dtype"] == "float16" and "model_dtype" not in d
    assert d["dtype_check"]["reference"] == "float32"
    assert "dtype_check" in result.timings_s


def test_run_analysis_can_run_a_half_precision_model_in_float32(unchanged):
    """forward_dtype='float32': the analysis is a float32 one (no check needed), the model comes back as it was."""
    half = tiny_model("gemma3", seed=4, n_layers=3, dtype=torch.bfloat16)
    ref = tiny_model("gemma3", seed=4, n_layers=3)  # the same init in float32 (then rounded below)
    for p, q in zip([*ref.parameters(), *ref.buffers()], [*half.parameters(), *half.buffers()]):
        if p.is_floating_point():
            p.data = q.data.to(torch.float32)
    with unchanged(half):
        result = run_analysis(half, TEXTS, forward_dtype="float32")
    d = result.to_dict()
    assert d["dtype"] == "float32" and d["model_dtype"] == "bfloat16" and "dtype_check" not in d
    plain = run_analysis(ref, TEXTS).to_dict()
    assert d["typical_norm"] == plain["typical_norm"]
    assert [x["peak_norm"] for x in d["defects"]] == [x["peak_norm"] for x in plain["defects"]]


def test_run_analysis_without_the_check():
    model = tiny_model("neox", seed=1, n_layers=2, dtype=torch.bfloat16)
    result = run_analysis(model, TEXTS, dtype_check=False)
    assert result.dtype_check is None and "dtype_check" not in result.to_dict()


def test_the_check_is_skipped_with_a_warning_when_float32_does_not_fit(monkeypatch):
    model = tiny_model("llama", seed=1, n_layers=2, dtype=torch.bfloat16)
    monkeypatch.setattr(precision, "free_bytes", lambda device: 10)
    with pytest.warns(UserWarning, match="float32 check of the bfloat16 defects was skipped: .*GiB free"):
        result = run_analysis(model, TEXTS)
    assert result.dtype_check is None
    with pytest.raises(InputError, match="GiB free"):
        run_analysis(model, TEXTS, forward_dtype="float32")


def test_cli_takes_the_load_and_forward_dtypes():
    from sd_lens.cli import build_parser, config_from_args

    args = build_parser().parse_args(["analyze", "--dtype", "bfloat16", "--forward-dtype", "float32", "--no-dtype-check"])
    assert args.dtype == "bfloat16"
    cfg = config_from_args(args)
    assert cfg.forward_dtype == "float32" and cfg.dtype_check is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["analyze", "--dtype", "float64"])


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "neox"])
def test_blockwise_cast_holds_one_block_in_float32_at_a_time(family, unchanged):
    """``blockwise=True``: inside block 1's forward only block 1 (and what is outside the blocks) is float32,
    and the probe equals the whole-model cast's exactly (the same float32 arithmetic)."""
    model = tiny_model(family, seed=2, dtype=torch.bfloat16, n_layers=3)
    seen: list[list[str]] = []

    def record(act, hook):
        seen.append([str(next(b.parameters()).dtype) for b in model.blocks])

    with unchanged(model):
        with forward_dtype(model, "float32", blockwise=True):
            model.run_with_hooks(model.to_tokens(TEXTS[0]), fwd_hooks=[("blocks.1.hook_resid_pre", record)])
            assert all(str(next(b.parameters()).dtype) == "torch.bfloat16" for b in model.blocks)  # between forwards
            blockwise = probe_norms(model, TEXTS).norms
        with forward_dtype(model, "float32"):
            whole = probe_norms(model, TEXTS).norms
    assert seen == [["torch.bfloat16", "torch.float32", "torch.bfloat16"]]
    torch.testing.assert_close(blockwise, whole, rtol=0, atol=0, equal_nan=True)  # NaN: a site the family lacks
