"""``synthetic_model`` under either TransformerLens: it builds on TransformerLens 4 (tests/unit/test_synthetic.py)
and refuses on 2.x with a clear error, except on the meta device (a dry run needs no TransformerLens model)."""

from __future__ import annotations

import pytest

from sd_lens.errors import UnsupportedArchitectureError
from sd_lens.models.hooked import backend
from sd_lens.models.synthetic import synthetic_model


@pytest.mark.skipif(backend() == "bridge", reason="TransformerLens 4 builds synthetic models (test_synthetic.py)")
def test_synthetic_model_refuses_transformer_lens_2():
    with pytest.raises(UnsupportedArchitectureError, match="TransformerLens 4's TransformerBridge"):
        synthetic_model("llama")


def test_the_meta_build_needs_no_transformer_lens_model():
    hf, planted = synthetic_model("llama", "70b", device="meta")
    assert planted is not None and planted.block < hf.config.num_hidden_layers
    assert all(p.is_meta for p in hf.parameters())
