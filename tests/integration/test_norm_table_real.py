"""first_token_norms / NormTable: the table `make demo` prints."""
from __future__ import annotations

import pytest
import torch

from sd_lens.analyses.norm_table import first_token_norms


def reference_norms(model, text: str, n: int) -> torch.Tensor:
    with torch.no_grad():
        _, cache = model.run_with_cache(text)
    return torch.stack(
        [cache[f"blocks.{l}.hook_resid_post"][0, :n].float().norm(dim=-1) for l in range(model.cfg.n_layers)]
    )


@pytest.mark.real_model
def test_smollm2_table(smollm2, unchanged):
    with unchanged(smollm2):
        table = first_token_norms(smollm2, "The quick brown fox jumps over the lazy dog.")
    print("\n" + table.format())
    torch.testing.assert_close(table.norms, reference_norms(smollm2, table.text, 8), rtol=1e-5, atol=1e-3)
    assert table.tokens[:3] == ["<|im_start|>", "The", " quick"]
    high = table.high()
    assert high[11:28, 0].all() and not high[11:, 1:].any()
    assert "25" in table.format().splitlines()[5 + 11]  # block 11 row shows ~25 000 for the first token


@pytest.mark.real_model
def test_gemma3_table(gemma3):
    table = first_token_norms(gemma3, "The quick brown fox jumps over the lazy dog.", n_tokens=5)
    print("\n" + table.format())
    assert table.norms.shape == (18, 5) and table.tokens[0] == "<bos>"
    # SPEC: all Gemma-3 norms are large and grow; the first token is 10-30x the rest early on.
    ratio = table.norms[:, 0] / table.norms[:, 1:].median(dim=1).values
    assert (ratio[[0, 3, 6, 9]] > 4).all(), ratio
    assert table.norms[-1, 1:].min() > 10 * table.norms[0, 1:].max()
