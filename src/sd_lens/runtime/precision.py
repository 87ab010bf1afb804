"""The dtype a model's forward runs in, changed for the length of an analysis and restored exactly.

sd_lens computes its statistics in float32, but the *activations* are those of the model's own
dtype: in float16 (range ends at 65 504, 11 significant bits) high norms move by tens of percent or
overflow; bfloat16 keeps float32's range. :func:`forward_dtype` casts the weights (and floating
buffers: rotary tables, masks) to another dtype inside a ``with`` block and back afterwards — also
after an exception. The round trip is bit-exact: float32 holds every float16 and bfloat16 value
exactly, so casting up and back down returns the same bits; a cast down keeps the originals aside
(``tests/unit/test_precision.py``).

Memory: the float32 copy of a half-precision model needs its weights' bytes once more on each
parameter's device (a cast down keeps the original beside the copy); :func:`extra_bytes` says how much and :func:`check_memory` refuses, with the
figures, when a device has less free.
"""

from __future__ import annotations

import os
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from sd_lens.errors import InputError
from sd_lens.runtime.lock import model_lock
from sd_lens.types import HookedModel

__all__ = ["DTYPES", "check_memory", "closure_rtol", "extra_bytes", "forward_dtype", "free_bytes", "parse_dtype"]

#: the dtypes a forward may run in, by name
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def closure_rtol(dtype: str | torch.dtype, rtol: float, *, ulps: float = 4.0) -> float:
    """The relative tolerance of a closure check (a value recomputed from a model's activations against
    the model's own) for a forward in ``dtype``: ``rtol`` (what float32 needs), or ``ulps`` machine epsilons
    of ``dtype`` where that is larger. A few roundings of order eps/2 each separate the two in half
    precision (bfloat16: eps 2⁻⁷, so 3 %; float16: eps 2⁻¹⁰, 0.4 %); in float32 ``rtol`` is far above them.
    """
    return max(float(rtol), ulps * torch.finfo(parse_dtype(dtype)).eps)


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"`` / ``torch.float32`` (also ``"fp16"``, ``"bf16"``) → a torch dtype, or InputError."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif isinstance(dtype, str):
        key = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}.get(dtype, dtype)
        key = key.removeprefix("torch.")
        if key in DTYPES:
            return DTYPES[key]
    raise InputError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")


def _exact_back(old: torch.dtype, target: torch.dtype) -> bool:
    """True when ``old -> target -> old`` returns the same bits (target holds every value of old)."""
    return target == torch.float32 and old in (torch.float16, torch.bfloat16)


