"""What every ``sd-lens`` subcommand shares: the device check, the corpus of ``--text-file``, loading.

Public so that the application CLIs (:mod:`sd_lens.quantize.cli`, :mod:`sd_lens.signature.cli`) and
:mod:`sd_lens.cli` take them from one place below all three, instead of reaching into ``sd_lens.cli``'s
privates (which would run an import up a floor: ``tests/unit/test_layers.py``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from sd_lens.errors import InputError, SdLensError
from sd_lens.pipeline import AnalysisConfig
from sd_lens.types import HookedModel

__all__ = ["Loaded", "add_text_file_arguments", "byte_count", "device", "load", "run_command", "texts"]


@dataclass(frozen=True)
class Loaded:
    """A model and the seconds its load took (so a command can reuse a model another one loaded)."""

    model: HookedModel
    seconds: float


def device(name: str) -> str:
    """``name`` if torch can run on it here; an :class:`InputError` naming the choices otherwise."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"--device {name!r} is not a device torch knows; use cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: this torch build or machine has no CUDA device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s); use cuda:0..")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name}: sd_lens runs on cpu or cuda")
    return name


def texts(text_file: Path | None, max_bytes: int | None = None) -> list[str] | None:
    """The corpus of ``--text-file`` (read now, before the model loads, at most ``--max-text-bytes``),
    or None for the default."""
    from sd_lens.corpus import DEFAULT_MAX_TEXT_BYTES, read_text_file

    return read_text_file(text_file, max_bytes or DEFAULT_MAX_TEXT_BYTES) if text_file else None


def byte_count(text: str) -> int:
    """A positive byte count: ``1000000``, ``64k``, ``16M``, ``1G`` (binary multiples)."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    scale = units.get(t[-1:], 1)
    try:
        value = int(t[:-1] if t[-1:] in units else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of bytes (e.g. 1000000, 64k, 16M), got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes, got {text!r}")
    return value


def add_text_file_arguments(p: argparse.ArgumentParser, help: str, default: Any = None) -> None:
    """``--text-file`` and ``--max-text-bytes`` (one definition for every command that reads texts)."""
    from sd_lens.corpus import DEFAULT_MAX_TEXT_BYTES

    p.add_argument("--text-file", type=Path, default=default,
                   help=help + "; - reads standard input; pipes and devices only so")
    p.add_argument("--max-text-bytes", type=byte_count, default=argparse.SUPPRESS if default is argparse.SUPPRESS
                   else DEFAULT_MAX_TEXT_BYTES, metavar="N",
                   help=f"refuse a --text-file larger than this (default: {DEFAULT_MAX_TEXT_BYTES // 2**20}M)")


def load(
    model: str, device: str = "cpu", dtype: str = "float32", device_map: str | None = None,
    config: AnalysisConfig | None = None,
) -> Loaded:
    """Load ``model``; unfolded (``compatibility_mode=False``) when ``config`` needs the weights so
    (``--fit reference``: the reference code's convention needs γ₂ apart from ``W_in``)."""
    import sd_lens
    from sd_lens.runtime.precision import parse_dtype

    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {"device": device, "dtype": parse_dtype(dtype), "device_map": device_map}
    if config is not None and config.needs_unfolded_weights:
        kwargs["compatibility_mode"] = False
    loaded = sd_lens.load_model(model, **kwargs)
    return Loaded(loaded, time.perf_counter() - t0)


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` with ``parser`` and run the chosen command's ``func``; returns the exit code:
    0 done, 2 an error sd_lens explains (one line on stderr, nothing written), 3 written, but a stage
    failed after others had finished, 1 anything else (a bug: please report the traceback)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # the libraries' own "Loading weights" bars (read by huggingface_hub and transformers at import)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SdLensError as exc:
        print(f"sd-lens: error: {exc}", file=sys.stderr)
        return 2
