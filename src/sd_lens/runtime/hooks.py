"""Hook-point names and temporary hooks.

Names follow TransformerLens's ``get_act_name`` (``act_name("resid_post", 3) ==
"blocks.3.hook_resid_post"``, ``act_name("normalized", 3, "ln2") == "blocks.3.ln2.hook_normalized"``):
the compatibility-mode names of ``TransformerBridge`` and the names of ``HookedTransformer`` are
the same, which is what lets sd_lens run on both.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from functools import lru_cache
from typing import Callable, Iterator, Sequence

import torch

from sd_lens.errors import UnsupportedArchitectureError
from sd_lens.runtime.lock import model_lock
from sd_lens.types import HookedModel, HookFn

__all__ = ["FFN_INPUT", "LOGITS", "act_name", "block_of", "ffn_input", "require_hooks", "temporary_hooks"]

#: The logits' hook point: a ``TransformerBridge``'s ``unembed.hook_out``. A ``HookedTransformer`` has no
#: hook on its logits; there the engine hands a reducer of this name the forward's output, so a reducer
#: reads the logits under this one name on both (an intervention on them needs the hook: bridge only).
LOGITS = "unembed.hook_out"

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


@lru_cache(maxsize=1)
def _get_act_name() -> Callable[..., str]:
    """TransformerLens's ``get_act_name``, imported on first use: importing TransformerLens takes
    seconds, and :func:`sd_lens.load_model` overlaps that import with its checksum work."""
    try:  # TransformerLens 4
        from transformer_lens.utilities import get_act_name
    except ImportError:  # pragma: no cover - TransformerLens 2.x / 3.x
        from transformer_lens.utils import get_act_name
    return get_act_name


def act_name(kind: str, layer: int | None = None, sub: str | None = None) -> str:
    """The hook-point name of activation ``kind`` in block ``layer`` (TransformerLens's ``get_act_name``).

    Examples: ``act_name("resid_post", 3)``, ``act_name("pattern", 2)``,
    ``act_name("normalized", 5, "ln2")``.
    """
    return str(_get_act_name()(kind, layer, sub))


#: ``(kind, sub)`` of the FFN's normalised input: where v₀ of the linearised FFN lives.
FFN_INPUT = ("normalized", "ln2")


def ffn_input(layer: int) -> str:
    """The hook whose output is the normalised FFN input ``n`` of block ``layer``."""
    return act_name(FFN_INPUT[0], layer, FFN_INPUT[1])


def block_of(name: str) -> int | None:
    """The block index in a hook name (``"blocks.3.hook_resid_post"`` → 3), None outside blocks."""
    m = _BLOCK_RE.match(name)
    return int(m.group(1)) if m else None


def require_hooks(model: HookedModel, names: Sequence[str], *, reading: bool = True) -> None:
    """Raise :class:`~sd_lens.errors.UnsupportedArchitectureError` naming any hook point the model lacks.

    ``reading=True`` (reducers): :data:`LOGITS` counts as present, the engine reads it from the forward's
    output where the model has no such hook; ``reading=False`` (hooks to attach): only real hook points.
    """
    hook_dict = model.hook_dict
    missing = [n for n in names if n not in hook_dict and not (reading and n == LOGITS)]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise UnsupportedArchitectureError(
            f"the model has no hook point {shown}: it lacks HookedTransformer hook names. Load it with "
            "sd_lens.load_model (compatibility mode on) or call model.enable_compatibility_mode()."
        )


@contextmanager
def temporary_hooks(model: HookedModel, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[HookedModel]:
    """Attach ``fwd_hooks`` (under ``torch.no_grad``) for the ``with`` block only.

    Gradients are off inside. Exactly the hooks attached here are removed on exit — also when the body raises, including
    ``KeyboardInterrupt`` — and hooks the model had before are left alone. Every name must be a
    hook point of the model (checked before anything is attached). The model's lock
    (:func:`~sd_lens.runtime.lock.model_lock`) is held inside: another thread's hooks never join these.
    """
    require_hooks(model, [name for name, _ in fwd_hooks], reading=False)
    with model_lock(model), torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        yield model
