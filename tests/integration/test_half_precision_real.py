"""Both bundled models in bfloat16 with the channel lens, local checks and interventions (issue 21, item 2).

Before: the attribution's closure check used float32's tolerance, so the lever raised
UnsupportedArchitectureError and nothing was written; the local checks would have skipped blocks whose
map reproduces hook_mlp_out within bfloat16's rounding (Gemma-3: 0.1-0.16 % at blocks 3, 4, 6, 11).
Measured on the whole default corpus (`sd-lens analyze --dtype bfloat16 --channels --local-checks
--interventions`, 2 busy cores, one thread): SmolLM2 60 s, attribution closure 0.022, split "hooks";
Gemma-3 64 s, closure 0.0069. Here a 16-text slice (``conftest.bfloat16_analysis``, whose float32 check
tests/integration/test_dtypes_real.py reads).
"""

from __future__ import annotations

import pytest

from conftest import bfloat16_analysis


def _check(result, explosion_blocks: list[int]) -> None:
    assert result.dtype == "bfloat16" and result.errors == {}
    assert [d.explosion_layer for d in result.defects if d.major] == explosion_blocks
    assert result.attribution.split == "hooks" and result.lever is not None and result.life is not None
    for check in result.local:
        assert check.skipped == {} and all(j.closes for j in check.jacobians.values())
        assert check.interventions
    assert result.interventions is not None


@pytest.mark.real_model
def test_smollm2_bfloat16_every_channel_option(smollm2):
    _check(bfloat16_analysis("smollm2-135m-instruct"), [2, 11])


@pytest.mark.real_model
def test_gemma3_bfloat16_every_channel_option(gemma3):
    _check(bfloat16_analysis("gemma-3-270m"), [5])
