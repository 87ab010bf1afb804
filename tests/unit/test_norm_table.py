"""first_token_norms / NormTable: the table `make demo` prints."""
from __future__ import annotations

import pytest
import torch

from conftest import nan_token_model
from sd_lens.analyses.norm_table import NormTable, first_token_norms
from sd_lens.errors import InputError, NonFiniteActivationError
from sd_lens.models.tiny import tiny_model

TEXT = "The cat sat on the mat."


def reference_norms(model, text: str, n: int) -> torch.Tensor:
    with torch.no_grad():
        _, cache = model.run_with_cache(text)
    return torch.stack(
        [cache[f"blocks.{l}.hook_resid_post"][0, :n].float().norm(dim=-1) for l in range(model.cfg.n_layers)]
    )


def test_norms_match_the_full_cache(tiny, unchanged):
    with unchanged(tiny):
        table = first_token_norms(tiny, TEXT, n_tokens=6)
    assert table.norms.dtype == torch.float32
    assert table.norms.shape == (tiny.cfg.n_layers, 6) == (table.n_layers, table.n_tokens)
    # The whole text through run_with_cache: the first 6 tokens' norms do not depend on the rest.
    torch.testing.assert_close(table.norms, reference_norms(tiny, TEXT, 6), rtol=1e-5, atol=1e-6)
    # The model's own BOS convention (TransformerLens prepends none for GPT-NeoX).
    bos = ["<bos>"] if tiny.cfg.default_prepend_bos else []
    assert table.tokens == (bos + list("The cat"))[:6] == tiny.to_str_tokens(TEXT)[:6]
    assert table.text == TEXT and table.model.startswith("tiny-")


def test_short_text_gives_fewer_columns(tiny):
    table = first_token_norms(tiny, "ab", n_tokens=8)
    assert table.tokens[-2:] == ["a", "b"] and len(table.tokens) == 2 + tiny.cfg.default_prepend_bos
    assert table.norms.shape == (tiny.cfg.n_layers, len(table.tokens))


@pytest.mark.parametrize("bad", ["", None, 3])
def test_empty_or_non_text_is_an_input_error(bad, unchanged):
    model = tiny_model("llama")
    with unchanged(model), pytest.raises(InputError, match="non-empty text"):
        first_token_norms(model, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_n_tokens_is_an_input_error(bad):
    with pytest.raises(InputError, match="n_tokens"):
        first_token_norms(tiny_model("llama"), TEXT, n_tokens=bad)  # type: ignore[arg-type]


def test_non_finite_activations_raise_and_leave_no_hook(unchanged):
    model = nan_token_model("x")
    with unchanged(model, "abc"), pytest.raises(NonFiniteActivationError, match="blocks \\[0, 1\\]"):
        first_token_norms(model, "x")


def test_hooks_are_removed_when_the_forward_raises(unchanged):
    model = tiny_model("gpt2")
    armed = False

    def explode(module, args, output):
        if armed:
            raise RuntimeError("boom in block 1")

    block = model.original_model.transformer.h[1] if hasattr(model, "original_model") else model.blocks[1]
    handle = block.register_forward_hook(explode)
    try:
        with unchanged(model):
            armed = True  # only between unchanged's two reference forwards
            with pytest.raises(RuntimeError, match="boom"):
                first_token_norms(model, TEXT)
            armed = False
    finally:
        handle.remove()


def make_table() -> NormTable:
    norms = torch.tensor([[100.0, 10.0, 11.0, 12.0, 13.0], [25000.0, 170.0, 160.0, 900.0, 150.0]])
    tokens = ["<s>", " a", "\n", "a very long token string", "b"]
    return NormTable(model="m", text="a\nb", tokens=tokens, norms=norms)


def test_format_is_a_fixed_width_table():
    text = make_table().format(max_token_width=10)
    lines = text.splitlines()
    rows = [l for l in lines if l[:5].strip().isdigit()]
    header = next(l for l in lines if l.startswith("block"))
    assert len(rows) == 2
    assert len({len(header), *map(len, rows)}) == 1  # all table lines have the same width
    assert "' a'" in header and "'\\n'" in header  # repr makes spaces and newlines visible
    assert "'a very l…" in header  # shortened to 10 characters
    assert "25000.0*" in rows[1] and "100.0*" in rows[0]  # > 4x the row median
    assert "170.0 " in rows[1] and "900.0*" in rows[1]  # 900 > 4 x 170 (the median); 170 is not
    assert "'a\\nb'" in text and "model m" in text
    assert str(make_table()) == make_table().format()


def test_high_uses_the_row_median():
    high = make_table().high(factor=4.0)
    assert high.tolist() == [[True, False, False, False, False], [True, False, False, True, False]]
    assert make_table().high(factor=200.0).tolist() == [[False] * 5, [False] * 5]
    with pytest.raises(InputError):
        make_table().format(max_token_width=2)
