"""load_model(device_map=...): a model split over devices (issue #12, models larger than one device).

This machine has no GPU: the split itself is exercised on a tiny Llama with a device_map of several
CPU entries (the same code path up to accelerate's dispatch, which transformers skips when every entry
is the CPU); the checks of a map are exercised in full, and they run before any model loads.
"""

from __future__ import annotations

import time

import pytest
import torch

from sd_lens.analyses.probe import probe_norms
from sd_lens.errors import InputError
from sd_lens.models.loading import check_device_map, load_model
from sd_lens.models.tiny import char_tokenizer, tiny_hf_config

TEXTS = ["the cat sat on the mat", "a b c d e f g"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(5)
    hf = AutoModelForCausalLM.from_config(tiny_hf_config("llama", n_layers=3), attn_implementation="eager")
    hf.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def test_a_device_map_of_several_entries_loads_the_same_model(tiny_dir):
    plain = load_model(tiny_dir)
    split_map = {
        "model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
        "model.layers.2": torch.device("cpu"), "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu",
    }
    split = load_model(tiny_dir, device_map=split_map)
    a, b = probe_norms(plain, TEXTS), probe_norms(split, TEXTS)
    assert torch.equal(a.norms, b.norms)
    for name in ("auto", "sequential", "balanced"):
        assert torch.equal(probe_norms(load_model(tiny_dir, device_map=name), TEXTS).norms, a.norms)


@pytest.mark.parametrize(
    "device_map, why",
    [
        ("everywhere", "give one of auto, balanced"),
        ({}, "non-empty dict"),
        ([("model", "cpu")], "a name .* or a non-empty dict"),
        ({"model.layers.0": "gpu9"}, "not a device torch knows"),
        ({"model.layers.0": True}, "give a device"),
        ({0: "cpu"}, "keys are module names"),
        ({"model.layers.0": "cuda:0", "model.layers.1": "cpu"}, "offloads modules to the CPU or disk"),
        ({"model.layers.0": 0, "lm_head": "disk"}, "offloads modules to the CPU or disk"),
    ],
)
def test_a_bad_device_map_is_refused_before_the_model_loads(device_map, why, monkeypatch):
    def no_load(*a, **k):  # pragma: no cover - reaching it is the failure
        raise AssertionError("the model was loaded before the device_map was checked")

    monkeypatch.setattr("sd_lens.models.loading._boot", no_load)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=why):
        load_model("smollm2-135m-instruct", device_map=device_map)
    assert time.perf_counter() - t0 < 5


def test_a_map_on_accelerators_only_or_the_cpu_only_passes():
    check_device_map({"model.embed_tokens": 0, "model.layers": "cuda:1", "lm_head": torch.device("cuda", 1)})
    check_device_map({"": "cpu"})
    check_device_map(None)


def test_cli_passes_the_device_map(tiny_dir, tmp_path, capsys):
    from sd_lens.cli import build_parser, main

    assert build_parser().parse_args(["analyze", "--device-map", "auto"]).device_map == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["analyze", "--device-map", "gpu-please"])
    out = tmp_path / "a.json"
    assert main(["analyze", "--model", str(tiny_dir), "--device-map", "sequential", "--json", str(out)]) == 0
    assert out.is_file()


def test_a_big_models_view_keeps_only_the_last_blocks(monkeypatch):
    """Past CACHE_ALL_BYTES the view keeps 4 blocks' float32 copies, rebuilding others on demand, equal."""
    from sd_lens.models import view as view_module
    from sd_lens.models.tiny import tiny_model

    model = tiny_model("llama", seed=1, n_layers=6)
    assert view_module.ModelView(model).cache_size is None
    monkeypatch.setattr(view_module, "CACHE_ALL_BYTES", 0)
    v = view_module.ModelView(model)
    assert v.cache_size == view_module.CACHED_BLOCKS_BIG
    first = v.block(0).W_out.clone()
    for layer in range(6):
        v.block(layer)
    assert v._block.cache_info().currsize == 4
    assert torch.equal(v.block(0).W_out, first)
