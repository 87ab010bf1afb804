"""Reducers compute where the activation is and never wait for the device (checked without a GPU).

On a GPU, a reducer that calls ``.cpu()``, ``.item()``, ``.tolist()``, ``float()`` or ``bool()`` on a
device value, or copies a host tensor to the device, makes the forward wait inside a hook; the engine
instead brings every reducer's value to the host once per forward (:func:`sd_lens.runtime.engine.to_host`).
Here each reducer of a full analysis is also run on *meta* tensors (shape-only, as a stand-in for a
device the host cannot read): each of those calls raises there, and so does mixing a host tensor into
device arithmetic — what fails on CUDA fails here, on a CPU-only machine.
"""

from __future__ import annotations

import traceback
import warnings

import pytest
import torch

from conftest import planted_bos_model
from sd_lens.models.hooked import backend
from sd_lens.pipeline import run_analysis
from sd_lens.runtime import engine
from sd_lens.runtime.engine import Batch, to_host

TEXTS = ["the cat sat on the mat", "a b c d e f g", "hello there, general", "one two three four five six seven"]

# data-dependent shapes, one sync per forward (not per hook): allowed, with the reason
ALLOWED = {
    "tokens_of": "activation outliers: the carriers of a batch (torch.unique), memoised once per batch",
    "nll_sum": "perplexity: the one logits reducer of its forward selects the real tokens",
}


def _shadowed(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, str], set[str]]:
    failures: dict[str, str] = {}
    seen: set[str] = set()
    original = engine._reducer_hooks

    def shadow(reducers, batch, out, stop_when_read=False):  # type: ignore[no-untyped-def]
        meta = Batch(batch.index, batch.tokens.to("meta"), batch.lengths, batch.mask.to("meta"),
                     batch.lengths.to("meta"))

        def wrap(name, reducer):  # type: ignore[no-untyped-def]
            def run(act, b):  # type: ignore[no-untyped-def]
                seen.add(name.split(".")[-1])
                try:
                    reducer(act.to("meta"), meta)
                except Exception as exc:  # noqa: BLE001 - every failure is reported below
                    frames = [f.name for f in traceback.extract_tb(exc.__traceback__)[1:]
                              if "site-packages" not in f.filename]
                    failures.setdefault(frames[-1], f"{name}: {frames} {exc!r:.200}")
                return reducer(act, b)

            return run

        return original({n: wrap(n, r) for n, r in reducers.items()}, batch, out, stop_when_read)

    monkeypatch.setattr(engine, "_reducer_hooks", shadow)
    return failures, seen


def test_every_reducer_of_the_full_analysis_stays_on_the_device(monkeypatch):
    failures, seen = _shadowed(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_analysis(planted_bos_model(), TEXTS, channels=True, local_checks=True, interventions=True,
                              quantize=True, vocab=True, vocab_limit=64, held_out_lines=8)
    assert len(result.defects) >= 1  # the planted defect: the defect-dependent analyses ran too
    # the hook points read: norms, FFN inputs and outputs, patterns, the quantizer's sites, and the logits
    # (a HookedTransformer has no hook on them: the engine reads its output, outside any hook)
    expected = {"hook_resid_post", "hook_resid_pre", "hook_pattern", "hook_post", "hook_normalized"}
    assert expected | ({"hook_out"} if backend() == "bridge" else set()) <= seen
    assert set(failures) <= set(ALLOWED), "\n".join(v for k, v in failures.items() if k not in ALLOWED)


def test_a_reducer_that_waits_for_the_device_is_caught(monkeypatch):
    """The check above can fail: a reducer reading a value on the host is reported."""
    failures, _ = _shadowed(monkeypatch)

    def bad(act, batch):  # type: ignore[no-untyped-def]
        return float(act.norm())

    engine.run(planted_bos_model(), torch.tensor([1, 5, 6]), {"blocks.0.hook_resid_post": bad})
    assert "bad" in failures


def test_to_host_keeps_structure_and_host_tensors():
    a, b = torch.ones(2), torch.zeros(1)
    out = to_host({"x": (a, [b, 3]), "y": None})
    assert out["x"][0] is a and out["x"][1][0] is b and out["x"][1][1] == 3 and out["y"] is None
