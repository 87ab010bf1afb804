"""Signature files: a small JSON file per model, so that two researchers can compare models without sharing weights.

The file holds the model's name, width, number of blocks, the block the weights signature was read
at, the corpus hash, the sd_lens version and both vectors at full float32 precision (each float is
written as the shortest decimal that reads back to the same float32, so a round trip is exact).
``format`` names the file kind and ``format_version`` its layout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from sd_lens.errors import InputError
from sd_lens.outputs import atomic_write_text, output_file
from sd_lens.signature.signature import Signature

__all__ = ["FORMAT", "is_signature_file", "load_signature", "save_signature", "signature_width"]

FORMAT = "sd_lens.signature"
FORMAT_VERSION = 1


def _floats(v: torch.Tensor) -> list[float]:
    # float32 -> shortest repr of the float64 it equals: json reads it back to the same float64,
    # whose float32 cast is the original value
    return [float(x) for x in v.detach().to("cpu", torch.float32).tolist()]


def save_signature(sig: Signature, path: str | Path) -> Path:
    """Write ``sig`` to ``path`` (JSON, atomically); returns the path.

    Raises:
        InputError: the path cannot be written.
    """
    path = output_file(path, "signature file")
    data: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, **sig.to_dict(vectors=False)}
    data["weights_s0"] = sig.weights_s0
    data["seconds"] = round(sig.seconds, 3)
    data["empirical"] = None if sig.empirical is None else _floats(sig.empirical)
    data["weights"] = _floats(sig.weights)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"signature file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read signature file {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path} is not an sd_lens signature file (no \"format\": \"{FORMAT}\")")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(f"{path}: signature format version {version!r}; this sd_lens reads version {FORMAT_VERSION}")
    return data


def _vector(data: dict[str, Any], key: str, d: int, path: Path, required: bool) -> torch.Tensor | None:
    raw = data.get(key)
    if raw is None and not required:
        return None
    if not isinstance(raw, list) or len(raw) != d or not all(isinstance(x, (int, float)) for x in raw):
        raise InputError(f"{path}: {key!r} must be a list of {d} numbers (d_model)")
    v64 = torch.tensor(raw, dtype=torch.float64)
    v = v64.to(torch.float32)
    if not bool(torch.isfinite(v).all()) or not bool((v64 != 0).any()):
        raise InputError(f"{path}: {key!r} must be finite and non-zero")
    return v


def load_signature(path: str | Path) -> Signature:
    """Read a signature file written by :func:`save_signature`.

    Raises:
        InputError: missing or unreadable file, another kind of JSON, or malformed fields.
    """
    path = Path(path)
    data = _read(path)
    try:
        d = int(data["d_model"])
        n_layers = int(data["n_layers"])
        block = int(data["block"])
        model = str(data["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: missing or malformed field {exc}") from exc
    if d < 1 or n_layers < 1 or not 0 <= block < n_layers:
        raise InputError(f"{path}: d_model {d}, n_layers {n_layers}, block {block} are not consistent")
    weights = _vector(data, "weights", d, path, required=True)
    assert weights is not None
    s0 = data.get("weights_s0")
    return Signature(
        model=model,
        d_model=d,
        n_layers=n_layers,
        empirical=_vector(data, "empirical", d, path, required=False),
        weights=weights,
        block=block,
        weights_s0=float(s0) if isinstance(s0, (int, float)) else math.nan,
        defect=data.get("defect"),
        n_major=data.get("n_major"),
        corpus_hash=data.get("corpus_hash"),
        n_texts=data.get("n_texts"),
        threshold=float(data.get("threshold", math.nan)),
        fit_method=str(data.get("fit_method", "")),
        sd_lens_version=str(data.get("sd_lens_version", "")),
        seconds=float(data.get("seconds", 0.0)),
        source=str(path),
    )


def is_signature_file(arg: str | Path) -> bool:
    """True when ``arg`` is an existing file that holds an sd_lens signature (by its ``format`` field)."""
    path = Path(arg)
    if not path.is_file():
        return False
    try:
        _read(path)
    except InputError:
        return False
    return True


def signature_width(arg: str) -> int | None:
    """``d_model`` of a signature file or of a model name/folder, without loading any weights.

    Read from the signature file, from a model folder's ``config.json``, or from a bundled model's
    converted ``config.json`` when it is already cached; None when it cannot be known without
    loading the model (a hub id not cached, a ``.gguf`` file).
    """
    path = Path(arg)
    if path.is_file() and path.suffix == ".json":
        return int(_read(path)["d_model"])
    config = None
    if path.is_dir() and (path / "config.json").is_file():
        config = path / "config.json"
    else:
        from sd_lens.models.sources.bundled import cache_dir, known_models

        cached = cache_dir(arg) / "config.json"
        if arg in known_models() and cached.is_file():
            config = cached
    if config is None:
        return None
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    cfg = cfg.get("text_config", cfg) if isinstance(cfg, dict) else {}
    width = cfg.get("hidden_size", cfg.get("n_embd", cfg.get("d_model")))
    return int(width) if isinstance(width, int) else None
