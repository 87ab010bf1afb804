"""One model, several threads: every use of a model's hooks or weights holds the model's lock.

A TransformerLens model is one mutable object: its hook points hold the hooks of the forward that
is running, and :func:`~sd_lens.runtime.precision.forward_dtype` and
:func:`~sd_lens.quantize.fake.fake_quantize` change its weights for a while. Two threads using one
model at once would see each other's hooks (a shape mismatch, a "hook point did not fire" error,
or silently mixed results). So sd_lens serialises them, per model:

* :func:`~sd_lens.runtime.hooks.temporary_hooks` (hence every forward of
  :mod:`~sd_lens.runtime.engine`) holds :func:`model_lock` while its hooks are attached;
* :func:`~sd_lens.pipeline.run_analysis`, :func:`~sd_lens.runtime.precision.forward_dtype` and
  :func:`~sd_lens.quantize.fake.fake_quantize` hold it for their whole duration.

Two threads calling :func:`~sd_lens.pipeline.run_analysis` on one model therefore run one after the
other, and each gets exactly what it would get alone; threads on *different* models run in
parallel (each model has its own lock). The lock is re-entrant: code holding it may call any sd_lens
function on the same model. Code of your own that attaches hooks or changes weights outside sd_lens
(``model.hooks(...)``, ``model.run_with_cache``) should hold ``model_lock(model)`` too.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

__all__ = ["model_lock"]

_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.RLock:
    """The re-entrant lock of ``model`` (one per model object, made on first use, dropped with it).

    Example::

        with model_lock(model):
            logits = model.run_with_cache(tokens)  # no sd_lens call in another thread interleaves
    """
    with _GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock
