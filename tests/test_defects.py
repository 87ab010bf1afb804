"""Defect finder edge cases on a tiny model with a planted high-norm BOS (no download)."""

from __future__ import annotations

import pytest
import torch

from sd_lens.analyses.defects import find_defects
from sd_lens.analyses.probe import probe_norms
from sd_lens.models.tiny import tiny_model

TEXTS = ["the cat sat on the mat", "a dog ran far away", "hello there world", "one two three four"]


@pytest.fixture(scope="module")
def planted():
    """A 4-block tiny Llama whose BOS embedding is 40x larger: a high-norm initial token from block 0."""
    model = tiny_model("llama", seed=1, n_layers=4)
    emb = dict(model.named_parameters())["model.embed_tokens._original_component.weight"]
    with torch.no_grad():
        emb[model.tokenizer.bos_token_id] *= 40
    return model


def test_explosion_block_lies_inside_the_defect(planted):
    report = find_defects(planted, probe_norms(planted, TEXTS))
    assert len(report) >= 1 and report.n_undirected_episodes == 0
    for d in report:
        assert d.first_layer <= d.explosion_layer <= d.last_layer
        assert d.initial_token


def test_states_without_vectors_are_reported_not_hidden(planted):
    probe = probe_norms(planted, TEXTS, keep_vectors_ratio=None)
    with pytest.warns(UserWarning, match="keep_vectors_ratio"):
        report = find_defects(planted, probe)
    assert len(report) == 0 and report.n_high_states > 0 and report.n_undirected_episodes > 0
    assert "keep_vectors_ratio" in report.summary() and "no state above" not in report.summary()


def test_defects_born_in_one_block_share_the_block_analyses(planted, monkeypatch):
    """Subspace and causal checks depend on the explosion block only: computed once per block."""
    import dataclasses

    import sd_lens.pipeline as analysis

    real_find, real_verify = analysis.find_defects, analysis.verify_trigger
    calls = []

    def two_defects(*args, **kwargs):
        report = real_find(*args, **kwargs)
        twin = dataclasses.replace(report.defects[0], index=1)  # results are frozen: a changed copy
        return dataclasses.replace(report, defects=[*report.defects, twin])

    monkeypatch.setattr(analysis, "find_defects", two_defects)
    monkeypatch.setattr(analysis, "verify_trigger", lambda *a, **k: calls.append(a[1]) or real_verify(*a, **k))
    result = analysis.run_analysis(planted, TEXTS)
    assert len(result.findings) == 2 and len(calls) == 1
    assert result.findings[0].causal is result.findings[1].causal
    assert result.findings[0].subspace is result.findings[1].subspace


def test_a_probe_of_the_first_blocks_gives_defects_within_them(planted):
    probe = probe_norms(planted, TEXTS, layers=2)
    report = find_defects(planted, probe)
    assert probe.n_layers == 2 and len(report) >= 1
    for d in report:
        assert d.last_layer <= 1 and all(b <= 1 for b in d.decay_layers) and d.explosion_layer <= 1
