"""The analyses on a CUDA device (``pytest -m gpu``; skipped without one).

What must hold on a GPU: the same findings as on the CPU, the model left as it was, and no reducer
that makes the forward wait for the device (``torch.cuda.set_sync_debug_mode`` turned to "error"
while each reducer runs; ``tests/unit/test_device_discipline.py`` checks the same without a GPU).
"""
from __future__ import annotations

import pytest
import torch
from test_device_discipline import ALLOWED

from conftest import planted_bos_model
from sd_lens.analyses.ffn_fit import fit_ffn
from sd_lens.analyses.probe import probe_norms
from sd_lens.models.tiny import tiny_model
from sd_lens.models.view import model_view
from sd_lens.pipeline import run_analysis
from sd_lens.runtime import engine
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


def _planted(device: str):
    model = planted_bos_model()
    return model.to(device) if device != "cpu" else model


def test_the_full_analysis_on_cuda_matches_the_cpu():
    """Every part (channels, local checks, interventions, quantization) on the planted defect."""
    opts = dict(channels=True, local_checks=True, interventions=True, quantize=True)
    cpu = run_analysis(_planted("cpu"), TEXTS, **opts).to_dict()
    gpu = run_analysis(_planted("cuda"), TEXTS, **opts).to_dict()
    assert len(gpu["defects"]) == len(cpu["defects"]) >= 1
    for a, b in zip(cpu["defects"], gpu["defects"]):
        assert (a["explosion_layer"], a["decay_layers"]) == (b["explosion_layer"], b["decay_layers"])
    assert gpu["typical_norm"] == pytest.approx(cpu["typical_norm"], rel=1e-3)


def test_no_reducer_waits_for_the_gpu(monkeypatch):
    """A synchronising call (a device-to-host copy, .item(), nonzero ...) inside a reducer raises."""
    failures: dict[str, str] = {}
    original = engine._reducer_hooks

    def strict(reducers, batch, out, stop_when_read=False):
        def wrap(name, reducer):
            def run(act, b):
                torch.cuda.set_sync_debug_mode("error")
                try:
                    return reducer(act, b)
                except RuntimeError as exc:
                    import traceback

                    frames = [f.name for f in traceback.extract_tb(exc.__traceback__)[1:]
                              if "site-packages" not in f.filename]
                    failures.setdefault(frames[-1], f"{name}: {frames} {exc!r:.200}")
                    torch.cuda.set_sync_debug_mode(0)
                    return reducer(act, b)
                finally:
                    torch.cuda.set_sync_debug_mode(0)

            return run

        return original({n: wrap(n, r) for n, r in reducers.items()}, batch, out, stop_when_read)

    monkeypatch.setattr(engine, "_reducer_hooks", strict)
    run_analysis(_planted("cuda"), TEXTS, channels=True, local_checks=True, interventions=True, quantize=True)
    assert set(failures) <= set(ALLOWED), "\n".join(v for k, v in failures.items() if k not in ALLOWED)
