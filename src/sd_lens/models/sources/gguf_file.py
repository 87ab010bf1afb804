"""A ``.gguf`` file as a model: dequantized once into a float32 Hugging Face directory in sd_lens's cache.

The conversion is written atomically with a manifest of SHA-256 sums of every file, verified on every
load (a damaged entry converts again); a local file's entry is keyed by its content. The bundled
models (:mod:`sd_lens.models.sources.bundled`) ship GGUF weights and go through the same cache.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from sd_lens.errors import InputError, MissingDependencyError

log = logging.getLogger(__name__)

CACHE_ENV = "SD_LENS_CACHE"
_MANIFEST = "sd_lens_manifest.json"
_CACHE_FORMAT = 1


def cache_root() -> Path:
    """Where converted models live: ``$SD_LENS_CACHE`` or ``~/.cache/sd_lens``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sd_lens")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _file_sums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of a conversion (weights, config, tokenizer...) but the manifest itself."""
    return {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != _MANIFEST}


def _require(module: str, pip_install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"sd_lens needs the package {module!r} for this. Install it with: {pip_install}")


@contextmanager
def _parse_once() -> Iterator[None]:
    """Within the block, one ``gguf.GGUFReader`` per file and one tensor-name map per architecture and depth.

    transformers parses the GGUF file three times (tokenizer, config, weights: 4 s each for SmolLM2) and
    rebuilds gguf's tensor-name map for every module it visits (397 times, 14 ms each): 17 s of a 28 s
    conversion on a 2-core machine. Both are pure reads — the reader memory-maps the file read-only and the
    map only answers lookups — so sharing them gives the same tensors. transformers imports both names
    inside its functions, so setting them on the ``gguf`` module reaches it; they are put back on exit.
    """
    import gguf as gguf_module

    real_reader, real_map = gguf_module.GGUFReader, gguf_module.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: Any = "r") -> Any:
        key = (str(Path(path).resolve()), str(mode))
        if key not in readers:
            readers[key] = real_reader(path, mode)
        return readers[key]

    gguf_module.GGUFReader = reader  # type: ignore[misc,assignment]
    gguf_module.get_tensor_name_map = functools.lru_cache(maxsize=None)(real_map)
    try:
        yield
    finally:
        gguf_module.GGUFReader, gguf_module.get_tensor_name_map = real_reader, real_map  # type: ignore[misc]
        readers.clear()


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF file into a float32 Hugging Face directory at ``target`` (atomically)."""
    _require("gguf", "pip install gguf  (or: pip install 'sd_lens[models]')")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), _parse_once():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # the GGUF reader's errors (numpy reshape, struct, KeyError) say nothing useful
        raise InputError(
            f"cannot read the GGUF file {gguf} ({type(exc).__name__}: {str(exc)[:160]}); it looks truncated, "
            "damaged or of an architecture transformers cannot dequantize. Download it again, or reinstall "
            "the package that ships it."
        ) from exc
    # A GGUF-loaded model refuses to serialise while it still believes it is quantized.
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.hf_quantizer = None
    hf.config.architectures = [type(hf).__name__]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        weights = sorted(p.name for p in tmp.glob("*.safetensors"))
        manifest = {
            "format": _CACHE_FORMAT,
            "source": str(gguf),
            "source_size": gguf.stat().st_size,
            "weights_sha256": {name: _sha256(tmp / name) for name in weights},
            # every file the model is read from: an edited config.json or tokenizer fails the check too
            "files_sha256": _file_sums(tmp),
            "convert_seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _cache_is_valid(target: Path, gguf: Path) -> bool:
    manifest_path = target / _MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != _CACHE_FORMAT or manifest.get("source_size") != gguf.stat().st_size:
            return False
        if not (target / "config.json").is_file() or not any(target.glob("tokenizer*.json")):
            return False
        if not manifest["weights_sha256"] or not set(manifest["weights_sha256"]) <= set(manifest["files_sha256"]):
            return False
        # every file, weights, config and tokenizer alike (a manifest from before files_sha256: reconvert)
        return bool(_file_sums(target) == manifest["files_sha256"])
    except (OSError, ValueError, KeyError):
        return False


def _import_backends() -> None:
    """Import transformers and TransformerLens (several seconds in a fresh process)."""
    import transformers  # noqa: F401

    from sd_lens.models.hooked import backend

    backend()  # imports TransformerLens (its bridge, where it has one)


def _transformers_tag() -> str:
    """``""`` under transformers 5+, ``"-tf4"`` under 4.x: transformers 4 cannot read a directory that
    transformers 5 saved (its tokenizer class, its ``rope_parameters``), so each keeps its own conversion."""
    import importlib.metadata

    major = importlib.metadata.version("transformers").split(".")[0]
    return "" if not major.isdigit() or int(major) >= 5 else f"-tf{major}"


def _local_gguf_dir(path: Path) -> Path:
    """The cache directory of a local .gguf file: keyed by its content, so an edited file converts anew."""
    return _cached_conversion(lambda: (path, cache_root() / "local" / f"{path.stem}-{_sha256(path)[:16]}{_transformers_tag()}"), path.name)


def _cached_conversion(locate: Callable[[], tuple[Path, Path]], label: str) -> Path:
    """Find ``(gguf, cache dir)`` and verify the cache in a thread while the libraries import; convert if needed."""

    def locate_and_check() -> tuple[Path, Path, bool]:
        gguf, target = locate()
        return gguf, target, _cache_is_valid(target, gguf)

    with ThreadPoolExecutor(max_workers=1) as pool:
        check = pool.submit(locate_and_check)
        try:
            _import_backends()
        finally:
            gguf, target, valid = check.result()
    if not valid:
        from filelock import FileLock

        target.parent.mkdir(parents=True, exist_ok=True)
        # one conversion at a time per cache entry, across processes; a process that waited finds
        # the entry converted by the other and uses it
        with FileLock(str(target) + ".lock"):
            if not _cache_is_valid(target, gguf):
                if target.exists():
                    log.warning("sd_lens cache at %s failed its checksum; converting again", target)
                log.info("Converting %s from GGUF (first load only)...", label)
                _convert_gguf(gguf, target)
    return target


def claims(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` is an existing ``.gguf`` file."""
    path = Path(str(name)).expanduser()
    return path.is_file() and path.suffix == ".gguf"


def locate(name: str | os.PathLike[str]) -> tuple[Path, str]:
    """The converted directory of the ``.gguf`` file ``name`` (converting it on first use), labelled by its stem."""
    path = Path(str(name)).expanduser()
    return _local_gguf_dir(path), path.stem