def _tensors(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    seen: set[int] = set()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and id(t) not in seen:
            seen.add(id(t))
            yield name, t


def extra_bytes(model: HookedModel, dtype: str | torch.dtype) -> dict[str, int]:
    """Bytes each device needs on top of what the model holds to run it in ``dtype``."""
    target = parse_dtype(dtype)
    size = torch.empty((), dtype=target).element_size()
    need: dict[str, int] = defaultdict(int)
    for _, t in _tensors(model):
        if t.dtype != target:
            # cast back afterwards: only the growth; otherwise the original is kept beside the copy
            grow = size - t.element_size() if _exact_back(t.dtype, target) else size
            need[str(t.device)] += max(0, t.numel() * grow)
    return {k: v for k, v in need.items() if v > 0}


def free_bytes(device: str | torch.device) -> int | None:
    """Free memory of ``device`` in bytes (CUDA: the driver's figure; CPU: MemAvailable); None if unknown."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(dev)[0])
    if dev.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return None


def check_memory(model: HookedModel, dtype: str | torch.dtype, *, headroom: float = 0.8) -> None:
    """Raise :class:`InputError` when a device lacks the memory to run ``model`` in ``dtype``.

    A device passes when the extra bytes (:func:`extra_bytes`) are at most ``headroom`` of its free
    memory (the rest is left for activations); a device whose free memory is unknown passes.
    """
    gib = 2**30
    for device, need in extra_bytes(model, dtype).items():
        free = free_bytes(device)
        if free is not None and need > headroom * free:
            raise InputError(
                f"running the forward in {parse_dtype(dtype)} needs {need / gib:.2f} GiB more on {device}, "
                f"which has {free / gib:.2f} GiB free: run in the model's own dtype (forward_dtype=None), "
                "free memory, or load the model split over more devices (device_map)"
            )


@contextmanager
def forward_dtype(
    model: HookedModel, dtype: str | torch.dtype | None, *, check: bool = True, blockwise: bool = False
) -> Iterator[Any]:
    """Run ``model``'s forwards in ``dtype`` inside the block; the weights are restored bit-exactly.

    ``dtype=None`` or the model's own dtype changes nothing. A cast up (float16 or bfloat16 to
    float32) is undone by casting back, which is exact; any other (float32 to float16, to see what a
    half-precision forward does to a finding) keeps the original tensors aside and puts them back.
    With ``check``, the memory the cast needs is checked first (:func:`check_memory`).
    The model's lock (:func:`~sd_lens.runtime.lock.model_lock`) is held inside: no other thread's
    forward sees the cast weights.

    ``blockwise`` (a cast up only; otherwise ignored): the tensors outside the blocks (embeddings,
    final norm, unembedding) are cast for the whole ``with`` block, each block's own only while that
    block runs (a forward pre-hook casts them up, a forward hook back down), so the extra memory is
    the non-block tensors' growth plus one block's instead of the whole model's (a 7B bfloat16 model:
    about 1.0 GB instead of 13 GB). Only forwards may run inside: code that reads a block's weights
    directly sees them in the model's own dtype.
    """
    exact = dtype is not None and all(_exact_back(t.dtype, parse_dtype(dtype)) for _, t in _changed(model, dtype))
    blocks = list(getattr(model, "blocks", []) or [])
    with model_lock(model):
        if blockwise and exact and blocks:
            with _cast_blockwise(model, parse_dtype(dtype), blocks, check=check) as m:  # type: ignore[arg-type]
                yield m
        else:
            with _cast_forward(model, dtype, check=check) as m:
                yield m


def _changed(model: Any, dtype: str | torch.dtype | None) -> list[tuple[str, torch.Tensor]]:
    if dtype is None:
        return []
    target = parse_dtype(dtype)
    return [(n, t) for n, t in _tensors(model) if t.dtype != target]


@contextmanager
def _cast_blockwise(model: HookedModel, target: torch.dtype, blocks: list[Any], *, check: bool) -> Iterator[Any]:
    in_block: set[int] = set()
    per_block: list[list[torch.Tensor]] = []
    for block in blocks:
        own = [t for _, t in _tensors(block) if t.dtype != target and id(t) not in in_block]
        in_block.update(id(t) for t in own)
        per_block.append(own)
    outside = [t for _, t in _tensors(model) if t.dtype != target and id(t) not in in_block]
    if check:
        size = torch.empty((), dtype=target).element_size()
        grow = sum(t.numel() * (size - t.element_size()) for t in outside)
        grow += max((sum(t.numel() * (size - t.element_size()) for t in ts) for ts in per_block), default=0)
        devices = {str(t.device) for ts in [outside, *per_block] for t in ts}
        for device in devices:
            free = free_bytes(device)
            if free is not None and grow > 0.8 * free:
                raise InputError(
                    f"running the forward in {target} needs {grow / 2**30:.2f} GiB more on {device}, which has "
                    f"{free / 2**30:.2f} GiB free: run in the model's own dtype or free memory"
                )
    old_of = {id(t): t.dtype for ts in [outside, *per_block] for t in ts}

    def up(ts: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for t in ts:
                t.data = t.data.to(target)

    def down(ts: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for t in ts:
                if t.dtype != old_of[id(t)]:
                    t.data = t.data.to(old_of[id(t)])

    cfg = getattr(model, "cfg", None)
    old_cfg = getattr(cfg, "dtype", None)
    handles = []
    try:
        up(outside)
        for block, ts in zip(blocks, per_block):
            handles.append(block.register_forward_pre_hook(lambda mod, args, ts=ts: up(ts)))
            handles.append(block.register_forward_hook(lambda mod, args, out, ts=ts: down(ts)))
        if cfg is not None and old_cfg is not None:
            cfg.dtype = target
        yield model
    finally:
        for h in handles:
            h.remove()
        for ts in [outside, *per_block]:
            down(ts)
        if cfg is not None and old_cfg is not None:
            cfg.dtype = old_cfg


@contextmanager
def _cast_forward(model: HookedModel, dtype: str | torch.dtype | None, *, check: bool) -> Iterator[Any]:
    if dtype is None:
        yield model
        return
    target = parse_dtype(dtype)
    changed = [(t, t.dtype) for _, t in _tensors(model) if t.dtype != target]
    if not changed:
        yield model
        return
    if check:
        check_memory(model, target)
    cfg = getattr(model, "cfg", None)
    old_cfg = getattr(cfg, "dtype", None)
    done: list[tuple[torch.Tensor, torch.dtype, torch.Tensor | None]] = []
    try:
        with torch.no_grad():
            for t, old in changed:
                # up (f16/bf16 -> f32) casts back exactly; anything else keeps the original tensor
                original = None if _exact_back(old, target) else t.data
                t.data = t.data.to(target)
                done.append((t, old, original))
        if cfg is not None and old_cfg is not None:
            cfg.dtype = target
        yield model
    finally:
        with torch.no_grad():
            for t, old, original in done:
                t.data = t.data.to(old) if original is None else original
        if cfg is not None and old_cfg is not None:
            cfg.dtype = old_cfg
