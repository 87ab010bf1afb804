"""Synthetic models with a planted defect (``sd_lens.synthetic_model``): the analyses find what was planted.

Every family, at the ``"small"`` shape (d_model 128, 6 blocks): the defect finder, the spectra, the
life cycle, the channel lens (massive activations) and the super-weight search recover the planted block, channel and neuron
exactly; the 70B shape builds on the meta device without allocating.
"""

from __future__ import annotations

import dataclasses
import math
import resource

import pytest
import torch

import sd_lens
from sd_lens.corpus import default_corpus
from sd_lens.errors import InputError
from sd_lens.models.synthetic import FAMILIES, SHAPES, ModelShape, PlantedDefect, resolve_shape, synthetic_model

pytestmark = pytest.mark.bridge_only(reason="synthetic_model builds through TransformerLens 4's TransformerBridge (under 2.x it refuses: test_synthetic_model_refuses_transformer_lens_2)")

TEXTS = default_corpus(16)
_built: dict[str, tuple] = {}


def _analysed(family: str) -> tuple:
    """(model, planted defect, run_analysis with the channel lens): one per family per session."""
    if family not in _built:
        model, planted = synthetic_model(family)
        result = sd_lens.run_analysis(model, TEXTS, channels=True)
        _built[family] = (model, planted, result)
    return _built[family]


def test_exported_at_the_top_level():
    assert sd_lens.synthetic_model is synthetic_model
    assert sd_lens.PlantedDefect is PlantedDefect


