"""The pieces a notebook reaches for (issue 22): a defect's trigger on the result, the carrier mask, and the
stage registry that lets an application add a pipeline stage without the pipeline importing it."""

from __future__ import annotations

import pytest
import torch

import sd_lens
from conftest import planted_bos_model
from sd_lens.errors import InputError
from sd_lens.pipeline import register_stage, registered_stage

TEXTS = ["the cat sat on the mat", "a dog ran far away", "hello there world", "one two three four"]


@pytest.fixture(scope="module")
def planted_result():
    model = planted_bos_model()
    return model, sd_lens.run_analysis(model, TEXTS)


def test_the_trigger_is_on_the_result(planted_result):
    """``result.trigger(label)`` is the v0 the causal check ablated, at the defect's explosion block."""
    _, result = planted_result
    assert result.defects.defects, "the planted BOS makes a major defect"
    for d, f in zip(result.defects, result.findings):
        trig = result.trigger(d.label)
        fit = result.spectra.linearizations[d.explosion_layer].ffn_fit
        assert trig.block == d.explosion_layer and trig.label == d.label
        torch.testing.assert_close(trig.v0, fit.v0)
        assert trig.s0 == fit.s0 and trig.causal is f.causal
    with pytest.raises(InputError, match="no major defect 'D99'"):
        result.trigger("D99")


def test_the_carrier_mask_marks_bos_and_the_planted_carrier(planted_result):
    """BOS (planted high-norm) is marked in every text; ``first=False`` still marks it by its norm;
    positions past a text's end are never marked."""
    _, result = planted_result
    probe = result.probe
    mask = sd_lens.carrier_mask(probe)
    lengths = [int(s.numel()) for s in probe.sequences]
    assert mask.shape == (len(TEXTS), max(lengths)) and mask.dtype == torch.bool
    assert mask[:, 0].all()
    assert sd_lens.carrier_mask(probe, first=False)[:, 0].all()  # the norm alone marks it
    for row, n in enumerate(lengths):
        assert not mask[row, n:].any()
    # a threshold above every ratio leaves the first token only
    huge = sd_lens.carrier_mask(probe, threshold=1e9)
    assert huge[:, 0].all() and not huge[:, 1:].any()
    assert not sd_lens.carrier_mask(probe, threshold=1e9, first=False).any()
    with pytest.raises(InputError):
        sd_lens.carrier_mask(probe, threshold=0)


def test_an_application_registers_its_stage():
    """The quantization stage comes from sd_lens.quantize (imported on demand); a stage can be registered
    and replaced; unknown names and non-callables are refused."""
    import sd_lens.quantize as quantize

    assert registered_stage("quantization") is quantize._analysis_stage
    with pytest.raises(InputError, match="no stage 'nope'"):
        registered_stage("nope")
    with pytest.raises(InputError, match="expected a callable"):
        register_stage("nope", 3)  # type: ignore[arg-type]
    register_stage("test-only", len)
    try:
        assert registered_stage("test-only") is len
    finally:
        from sd_lens.stages import registry

        registry._PROVIDED.pop("test-only")
