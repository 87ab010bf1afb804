"""The one place sd_lens runs a model.

* :mod:`~sd_lens.runtime.tokens` — one tokenisation policy (the model's BOS convention,
  truncation, right padding and the mask of real positions) and one token decoder;
* :mod:`~sd_lens.runtime.hooks` — hook-point names (TransformerLens's ``get_act_name``) and one
  context manager for temporary hooks;
* :mod:`~sd_lens.runtime.lock` — :func:`model_lock`, the per-model lock that lets several threads
  share a model (their forwards and analyses run one at a time);
* :mod:`~sd_lens.runtime.engine` — :func:`forward` (the only call of a model's forward),
  :func:`run` (one batch) and :func:`stream` (batches of texts), each applying a *reducer* per hook
  point so that no full activation cache is held unless a reducer keeps it;
* :mod:`~sd_lens.runtime.attention` — the lean attention of long texts (:func:`attention_path` turns it
  off): a fused kernel in every block whose pattern no hook reads, from :data:`LEAN_FROM` positions on.

Every analysis that runs the model is a short specialisation of :func:`stream` or :func:`run`
(:func:`run_batch` for one prepared :class:`Batch`, :func:`forward` for a bare forward);
``tests/unit/test_runtime_seam.py`` fails if any other module calls a forward or attaches a hook.
"""

from sd_lens.runtime.attention import LEAN_FROM, attention_path
from sd_lens.runtime.engine import (
    Batch,
    Pass,
    Reducer,
    forward,
    keep,
    make_batch,
    run,
    run_batch,
    run_passes,
    stream,
)
from sd_lens.runtime.hooks import act_name, block_of, require_hooks, temporary_hooks
from sd_lens.runtime.lock import model_lock
from sd_lens.runtime.tokens import (
    Tokenized,
    decode,
    decode_one,
    encode,
    model_device,
    pad,
    tokenize,
)

__all__ = [
    "Batch",
    "Pass",
    "Reducer",
    "Tokenized",
    "act_name",
    "block_of",
    "decode",
    "decode_one",
    "encode",
    "forward",
    "keep",
    "make_batch",
    "model_device",
    "model_lock",
    "pad",
    "require_hooks",
    "run",
    "run_batch",
    "run_passes",
    "stream",
    "temporary_hooks",
    "tokenize",
    "LEAN_FROM",
    "attention_path",
]
