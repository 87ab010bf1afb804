"""Types shared across sd_lens: what "a TransformerLens model" is, and hook signatures.

sd_lens works on any object that behaves like a TransformerLens model: a
``TransformerBridge`` in compatibility mode (TransformerLens 4) or a ``HookedTransformer``
(TransformerLens 2.x/3.x). :class:`HookedModel` names the part of that interface sd_lens uses,
so signatures say "a TransformerLens model" instead of ``Any``; it is a structural protocol,
nothing has to inherit from it. (``ModelOrView``, a model or its weights, lives with the views in
:mod:`sd_lens.models.view`: this module is on the bottom floor and imports nothing of sd_lens.)
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["HookFn", "HookedModel"]


@runtime_checkable
class HookedModel(Protocol):
    """A TransformerLens model: ``cfg``, ``hook_dict``, ``to_tokens``, ``hooks`` and a forward.

    Only :mod:`sd_lens.runtime` calls the forward or attaches hooks; analyses read ``cfg``,
    weights (through :func:`sd_lens.models.view.model_view`) and the tokenizer.
    """

    cfg: Any
    tokenizer: Any
    blocks: Any

    @property
    def hook_dict(self) -> Mapping[str, Any]: ...

    def to_tokens(self, input: Any, *args: Any, **kwargs: Any) -> Tensor: ...

    def hooks(self, fwd_hooks: Any = ..., *args: Any, **kwargs: Any) -> Any: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


#: A TransformerLens forward hook: ``hook(activation, hook_point)``; returns a replacement or None.
HookFn = Callable[[Tensor, Any], Any]
