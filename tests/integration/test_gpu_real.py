"""SmolLM2 on a CUDA device gives the CPU's numbers (``pytest -m gpu``; skipped without one; the tiny-model
GPU checks: tests/unit/test_gpu.py)."""
from __future__ import annotations

import pytest
import torch

from sd_lens.analyses.probe import probe_norms

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_smollm2_on_cuda_matches_the_cpu(smollm2):
    import sd_lens

    gpu = sd_lens.load_model("smollm2-135m-instruct", device="cuda")
    texts = sd_lens.default_corpus()[:16]
    a, b = probe_norms(smollm2, texts), probe_norms(gpu, texts)
    assert torch.allclose(a.hook("resid_post"), b.hook("resid_post"), rtol=1e-3)
