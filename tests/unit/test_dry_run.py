"""The dry run (``sd_lens.dry_run``): each stage's memory by arithmetic, against a budget, nothing allocated."""

from __future__ import annotations

import pytest
import torch

import sd_lens
from sd_lens.errors import InputError
from sd_lens.models.dry_run import dry_run
from sd_lens.models.synthetic import SHAPES, synthetic_model
from sd_lens.models.view import model_view


def test_a_70b_model_does_not_fit_one_80_gb_card_and_says_which_stages():
    with pytest.raises(InputError, match=r"probe 138\.2 GB.*dtype_check 276\.4 GB.*spectra 176\.6 GB"):
        sd_lens.dry_run("70b", budget_gb=80)
    run = dry_run("70b", check=False)
    assert run.peak.stage == "dtype_check" and not run.fits
    weights = SHAPES["70b"].n_params() * 2
    assert all(s.weights == weights for s in run.stages)
    spectra = next(s for s in run.stages if s.stage == "spectra")
    per_head = next(i for i in spectra.items if i.what.startswith("per-head"))
    assert per_head.bytes == 64 * 8192 * 8192 * 4 and per_head.how == "computed"  # 17.2 GB: the largest item
    assert "| spectra |" in run.table()


def test_split_over_four_cards_it_fits():
    run = dry_run("70b", n_devices=4, budget_gb=80)
    assert run.fits and run.peak.stage == "spectra"
    assert dry_run("70b", n_devices=2, budget_gb=80, check=False).over


def test_the_meta_model_and_the_shape_give_the_same_arithmetic():
    hf, _ = synthetic_model("llama", "70b", dtype=torch.bfloat16, device="meta")
    from_model = dry_run(hf, check=False)
    from_shape = dry_run("70b", check=False)
    assert from_model.shape == from_shape.shape and from_model.family == "llama"
    # the model's exact parameter count (norms included) differs from the shape's by < 0.01 %
    assert from_model.stages[0].weights == pytest.approx(from_shape.stages[0].weights, rel=1e-4)


def test_the_view_arithmetic_matches_a_real_view(tiny):
    """The float32 view of a small model, counted by the dry run, is the bytes a ModelView holds."""
    run = dry_run(tiny, check=False, dtype="float32")
    spectra = next(s for s in run.stages if s.stage == "spectra")
    counted = next(i for i in spectra.items if i.what.startswith("float32 view")).bytes
    view = model_view(tiny)
    held = 0
    for block in view:
        for name in ("W_V", "W_O", "W_in", "W_gate", "W_out"):
            t = getattr(block, name)
            held += 0 if t is None else t.numel() * 4
    assert counted == held


def test_options_add_their_stages():
    names = [s.stage for s in dry_run("7b", channels=True, local_checks=True, interventions=True, check=False).stages]
    assert names == ["probe", "defects", "dtype_check", "spectra", "decay_checks", "outliers_and_sinks", "attribution",
                     "life_cycle", "local_checks", "interventions"]
    fp32 = [s.stage for s in dry_run("7b", forward_dtype="float32", check=False).stages]
    assert "dtype_check" not in fp32
    with pytest.raises(InputError, match="n_devices"):
        dry_run("7b", n_devices=0)