@pytest.mark.parametrize("family", FAMILIES)
def test_the_analyses_recover_the_planted_defect(family):
    model, planted, result = _analysed(family)
    assert isinstance(planted, PlantedDefect) and dataclasses.is_dataclass(planted)
    with pytest.raises(dataclasses.FrozenInstanceError):
        planted.block = 3  # type: ignore[misc]
    # the defect finder: one major defect, the initial token, exploding and decaying where planted
    majors = list(result.defects)
    assert len(majors) == 1, [d.explosion_layer for d in majors]
    (defect,) = majors
    assert defect.initial_token and not defect.noninitial_tokens
    assert defect.explosion_layer == planted.block
    assert defect.decay_layers == [planted.decay_block]
    assert int(defect.direction.abs().argmax()) == planted.channel
    # the spectra: the first block whose leading left singular direction is the defect's is the explosion
    # block (Wang et al.'s observation (i)); the decay block's is too (its neuron writes the same channel,
    # negatively: a large negative eigenvalue of L - I along the direction, their observation (ii))
    finding = result.findings[0]
    angles = [float(a) for a in result.spectra.angles(0)]
    aligned = [b for b, a in enumerate(angles) if a < 1.0]
    assert aligned == [planted.block, planted.decay_block], angles
    assert finding.predicted_angle_deg == pytest.approx(angles[planted.block])
    assert finding.closest_block in aligned
    (check,) = finding.decay_checks
    assert check.layer == planted.decay_block and check.eigvec_angle_deg < 1.0
    if family != "gemma3":
        assert check.eigenvalue < -1.0
    else:  # a known limit: the linearised post-norms' cross term F·A outweighs F there (docs/models.md)
        assert check.eigenvalue > 0
    # the channel lens: one massive channel in the residual stream, the planted one, on the initial token
    resid = result.outliers.channels("resid_post")
    assert resid == [planted.channel]
    entries = [e for e in result.outliers.entries if e.site == "resid_post"]
    assert {e.block for e in entries} == set(range(planted.block, planted.decay_block))
    assert {e.position for e in entries} == {0}
    # ... and one massive down-projection input, the planted neuron at the planted block
    assert result.outliers.channels("mlp_post", [planted.block]) == [planted.neuron]
    # the life cycle: the channel, the emitting neuron at the explosion block, the cancelling neuron
    (life,) = result.life.defects
    assert life.channel == planted.channel
    assert life.explosion_set == [planted.block]
    (step,) = life.emergence
    assert (step.block, step.channel, step.sublayer) == (planted.block, planted.channel, "ffn")
    assert step.neurons[0].neuron == planted.neuron and step.neurons[0].share > 0.99
    cancel = life.strongest_cancel
    assert cancel is not None and (cancel.block, cancel.sublayer) == (planted.decay_block, "ffn")
    assert cancel.neurons[0].neuron == planted.decay_neuron
    # the ground truth's measured value is what the analyses saw
    peak = result.outliers.max_value["resid_post"][planted.block, planted.channel]
    assert float(peak) == pytest.approx(planted.massive_value, rel=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_ordinary_tokens_stay_ordinary(family):
    model, planted, result = _analysed(family)
    ratio = result.probe.ratio("resid_post")  # [tokens, blocks]: norm over the block's median
    initial = result.probe.positions == 0
    assert float(ratio[~initial].max()) < 2.0
    assert float(ratio[initial, planted.block : planted.decay_block].min()) > 100.0
    assert float(ratio[initial, planted.decay_block :].max()) < 2.0


def test_coordinates_seed_and_shape_are_honoured():
    model, planted = synthetic_model("llama", n_layers=5, d_model=96, block=2, channel=7, neuron=11, decay_block=4)
    assert (planted.block, planted.channel, planted.neuron, planted.decay_block) == (2, 7, 11, 4)
    assert (model.cfg.n_layers, model.cfg.d_model) == (5, 96)
    again, planted_again = synthetic_model("llama", n_layers=5, d_model=96, block=2, channel=7, neuron=11,
                                           decay_block=4)
    assert planted_again == planted
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    plain, none = synthetic_model("gpt2", plant=False)
    assert none is None and plain.cfg.n_layers == SHAPES["small"].n_layers


def test_no_decay_block_keeps_the_defect_to_the_end():
    model, planted = synthetic_model("llama", decay_block=None)
    report = sd_lens.find_defects(model, sd_lens.probe_norms(model, TEXTS[:8]))
    (defect,) = list(report)
    assert planted.decay_block is None and defect.decay_layers == []
    assert defect.last_layer == model.cfg.n_layers - 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_keeps_the_defect(dtype):
    model, planted = synthetic_model("llama", dtype=dtype)
    assert next(model.parameters()).dtype == dtype
    report = sd_lens.find_defects(model, sd_lens.probe_norms(model, TEXTS[:8]))
    (defect,) = list(report)
    assert (defect.explosion_layer, defect.decay_layers) == (planted.block, [planted.decay_block])


def test_bad_coordinates_and_shapes_are_refused():
    with pytest.raises(InputError, match="decay_block"):
        synthetic_model("llama", block=3, decay_block=2)
    with pytest.raises(InputError, match="channel"):
        synthetic_model("llama", channel=10_000)
    with pytest.raises(InputError, match="unknown family"):
        synthetic_model("bert")
    with pytest.raises(InputError, match="unknown shape"):
        resolve_shape("13b")
    with pytest.raises(InputError, match="multiple"):
        ModelShape(d_model=100, d_mlp=10, n_layers=2, n_heads=3, n_kv_heads=1, vocab_size=200)


def test_the_70b_shape_builds_on_meta_without_allocating():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hf, planted = synthetic_model("llama", "70b", dtype=torch.bfloat16, device="meta")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    params = list(hf.parameters())
    assert all(p.device.type == "meta" for p in params)
    n = sum(p.numel() for p in params)
    assert n == pytest.approx(SHAPES["70b"].n_params(), rel=1e-3)  # ~69 billion
    assert grown_kib < 200 * 1024  # far below the 138 GB the weights would take
    cfg = hf.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_key_value_heads) == (
        8192, 28672, 80, 8)
    assert planted.block == 1 and planted.decay_block == 78 and math.isnan(planted.massive_value)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_super_weight_search_recovers_the_planted_weight(family):
    """Issue #23's planted ground truth on synthetic models: ``super_weights`` names the planted
    ``W_down[channel, neuron]`` at the planted block as the defect's super weight, and the planted
    cancelling neuron at the decay block as its leading canceller — exactly, on every family."""
    from sd_lens.analyses.super_weights import super_weights

    model, planted, result = _analysed(family)
    found = super_weights(model, result.defects, result.probe, verify=False, iterations=0)
    (d,) = found.defects
    w = d.super_weight
    assert w is not None and (w.block, w.row, w.col) == (planted.block, planted.channel, planted.neuron)
    assert d.cancellers and (d.cancellers[0].block, d.cancellers[0].row) == (planted.decay_block, planted.channel)
    if planted.decay_neuron is not None:
        assert d.cancellers[0].col == planted.decay_neuron
