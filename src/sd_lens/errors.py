"""Errors sd_lens raises. Each message says what was wrong and what to do about it."""

from __future__ import annotations


class SdLensError(Exception):
    """Base class of every error sd_lens raises on purpose."""


class UnknownModelError(SdLensError, ValueError):
    """A model name that is neither built in nor a path on disk."""


class MissingDependencyError(SdLensError, ImportError):
    """An optional package is not installed; the message names the pip command that fixes it."""


class UnsupportedArchitectureError(SdLensError, NotImplementedError):
    """A model whose block layout sd_lens has no adapter for."""


class InputError(SdLensError, ValueError):
    """Bad user input: empty text, text longer than the model's context, a bad layer index..."""


class NonFiniteActivationError(SdLensError, FloatingPointError):
    """The model produced NaN or inf activations; no analysis of them would mean anything."""


class OutputError(SdLensError, OSError):
    """A result could not be written (a full disk, a device that refuses it); nothing half-written is left."""
