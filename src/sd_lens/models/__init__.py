"""Models: loading (``loading``, from the model sources in ``sources``), the per-block weight view (``view``)
and the family registry.

Importing this package registers the built-in families (``families``); register your own with
:func:`register_family`.
"""

from sd_lens.models import families as _builtin_families  # noqa: F401  (registers the built-ins)
from sd_lens.models.registry import (
    Family,
    get_family,
    one_plus_weight,
    register_family,
    registered_architectures,
    registered_families,
    weight_is_scale,
)
from sd_lens.models.view import BlockView, ModelView, model_view, standard_block_view

__all__ = [
    "BlockView",
    "Family",
    "ModelView",
    "get_family",
    "model_view",
    "one_plus_weight",
    "register_family",
    "registered_architectures",
    "registered_families",
    "standard_block_view",
    "weight_is_scale",
]
