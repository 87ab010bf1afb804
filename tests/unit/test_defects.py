"""Defect finder edge cases on a tiny model with a planted high-norm BOS (no download)."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import planted_bos_model, token_embedding
from sd_lens.analyses.defects import find_defects
from sd_lens.analyses.probe import probe_norms
from sd_lens.errors import InputError
from sd_lens.linalg import acute_angle_deg
from sd_lens.models.tiny import tiny_model
from sd_lens.report.prose import defects_summary

TEXTS = ["the cat sat on the mat", "a dog ran far away", "hello there world", "one two three four"]


@pytest.fixture(scope="module")
def planted():
    """A 4-block tiny Llama whose BOS embedding is 40x larger: a high-norm initial token from block 0."""
    return planted_bos_model()


def test_explosion_block_lies_inside_the_defect(planted):
    report = find_defects(planted, probe_norms(planted, TEXTS))
    assert len(report) >= 1
    for d in report:
        assert d.first_layer <= d.explosion_layer <= d.last_layer
        assert d.initial_token


@pytest.fixture(scope="module")
def planted_two():
    """Tiny Llama with a 40x BOS and a 12x ' x' embedding: two high-norm carriers in different directions."""
    model = tiny_model("llama", seed=1, n_layers=4)
    emb = token_embedding(model)
    x_id = model.tokenizer(" x", add_special_tokens=False)["input_ids"][-1]
    with torch.no_grad():
        emb[model.tokenizer.bos_token_id] *= 40
        emb[x_id] *= 12
    return model


WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "away", "x", "hello", "world"]


def _corpus(n: int, seed: int = 0, words: list[str] = WORDS) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def sized(planted_two):
    """The planted model's defects on 40 texts and on 1 200 other texts (and those texts)."""
    large_texts = _corpus(1200, seed=1)
    small = find_defects(planted_two, probe_norms(planted_two, _corpus(40)))
    return small, find_defects(planted_two, probe_norms(planted_two, large_texts)), large_texts


def test_the_same_defects_whatever_the_corpus_size(sized):
    """40 texts and 1 200 (more candidate states per block than the old 1 024-vector cap): the same two defects.

    Before: 2 defects on 40 texts, 4 on 400 and 1 200 (' x' split by onset block, 3.0-4.4 deg apart), and on 1 200
    texts only 711 of the 1 200 initial-token episodes counted (the rest had no stored vector).
    """
    small, large, large_texts = sized
    assert len(small) == len(large) == 2 and not small.minor and not large.minor
    for a, b in zip(small, large):
        assert (a.explosion_layer, a.first_layer, a.last_layer) == (b.explosion_layer, b.first_layer, b.last_layer)
        assert (a.initial_token, [t for t, _ in a.noninitial_tokens]) == (b.initial_token, [t for t, _ in b.noninitial_tokens])
        assert float(acute_angle_deg(a.direction, b.direction)) < 2.0
    initial = next(d for d in large if d.initial_token)
    assert initial.n_episodes == len(large_texts)  # every text's initial token, nothing capped
    x = next(d for d in large if not d.initial_token)
    assert [t for t, _ in x.noninitial_tokens] == ["x"]
    assert x.n_episodes == sum(t.count("x") for t in large_texts)  # every occurrence of the planted token
    assert float(acute_angle_deg(initial.direction, x.direction)) > 60  # two directions, not one smeared defect


def test_direction_memory_does_not_grow_with_the_corpus(sized):
    """The second pass keeps block x cluster sums (d_model floats) and one small int per state."""
    small, large = sized[0].clusters, sized[1].clusters
    assert small is not None and large is not None
    for layer in range(small.n_layers):
        assert large.sums[layer].shape == small.sums[layer].shape  # the same clusters, however many states
    assert large.assignment.dtype == torch.int32 and large.assignment.ndim == 2


def test_a_lone_token_is_a_minor_group_with_its_reason(planted_two):
    texts = _corpus(30, words=[w for w in WORDS if w != "x"]) + ["the cat sat on x mat"]
    report = find_defects(planted_two, probe_norms(planted_two, texts))
    assert len(report) == 1 and report[0].initial_token
    (lone,) = report.minor
    assert [t for t, _ in lone.noninitial_tokens] == ["x"] and lone.n_episodes == 1
    assert any("single token occurrence" in r for r in lone.minor_reasons)
    assert "m0" in defects_summary(report) and "single token occurrence" in defects_summary(report)


def test_major_ratio_moves_defects_to_the_minor_groups(planted_two):
    probe = probe_norms(planted_two, _corpus(40))
    everything_minor = find_defects(planted_two, probe, major_ratio=1e9)
    assert len(everything_minor) == 0 and len(everything_minor.minor) == 2
    assert all(any("peaks at" in r for r in d.minor_reasons) for d in everything_minor.minor)
    assert "0 defect(s)" in defects_summary(everything_minor)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_finder_options_are_clear_errors(planted, bad):
    probe = probe_norms(planted, TEXTS)
    with pytest.raises(InputError, match="threshold"):
        find_defects(planted, probe, threshold=bad)
    with pytest.raises(InputError, match="split_angle_deg"):
        find_defects(planted, probe, split_angle_deg=bad)


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
