"""The model-family registry: which block layout each Hugging Face architecture has.

A :class:`Family` declares, for one block layout, the facts that TransformerLens does not state
reliably (the norm's scale convention, whether attention and FFN run in parallel, ...). The
generic builder in :mod:`sd_lens.models.view` reads every block of a family from those facts;
a family whose blocks it cannot read brings its own ``block_view`` builder.

The built-in families are registered in :mod:`sd_lens.models.families`; add yours with
:func:`register_family` (see docs/models.md, "Adding a model family").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal

from torch import Tensor

from sd_lens.errors import InputError, UnsupportedArchitectureError
from sd_lens.types import HookedModel

#: ``builder(model, layer, family) -> BlockView``: reads one block of a model of ``family``. The return
#: is typed ``Any`` here because :mod:`sd_lens.models.view` imports this module (no import circle);
#: ``ModelView`` checks that a builder returns a ``BlockView``.
BlockViewBuilder = Callable[[Any, int, "Family"], Any]


def weight_is_scale(w: Tensor) -> Tensor:
    """Scale convention of most norms: the module computes ``normalize(x) * w``."""
    return w


def one_plus_weight(w: Tensor) -> Tensor:
    """Scale convention of Gemma's RMSNorm: the module computes ``normalize(x) * (1 + w)``."""
    return 1.0 + w


@dataclass(frozen=True)
class Family:
    """One block layout, and the Hugging Face architecture classes that have it.

    Args:
        name: short unique name, reported as ``ModelView.family`` / ``BlockView.family``.
        architectures: Hugging Face model class names (``type(hf_model).__name__``, e.g.
            ``"LlamaForCausalLM"``) whose blocks have this layout.
        norm: ``"rms"`` (RMSNorm) or ``"layer"`` (LayerNorm), for every norm of the block.
        gated: the FFN is gated (``act(x W_gate) * (x W_in)``, SwiGLU/GeGLU) rather than ``act(x W_in)``.
        parallel: attention and FFN both read the block input (GPT-J/NeoX style): a bool, or a
            function of the model for families where it depends on the checkpoint's config.
        post_norms: the block also normalises the attention and FFN outputs before adding them to
            the residual (Gemma-2/3 sandwich norms, TransformerLens ``ln1_post``/``ln2_post``).
        effective_scale: the norm's effective scale from the Hugging Face module's raw ``weight``
            (:func:`weight_is_scale` or :func:`one_plus_weight`).
        block_view: a custom ``builder(model, layer, family) -> BlockView``; ``None`` (the default)
            uses :func:`sd_lens.models.view.standard_block_view`, which reads TransformerLens's
            attribute names (``blocks[l].attn.W_V``, ``mlp.W_in``, ``ln1``, ...).
    """

    name: str
    architectures: tuple[str, ...]
    norm: Literal["rms", "layer"]
    gated: bool
    parallel: bool | Callable[[Any], bool] = False
    post_norms: bool = False
    effective_scale: Callable[[Tensor], Tensor] = weight_is_scale
    block_view: BlockViewBuilder | None = None

    def __post_init__(self) -> None:
        archs = (self.architectures,) if isinstance(self.architectures, str) else tuple(self.architectures)
        object.__setattr__(self, "architectures", archs)
        if not self.name or not isinstance(self.name, str):
            raise InputError(f"a Family needs a non-empty name, got {self.name!r}")
        if not archs or not all(isinstance(a, str) and a for a in archs):
            raise InputError(f"Family {self.name!r} needs at least one architecture class name, got {archs!r}")
        if self.norm not in ("rms", "layer"):
            raise InputError(f"Family {self.name!r}: norm must be 'rms' or 'layer', got {self.norm!r}")

    def is_parallel(self, model: HookedModel) -> bool:
        """Whether ``model``'s blocks run attention and FFN in parallel."""
        return bool(self.parallel(model) if callable(self.parallel) else self.parallel)


_FAMILIES: dict[str, Family] = {}  # name -> family, in registration order
_BY_ARCHITECTURE: dict[str, str] = {}  # architecture class name -> family name


def register_family(family: Family, *, override: bool = False) -> Family:
    """Make ``family`` the block layout of its architectures; returns it.

    Refuses (``InputError``) a name or an architecture that is already registered, unless
    ``override=True``: then the family of the same name is replaced, and architectures another
    family claimed move to this one.
    """
    if not isinstance(family, Family):
        raise InputError(f"register_family expects a sd_lens.models.Family, got {type(family).__name__}")
    # architectures another family covers now
    taken = {a: owner for a in family.architectures if (owner := _BY_ARCHITECTURE.get(a, family.name)) != family.name}
    if not override and (family.name in _FAMILIES or taken):
        clashes = [f"a family named {family.name!r}"] if family.name in _FAMILIES else []
        clashes += [f"{a} (family {owner!r})" for a, owner in taken.items()]
        raise InputError(
            f"sd_lens already has {' and '.join(clashes)} registered. "
            "Pass override=True to replace it, or pick another name."
        )
    old = _FAMILIES.pop(family.name, None)
    for arch in old.architectures if old else ():
        del _BY_ARCHITECTURE[arch]
    for arch, owner in taken.items():  # only reached with override=True
        rest = tuple(a for a in _FAMILIES[owner].architectures if a != arch)
        del _BY_ARCHITECTURE[arch]
        if rest:
            _FAMILIES[owner] = dataclasses.replace(_FAMILIES[owner], architectures=rest)
        else:
            del _FAMILIES[owner]
    _FAMILIES[family.name] = family
    _BY_ARCHITECTURE.update(dict.fromkeys(family.architectures, family.name))
    return family


def registered_families() -> dict[str, Family]:
    """The registered families by name (a copy)."""
    return dict(_FAMILIES)


def registered_architectures() -> list[str]:
    """Every Hugging Face architecture class name some family covers, sorted."""
    return sorted(_BY_ARCHITECTURE)


def architecture_of(model: HookedModel) -> str:
    """The Hugging Face architecture class name behind a TransformerLens model."""
    original = getattr(model, "original_model", None)
    if original is not None:
        return type(original).__name__
    arch = getattr(model.cfg, "original_architecture", None)
    if arch:
        return str(arch)
    return type(model).__name__


def get_family(model_or_name: Any) -> Family:
    """The family of a TransformerLens model, or of a family name or architecture class name.

    Raises ``UnsupportedArchitectureError`` naming the registered families when none matches.
    """
    if isinstance(model_or_name, str):
        key = model_or_name
        if key in _FAMILIES:
            return _FAMILIES[key]
    else:
        key = architecture_of(model_or_name)
    if key in _BY_ARCHITECTURE:
        return _FAMILIES[_BY_ARCHITECTURE[key]]
    known = "; ".join(f"{f.name}: {', '.join(f.architectures)}" for f in _FAMILIES.values())
    raise UnsupportedArchitectureError(
        f"sd_lens has no block adapter for the architecture {key!r}. Registered families: {known}. "
        "If its blocks match one of these, register it with sd_lens.register_family(dataclasses.replace("
        f"sd_lens.get_family('llama'), name=..., architectures=({key!r},))); "
        "otherwise see 'Adding a model family' in docs/models.md."
    )
