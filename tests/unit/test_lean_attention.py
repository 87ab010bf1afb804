"""The lean attention path (issue 24, item 5): from ``LEAN_FROM`` positions on, blocks with no hook on
their pattern or scores run ``scaled_dot_product_attention`` instead of the bridge's eager attention —
the same numbers within float32 rounding on every tiny family (Gemma-3's sliding window of 64 is shorter
than the 256 positions used here, so its mask path is covered too), eager wherever a pattern hook is
asked for, and nothing left on the model afterwards."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from sd_lens.runtime import attention, run
from sd_lens.runtime.attention import LEAN_FROM, attention_path, lean_blocks, lean_support
from sd_lens.runtime.engine import keep, make_batch, run_batch
from sd_lens.runtime.hooks import LOGITS, act_name

pytestmark = pytest.mark.bridge_only(reason='the lean path replaces TransformerBridge attention modules; a HookedTransformer (TransformerLens 2.x) has no such seam and stays eager')


def _tokens(n: int, rows: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(4, 100, (rows, n), generator=g)
    t[:, 0] = 1  # BOS
    return t


def _reads(model: Any) -> dict[str, Any]:
    names = [act_name("resid_post", b) for b in range(model.cfg.n_layers)]
    return {**{n: keep for n in names}, LOGITS: keep}


def _overridden(model: Any) -> list[int]:
    return [i for i, b in enumerate(model.blocks) if {"forward", "_reconstruct_attention"} & set(vars(b.attn))]


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for name in a:
        scale = float(a[name].abs().max())
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5 * max(1.0, scale), msg=name)


@pytest.mark.parametrize("n", [LEAN_FROM, 32])
def test_every_tiny_family_is_lean_and_equal_to_eager(tiny: Any, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 256 positions Gemma-3's sliding window (64) is shorter than the text: the model's mask goes to the
    kernel; at 32 every family is plain causal."""
    assert all(lean_support(b.attn) is None for b in tiny.blocks), [lean_support(b.attn) for b in tiny.blocks]
    kernel = attention._sdpa
    calls: list[int] = []
    monkeypatch.setattr(attention, "_sdpa", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    tokens = _tokens(n, rows=2)
    with attention_path("eager"):
        eager = run(tiny, tokens, _reads(tiny), stop_at_layer=None)
    assert calls == []
    with attention_path("lean" if n < LEAN_FROM else "auto"):
        assert lean_blocks(tiny, n) == list(range(tiny.cfg.n_layers))
        lean = run(tiny, tokens, _reads(tiny), stop_at_layer=None)
    assert len(calls) == tiny.cfg.n_layers  # the kernel ran in every block (no silent fallback)
    _close(eager, lean)
    assert _overridden(tiny) == []


def test_padded_batches_with_the_mask_are_equal_on_real_positions(tiny: Any) -> None:
    """Right-padded rows with the padding mask passed to the model: the kernel gets the model's own mask."""
    seqs = [_tokens(LEAN_FROM, seed=1)[0], _tokens(LEAN_FROM - 40, seed=2)[0]]
    batch = make_batch(tiny, seqs, [0, 1])
    reads = _reads(tiny)
    with attention_path("eager"):
        eager = run_batch(tiny, batch, reads, stop_at_layer=None, attention_mask=True)
    with attention_path("lean"):
        lean = run_batch(tiny, batch, reads, stop_at_layer=None, attention_mask=True)
    mask = batch.mask.cpu()
    _close({k: v[mask] for k, v in eager.items()}, {k: v[mask] for k, v in lean.items()})


def test_auto_threshold() -> None:
    from sd_lens.models.tiny import tiny_model

    model = tiny_model("llama")
    assert lean_blocks(model, LEAN_FROM - 1) == []
    assert lean_blocks(model, LEAN_FROM) == [0, 1]
    with attention_path("eager"):
        assert lean_blocks(model, 8000) == []
    with attention_path("lean"):
        assert lean_blocks(model, 3) == [0, 1]
    with pytest.raises(ValueError, match="attention path"):
        with attention_path("fast"):  # type: ignore[arg-type]
            pass
    # below the threshold the eager path runs: bit-identical to a forced eager forward
    tokens = _tokens(LEAN_FROM - 1)
    with attention_path("eager"):
        eager = run(model, tokens, _reads(model), stop_at_layer=None)
    auto = run(model, tokens, _reads(model), stop_at_layer=None)
    for name in eager:
        assert torch.equal(eager[name], auto[name]), name


def test_a_pattern_hook_keeps_its_block_eager(tiny: Any) -> None:
    seen: dict[str, Any] = {}

    def pattern(act: torch.Tensor, hook: Any) -> None:
        seen["pattern"] = act.shape
        seen["lean during block 0"] = _overridden(tiny)

    def scores(act: torch.Tensor, hook: Any) -> None:
        seen["scores"] = act.shape

    out = run(
        tiny, _tokens(LEAN_FROM), {act_name("resid_post", 1): keep},
        fwd_hooks=[(act_name("pattern", 0), pattern), (act_name("attn_scores", 1), scores)],
    )
    assert tuple(seen["pattern"])[-2:] == (LEAN_FROM, LEAN_FROM)
    assert tuple(seen["scores"])[-2:] == (LEAN_FROM, LEAN_FROM)
    assert seen["lean during block 0"] == []  # both blocks asked for a pattern or scores: both eager
    assert out[act_name("resid_post", 1)].shape[1] == LEAN_FROM

    # one block hooked, the other lean
    def mark(act: torch.Tensor, hook: Any) -> None:
        seen["lean"] = _overridden(tiny)

    run(tiny, _tokens(LEAN_FROM), {act_name("resid_post", 1): keep},
        fwd_hooks=[(act_name("pattern", 0), mark)])
    assert seen["lean"] == [1]
    assert _overridden(tiny) == []


def test_replacements_are_removed_also_on_error(tiny: Any) -> None:
    def boom(act: torch.Tensor, hook: Any) -> None:
        assert _overridden(tiny) == [0, 1]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run(tiny, _tokens(LEAN_FROM), {act_name("resid_post", 1): keep}, fwd_hooks=[(act_name("resid_post", 0), boom)])
    assert _overridden(tiny) == []
    assert all(not b.attn.hook_pattern._forward_hooks for b in tiny.blocks)


@pytest.mark.parametrize("budget", [0, 1, None])
def test_carrier_traces_from_the_direction_pass(budget: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The defect finder reads its carriers' trajectories in the direction pass, within TRACE_BUDGET_BYTES
    (None: the default; 1 byte: no row fits, every carrier is re-run as before; 0: off): the explosion and
    decay blocks and the component profile are those of re-run prefixes."""
    import random

    from conftest import token_embedding
    from sd_lens.analyses import defects as defects_module
    from sd_lens.analyses import state_directions
    from sd_lens.analyses.probe import probe_norms
    from sd_lens.models.tiny import tiny_model

    model = tiny_model("llama", seed=1, n_layers=4)
    x_id = model.tokenizer(" x", add_special_tokens=False)["input_ids"][-1]
    with torch.no_grad():
        token_embedding(model)[model.tokenizer.bos_token_id] *= 40
        token_embedding(model)[x_id] *= 12
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "mat", "x", "dog", "ran"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(24)]
    probe = probe_norms(model, texts)

    monkeypatch.setattr(defects_module, "TRACE_BUDGET_BYTES", 0)
    reference = defects_module.find_defects(model, probe)
    assert reference.clusters is not None and reference.clusters.traces is None
    reruns: list[int] = []
    rerun = defects_module.residual_trajectories
    monkeypatch.setattr(defects_module, "residual_trajectories", lambda m, p, *a: reruns.append(len(p)) or rerun(m, p, *a))
    if budget is not None:
        monkeypatch.setattr(defects_module, "TRACE_BUDGET_BYTES", budget)
    else:
        monkeypatch.undo()
        monkeypatch.setattr(defects_module, "residual_trajectories", lambda m, p, *a: reruns.append(len(p)) or rerun(m, p, *a))
    report = defects_module.find_defects(model, probe)
    clusters = report.clusters
    assert clusters is not None
    if budget is None:
        assert clusters.traces is not None and clusters.traces.numel() * 4 <= state_directions.TRACE_BUDGET_BYTES
        assert reruns == []  # every carrier came from the direction pass: no forward of its own
    else:
        assert clusters.traces is None and reruns and reruns[0] > 0
    assert len(report.all) == len(reference.all) >= 2
    for got, want in zip(report.all, reference.all):
        assert (got.explosion_layer, got.decay_layers) == (want.explosion_layer, want.decay_layers)
        torch.testing.assert_close(got.component, want.component, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.update, want.update, rtol=1e-4, atol=1e-4)
