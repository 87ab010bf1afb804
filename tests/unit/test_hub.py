"""Hugging Face model ids: loaded from the local hub cache (HF_HOME, HF_HUB_OFFLINE honoured) through
the same path as a local model directory; an uncached id offline is one clear error, raised fast."""
from __future__ import annotations

import time

import pytest
import torch
from huggingface_hub.file_download import repo_folder_name

from hub_cache import COMMIT, REPO, _write_hub_cache
from sd_lens.analyses.probe import probe_norms
from sd_lens.errors import UnknownModelError
from sd_lens.models import loading
from sd_lens.models.loading import is_hub_id, load_model
from sd_lens.models.sources import hub


@pytest.mark.parametrize("name", ["gpt2", "org/name", "meta-llama/Llama-2-7b-hf", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_hub_ids_are_recognised(name):
    assert is_hub_id(name)


@pytest.mark.parametrize("name", ["./x", "/tmp/nope", "~/m", "model.gguf", "has space", "a/b/c", "org/", "x--y", ""])
def test_paths_and_junk_are_not_hub_ids(name):
    assert not is_hub_id(name)


def test_cached_hub_id_loads_and_analyses(hf_home):
    model = load_model(REPO)
    assert model.sd_lens_name == REPO
    assert model.cfg.n_layers == 2 and model.cfg.d_model == 64
    texts = ["The cat sat on the mat.", "A dog ran."]
    norms = probe_norms(model, texts).hook("resid_post")
    assert norms.shape == (len(texts[0]) + len(texts[1]) + 2, 2)  # character tokens + BOS each, 2 blocks
    assert torch.isfinite(norms).all() and (norms > 0).all()
    # the same weights as the snapshot directory loaded as a local path: the same path, the same numbers
    snapshot = hf_home / "hub" / repo_folder_name(repo_id=REPO, repo_type="model") / "snapshots" / COMMIT
    torch.testing.assert_close(probe_norms(load_model(snapshot), texts).hook("resid_post"), norms)


def test_uncached_id_offline_is_one_clear_error_raised_fast(hf_home, monkeypatch):
    boot = []
    monkeypatch.setattr(loading, "_boot", lambda *a, **k: boot.append(a))
    t0 = time.perf_counter()
    with pytest.raises(UnknownModelError) as info:
        load_model("meta-llama/Llama-2-7b-hf")
    assert time.perf_counter() - t0 < 2.0
    assert not boot
    message = str(info.value)
    assert "'meta-llama/Llama-2-7b-hf'" in message and "not in the local Hugging Face hub cache" in message
    assert "offline" in message and str(hf_home / "hub") in message
    for alternative in ["directory", "config.json", ".gguf", *loading.known_models()]:
        assert alternative in message
    # no huggingface_hub traceback chained onto it
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)


def test_snapshot_without_weights_is_not_a_cached_model(hf_home):
    snapshot = hf_home / "hub" / repo_folder_name(repo_id=REPO, repo_type="model") / "snapshots" / COMMIT
    for f in snapshot.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(UnknownModelError, match="not in the local Hugging Face hub cache"):
        load_model(REPO)


def test_bundled_hub_id_falls_back_to_the_bundled_copy(hf_home, monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(hub, "converted_model_dir", lambda name: seen.append(name) or tmp_path / name)
    monkeypatch.setattr(loading, "_boot", lambda model_dir, label, **k: (model_dir, label))
    assert load_model("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        tmp_path / "smollm2-135m-instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    assert load_model("google/gemma-3-270m")[1] == "google/gemma-3-270m"
    assert seen == ["smollm2-135m-instruct", "gemma-3-270m"]


def test_a_cached_hub_copy_of_a_bundled_model_wins(tmp_path, monkeypatch, hf_home):
    _write_hub_cache(hf_home / "hub", "google/gemma-3-270m", seed=1)
    monkeypatch.setattr(hub, "converted_model_dir", lambda name: pytest.fail("used the bundled copy"))
    monkeypatch.setattr(loading, "_boot", lambda model_dir, label, **k: (model_dir, label))
    model_dir, label = load_model("google/gemma-3-270m")
    assert label == "google/gemma-3-270m" and (model_dir / "config.json").is_file()
    assert model_dir.parent.name == "snapshots"


@pytest.mark.parametrize("name", ["./x", "/tmp/nope-sd-lens", "model.gguf", "two words"])
def test_not_found_says_what_was_tried(hf_home, name):
    with pytest.raises(UnknownModelError) as info:
        load_model(name)
    message = str(info.value)
    assert repr(name) in message and "built-in name" in message and ".gguf" in message
    assert "Hugging Face model id" in message and "hub cache" not in message


def test_existing_folder_without_config_is_not_looked_up_on_the_hub(hf_home, tmp_path, monkeypatch):
    (tmp_path / "mydir").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownModelError, match="exists but is neither a model directory"):
        load_model("mydir")
