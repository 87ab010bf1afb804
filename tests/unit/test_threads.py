"""One model in several threads (issue 24, item 4): sd_lens serialises the uses of a model through a
per-model lock (``sd_lens.runtime.lock``), so two threads analysing one model get exactly the results
of sequential runs, while threads on different models do not wait for each other."""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest
import torch

from conftest import planted_bos_model
from sd_lens.analyses.probe import probe_norms
from sd_lens.models.tiny import tiny_model
from sd_lens.pipeline import run_analysis
from sd_lens.runtime.lock import model_lock

TEXTS = [
    "The cat sat on the mat because it was warm.",
    "A second sentence, somewhat longer than the first one was.",
    "Short one.",
    "Numbers 1 2 3 and symbols ; : ! are text too.",
] * 3


def _in_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(i)`` for i in 0..n-1 in n threads released together; their results (or re-raise)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


def _comparable(result: Any) -> dict[str, Any]:
    data = result.to_dict()
    data.pop("timings_s")
    return data


@pytest.fixture(scope="module")
def planted():
    return planted_bos_model()


def test_two_threads_analysing_one_model_match_a_sequential_run(planted):
    options = dict(max_tokens_per_text=24, batch_size=3)
    alone = _comparable(run_analysis(planted, TEXTS, **options))
    assert alone["defects"], "the planted model should have a defect"
    for _ in range(2):
        both = _in_threads(2, lambda i: run_analysis(planted, TEXTS if i == 0 else TEXTS[::-1], **options))
        assert _comparable(both[0]) == alone
        assert _comparable(both[1])["corpus"] == alone["corpus"]
    reversed_alone = _comparable(run_analysis(planted, TEXTS[::-1], **options))
    assert _comparable(both[1]) == reversed_alone


def test_concurrent_probes_of_one_model_are_exact(planted):
    """Forwards of different lengths and hooks in four threads: each probe is the sequential one, bit for bit."""
    corpora = [TEXTS[i:] + TEXTS[:i] for i in range(4)]
    alone = [probe_norms(planted, c, batch_size=2 + i, max_tokens_per_text=20) for i, c in enumerate(corpora)]
    together = _in_threads(4, lambda i: probe_norms(planted, corpora[i], batch_size=2 + i, max_tokens_per_text=20))
    for a, b in zip(alone, together):
        assert torch.equal(a.norms, b.norms) and torch.equal(a.token_ids, b.token_ids)


def test_the_lock_is_per_model_and_reentrant(planted):
    other = tiny_model("llama", seed=3)
    lock = model_lock(planted)
    assert model_lock(planted) is lock and model_lock(other) is not lock
    started, finished = threading.Event(), threading.Event()

    def analyse_planted() -> None:
        started.set()
        probe_norms(planted, TEXTS[:2], max_tokens_per_text=8)
        finished.set()

    with lock, lock:  # re-entrant: sd_lens calls inside a held lock work
        probe_norms(planted, TEXTS[:2], max_tokens_per_text=8)
        waiter = threading.Thread(target=analyse_planted)
        waiter.start()
        assert started.wait(10)
        probe_norms(other, TEXTS[:2], max_tokens_per_text=8)  # another model: not blocked by this lock
        assert not finished.wait(0.5), "a forward of the model ran while another thread held its lock"
    waiter.join(timeout=30)
    assert finished.is_set()
