"""A Hugging Face model id (``gpt2``, ``org/name``) as a model: its snapshot in the local hub cache.

Looked up through ``huggingface_hub`` (``$HF_HOME``, ``HF_HUB_OFFLINE`` honoured); an id not cached is
downloaded when online, a bundled model's id falls back to the bundled copy, and an id that cannot be
had is one :class:`~sd_lens.errors.UnknownModelError` naming the alternatives.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sd_lens.errors import UnknownModelError
from sd_lens.models.sources.bundled import BUNDLED, converted_model_dir, known_models

log = logging.getLogger(__name__)

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


def claims(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` is a hub id: a string, no existing path, and a valid id (:func:`is_hub_id`)."""
    return isinstance(name, str) and not Path(name).expanduser().exists() and is_hub_id(name)


def locate(name: str | os.PathLike[str]) -> tuple[Path, str]:
    """The local directory of the hub model ``name`` and its label (:func:`hub_model_dir`)."""
    return hub_model_dir(str(name))
