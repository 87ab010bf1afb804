"""Norm probe: exact norms, streaming batches, input errors, non-finite activations."""
from __future__ import annotations

import pytest
import torch

from sd_lens.analyses.probe import HOOK_POINTS, probe_norms
from sd_lens.corpus import default_corpus, read_texts, validate_texts
from sd_lens.errors import InputError, NonFiniteActivationError
from sd_lens.models.tiny import tiny_model

TEXTS = ["Hello world, the cat.", "A much longer line of text that pads the batch.", "Hi"]


def test_norms_match_run_with_cache(tiny, unchanged):
    with unchanged(tiny):
        probe = probe_norms(tiny, TEXTS, batch_size=2)
    assert probe.norms.dtype == torch.float32
    assert probe.norms.shape == (probe.n_tokens, tiny.cfg.n_layers, len(HOOK_POINTS))
    for seq, text in enumerate(TEXTS):
        rows = probe.rows_of(seq)
        _, cache = tiny.run_with_cache(tiny.to_tokens(text))
        for layer in range(tiny.cfg.n_layers):
            for k, hp in enumerate(HOOK_POINTS):
                name = f"blocks.{layer}.hook_{hp}"
                if name not in cache:
                    assert torch.isnan(probe.norms[rows, layer, k]).all()
                    continue
                ref = cache[name][0].norm(dim=-1)
                torch.testing.assert_close(probe.norms[rows, layer, k], ref, rtol=1e-5, atol=1e-5)


def test_batching_and_padding_do_not_change_norms(tiny):
    one = probe_norms(tiny, TEXTS, batch_size=1)
    many = probe_norms(tiny, TEXTS, batch_size=16)
    torch.testing.assert_close(one.norms, many.norms, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert one.positions.tolist() == many.positions.tolist()


def test_probe_stops_early_and_keeps_no_full_activations(tiny):
    probe = probe_norms(tiny, TEXTS, layers=1)
    assert probe.norms.shape[1] == 1


def test_typical_norm_is_median_and_ratio_relative(tiny):
    probe = probe_norms(tiny, TEXTS)
    post = probe.hook("resid_post")
    torch.testing.assert_close(probe.typical_norm(), post.median(dim=0).values)
    torch.testing.assert_close(probe.ratio(), post / post.median(dim=0).values)
    with pytest.raises(InputError, match="unknown hook point"):
        probe.hook("resid_nowhere")


@pytest.mark.parametrize("bad", [[], [""], ["ok", "   "], [3]])
def test_bad_texts_are_rejected_clearly(tiny, bad):
    with pytest.raises(InputError):
        probe_norms(tiny, bad)


def test_over_long_text_is_an_error_unless_truncated(tiny):
    long = "x" * (tiny.cfg.n_ctx + 10)
    with pytest.raises(InputError, match="context"):
        probe_norms(tiny, [long], max_tokens_per_text=None)
    assert probe_norms(tiny, [long], max_tokens_per_text=32).n_tokens == 32


def test_non_finite_activations_raise(unchanged):
    model = tiny_model("llama", seed=3)
    with torch.no_grad():
        if hasattr(model, "original_model"):  # a bridge exposes the HF weight underneath
            model.original_model.model.layers[1].mlp.down_proj.weight.fill_(float("inf"))
        else:  # a HookedTransformer's own parameter
            model.blocks[1].mlp.W_out.fill_(float("inf"))
    with unchanged(model, check_output=False), pytest.raises(NonFiniteActivationError, match="block 1"):
        probe_norms(model, TEXTS)


def test_default_corpus_is_fixed_prose():
    a, b = default_corpus(), default_corpus()
    assert a == b and len(a) == 48
    assert all(len(t) > 40 and "::=" not in t for t in a)
    assert len(default_corpus(300)) == 300
    with pytest.raises(InputError):
        default_corpus(0)


def test_read_texts_sources(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("first line\n\n second \n", encoding="utf-8")
    from pathlib import Path

    assert read_texts(Path(f)) == ["first line", "second"]
    assert read_texts("one text") == ["one text"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InputError, match="no non-empty line"):
        read_texts(tmp_path / "empty.txt")
    with pytest.raises(InputError, match="cannot read"):
        read_texts(tmp_path / "missing.txt")
    assert validate_texts("single") == ["single"]
