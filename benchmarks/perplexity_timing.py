"""What bench_perplexity.py and bench_quantize.py both time: token rates of a call, and a bare forward.

Run the benchmarks as scripts (``python benchmarks/bench_*.py``): this folder is then on ``sys.path``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from sd_lens.analyses.outlier_interventions import LOGITS_HOOK
from sd_lens.runtime import Tokenized, make_batch, run_batch
from sd_lens.runtime.tokens import length_sorted_batches


def token_rates(n_tokens: int, fn: Callable[[], object]) -> tuple[float, float]:
    """``fn()`` once: (tokens per wall second, tokens per CPU second of this process)."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return n_tokens / (time.perf_counter() - w0), n_tokens / (time.process_time() - c0)


def bare_forward(model: Any, tok: Tokenized, batch_size: int) -> Callable[[], None]:
    """One forward per batch of ``tok`` to the logits, keeping nothing: what any forward costs."""

    def bare() -> None:
        for idx in length_sorted_batches(tok.sequences, batch_size):
            batch = make_batch(model, [tok.sequences[i] for i in idx], idx)
            run_batch(model, batch, {LOGITS_HOOK: lambda act, b: None})

    return bare
