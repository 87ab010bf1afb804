"""The analyses on a CUDA device (``pytest -m gpu``; skipped without one).

Not run on the machines of this project so far (no GPU was lent while this was written): these tests
say what must hold on a GPU — the same findings as on the CPU, and the model left as it was.
"""

from __future__ import annotations

import pytest
import torch

from sd_lens.analyses.ffn_fit import fit_ffn
from sd_lens.analyses.probe import probe_norms
from sd_lens.models.tiny import tiny_model
from sd_lens.models.view import model_view
from sd_lens.pipeline import run_analysis
from sd_lens.runtime.precision import forward_dtype

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TEXTS = ["the cat sat on the mat", "a b c d e f g", "hello there, general"]


def _on(device: str, family: str = "llama"):
    model = tiny_model(family, seed=3, n_layers=3)
    return model.to(device) if device != "cpu" else model


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "neox"])
def test_the_analysis_on_cuda_finds_what_the_cpu_finds(family):
    cpu = run_analysis(_on("cpu", family), TEXTS).to_dict()
    gpu = run_analysis(_on("cuda", family), TEXTS).to_dict()
    assert [d["explosion_layer"] for d in gpu["defects"]] == [d["explosion_layer"] for d in cpu["defects"]]
    assert gpu["typical_norm"] == pytest.approx(cpu["typical_norm"], rel=1e-3)


def test_the_closed_form_fit_runs_on_the_device():
    """fit_ffn computes where the block's weights are (here the GPU) and returns CPU tensors."""
    block = model_view(_on("cuda")).block(1)
    assert block.W_out.device.type == "cuda"
    fit = fit_ffn(block, method="gaussian")
    ref = fit_ffn(model_view(_on("cpu")).block(1), method="gaussian")
    assert fit.F.device.type == "cpu"
    assert fit.s0 == pytest.approx(ref.s0, rel=1e-4)


def test_forward_dtype_on_cuda_restores_the_weights():
    model = tiny_model("llama", seed=2, dtype=torch.bfloat16).to("cuda")
    before = [p.detach().clone() for p in model.parameters()]
    with forward_dtype(model, "float32"):
        probe_norms(model, TEXTS)
    assert all(torch.equal(a, p) and p.dtype == torch.bfloat16 for a, p in zip(before, model.parameters()))


def test_smollm2_on_cuda_matches_the_cpu(smollm2):
    import sd_lens

    gpu = sd_lens.load_model("smollm2-135m-instruct", device="cuda")
    texts = sd_lens.default_corpus()[:16]
    a, b = probe_norms(smollm2, texts), probe_norms(gpu, texts)
    assert torch.allclose(a.hook("resid_post"), b.hook("resid_post"), rtol=1e-3)
