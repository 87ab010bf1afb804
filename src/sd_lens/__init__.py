"""sd_lens: find, explain and causally verify singular defects (high-norm tokens) of LLMs.

A TransformerLens plugin: every analysis is a function of a model (and a block) returning a
typed result; every intervention is a forward hook you can pass to ``run_with_hooks``.
"""

from sd_lens.errors import (
    InputError,
    MissingDependencyError,
    NonFiniteActivationError,
    SdLensError,
    UnknownModelError,
    UnsupportedArchitectureError,
)
from sd_lens.loading import DEFAULT_MODEL, cache_root, known_models, load_model
from sd_lens.model_view import BlockView, ModelView, model_view

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "BlockView",
    "InputError",
    "MissingDependencyError",
    "ModelView",
    "NonFiniteActivationError",
    "SdLensError",
    "UnknownModelError",
    "UnsupportedArchitectureError",
    "cache_root",
    "known_models",
    "load_model",
    "model_view",
]
