"""The streaming engine: the only code that calls a model's forward.

In the spirit of TransformerLens's ``generic_activation_patch`` (one engine, thin
specialisations): a caller names hook points and gives a *reducer* for each — a function
``reducer(activation, batch) -> value`` that turns the activation of one batch into what the
caller keeps (a norm per token, one token's vector, a coefficient). The engine

* runs batches of right-padded sequences. Right padding is exact for causal attention: a real token
  never attends to a later (pad) position, so real positions are the same as each sequence run alone
  (checked bit-identical on SmolLM2 and Gemma-3; ``tests/unit/test_runtime_seam.py`` checks it on a tiny
  model of every family). The attention mask therefore goes to the model only when asked for
  (``attention_mask=True``): on a CPU an explicit mask moves the forward off the causal fast path
  and costs about 10 %. Reducers always get it as ``batch.mask``.
* attaches the caller's interventions (ordinary TransformerLens forward hooks) and the reducers
  as temporary hooks, removed after every forward even on error or ``KeyboardInterrupt``,
* stops as soon as every reducer has read its value (no later block, final norm or unembedding
  runs, also when the deepest hook is in the last block),
* keeps nothing but what the reducers return: a full activation cache exists only when a reducer
  returns the whole activation (:func:`keep`), and
* on an accelerator, lets reducers compute where the activation is and moves what they returned to
  the host once per forward, after it (:func:`to_host`: one batch of non-blocking copies and one
  synchronisation), so the forward never waits on a device-to-host copy inside a hook. A reducer
  must therefore not call ``.cpu()``, ``.item()``, ``.tolist()`` or ``float()`` on device values
  (``tests/unit/test_device_discipline.py`` runs the library's reducers on meta tensors, where each of
  these raises); use ``batch.lengths_on(act.device)`` rather than copying ``batch.lengths`` there.

Reducers receive the activation detached; an intervention that must *change* an activation is a
forward hook passed in ``fwd_hooks`` (it runs before the reducers at the same hook point, so a
reducer sees the edited value).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sd_lens.errors import UnsupportedArchitectureError
from sd_lens.runtime.attention import lean_attention
from sd_lens.runtime.hooks import LOGITS, block_of, temporary_hooks
from sd_lens.runtime.tokens import attention_mask as padding_mask
from sd_lens.runtime.tokens import length_sorted_batches, model_device, pad
from sd_lens.types import HookedModel, HookFn

__all__ = [
    "Batch", "Pass", "Reducer", "forward", "keep", "make_batch", "real_mask", "run", "run_batch", "run_passes", "stream",
    "to_host", "with_real_mask",
]

#: the real (non-pad) positions of the rows the running forward sees; set by :func:`run_batch`
_REAL: ContextVar[Tensor | None] = ContextVar("sd_lens_real_positions", default=None)


def real_mask() -> Bool[Tensor, "batch pos"] | None:
    """For an intervention hook: bool ``[B, T]`` (on the model's device), True at the real tokens of
    the batch :func:`run_batch` is running, so a hook can leave padding out of a statistic; None
    outside the engine's forwards (every position counts then)."""
    return _REAL.get()


@contextmanager
def with_real_mask(mask: Tensor | None) -> Iterator[None]:
    """:func:`real_mask` is ``mask`` inside the block (e.g. for a hook that runs another on some rows)."""
    token = _REAL.set(mask)
    try:
        yield
    finally:
        _REAL.reset(token)


@dataclass(frozen=True)
class Batch:
    """One forward's inputs, as reducers see them.

    Attributes:
        index: which of the streamed sequences each row is.
        tokens: long ``[B, T]`` on the model's device (right-padded).
        lengths: long ``[B]`` on the CPU: the real tokens of each row.
        mask: bool ``[B, T]`` on the model's device: True at real tokens.
        device_lengths: ``lengths`` on the model's device (copied before the forward, so that a
            reducer needs no host-to-device copy); read it through :meth:`lengths_on`.
    """

    index: list[int]
    tokens: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, " batch"]
    mask: Bool[Tensor, "batch pos"]
    device_lengths: Int[Tensor, " batch"] | None = field(default=None, repr=False)

    def lengths_on(self, device: torch.device) -> Int[Tensor, " batch"]:
        """``lengths`` on ``device`` (the copy made before the forward when it is the model's device)."""
        d = self.device_lengths
        return d if d is not None and d.device == torch.device(device) else self.lengths.to(device)

    @property
    def padded(self) -> bool:
        return bool((self.lengths < self.tokens.shape[1]).any())


#: ``reducer(activation, batch) -> value``: what to keep of one hook point's activation.
Reducer = Callable[[Tensor, Batch], Any]

StopAt = int | None | Literal["auto"]


def keep(act: Float[Tensor, "batch pos *rest"], batch: Batch) -> Float[Tensor, "batch pos *rest"]:
    """The reducer that keeps the whole activation (float32; on the CPU once the engine returns it):
    a cache, only when asked for."""
    return act.float()


def to_host(value: Any) -> Any:
    """``value`` (a tensor, or tuples, lists and dicts of them) with every tensor on the CPU.

    CUDA tensors are copied with ``non_blocking=True`` (into pinned memory) and waited for once, at
    the end; CPU tensors and non-tensors are returned as they are.
    """
    pending: list[torch.device] = []

    def move(v: Any) -> Any:
        if isinstance(v, Tensor):
            if v.device.type == "cpu":
                return v
            if v.device.type == "cuda":
                pending.append(v.device)
                return v.to("cpu", non_blocking=True)
            return v.cpu()
        if isinstance(v, tuple):
            return tuple(move(x) for x in v)
        if isinstance(v, list):
            return [move(x) for x in v]
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        return v

    out = move(value)
    for device in dict.fromkeys(pending):
        torch.cuda.synchronize(device)
    return out


def _stop_layer(names: Iterable[str], stop_at_layer: StopAt) -> int | None:
    if stop_at_layer != "auto":
        return stop_at_layer
    blocks = [block_of(n) for n in names]
    if not blocks or any(b is None for b in blocks):
        return None  # a reducer outside the blocks (or none at all): run the whole model
    return max(b for b in blocks if b is not None) + 1


def forward(
    model: HookedModel,
    tokens: Int[Tensor, "batch pos"],
    *,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    stop_at_layer: int | None = None,
    return_type: str | None = None,
) -> Any:
    """One forward pass with temporary hooks (no gradients); the only call of a model in sd_lens.

    Args:
        model: a TransformerLens model.
        tokens: ``[B, T]`` token ids (moved to the model's device).
        fwd_hooks: ``(hook name, hook)`` pairs, attached for this forward only.
        attention_mask: ``[B, T]``, 1 at real tokens; None: not passed (exact for right-padded causal models).
        stop_at_layer: run blocks ``0..stop_at_layer-1`` only (None: the whole model).
        return_type: TransformerLens's ``return_type`` (``None``: nothing, ``"logits"``, ``"loss"``).

    From :data:`~sd_lens.runtime.attention.LEAN_FROM` positions on, blocks with no hook on their attention
    pattern or scores run a fused attention kernel (:mod:`~sd_lens.runtime.attention`: the same numbers
    within float32 rounding, no ``[batch, heads, T, T]`` tensors); ``attention_path("eager")`` turns it off.
    """
    device = model_device(model)
    kwargs: dict[str, Any] = {"return_type": return_type, "stop_at_layer": stop_at_layer}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.to(device)
    with temporary_hooks(model, fwd_hooks), lean_attention(model, int(tokens.shape[-1]), masked="attention_mask" in kwargs):
        return model(tokens.to(device), **kwargs)


class _AllRead(Exception):
    """Raised by the last reducer to fire: nothing later in the forward can change what was read."""


def _reducer_hooks(
    reducers: Mapping[str, Reducer], batch: Batch, out: dict[str, Any], stop_when_read: bool = False
) -> list[tuple[str, HookFn]]:
    def make(name: str, reducer: Reducer) -> HookFn:
        def hook(act: Tensor, hook: Any) -> None:
            out[name] = reducer(act.detach(), batch)
            if stop_when_read and len(out) == len(reducers):
                raise _AllRead

        return hook

    return [(name, make(name, reducer)) for name, reducer in reducers.items()]


def run_batch(
    model: HookedModel,
    batch: Batch,
    reducers: Mapping[str, Reducer],
    *,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    stop_at_layer: StopAt = "auto",
    attention_mask: bool = False,
) -> dict[str, Any]:
    """Run one :class:`Batch`; return ``{hook name: reducer value}``, every tensor on the CPU.

    ``attention_mask=True`` passes ``batch.mask`` to the model when the batch is padded (not needed
    for causal models, see the module docstring). Reducers run on the activation's device; their
    values come to the host together after the forward (:func:`to_host`).
    """
    out: dict[str, Any] = {}
    # a HookedTransformer has no hook on its logits: a LOGITS reducer reads the forward's output instead
    logits_reducer = reducers[LOGITS] if LOGITS in reducers and LOGITS not in model.hook_dict else None
    hooked = {name: r for name, r in reducers.items() if logits_reducer is None or name != LOGITS}
    # "auto": the forward ends once every reducer has read its value (interventions deeper than every
    # reducer cannot matter) — also in the last block, where stop_at_layer cannot stop the final norm
    # and unembedding from running
    auto = stop_at_layer == "auto" and bool(hooked) and logits_reducer is None
    hooks = list(fwd_hooks) + _reducer_hooks(hooked, batch, out, stop_when_read=auto)
    stop = _stop_layer(reducers, stop_at_layer)
    try:
        with with_real_mask(batch.mask):
            result = _forward_batch(model, batch, hooks, stop, attention_mask, logits_reducer is not None)
        if logits_reducer is not None and result is not None:
            out[LOGITS] = logits_reducer(result.detach(), batch)
    except _AllRead:
        pass
    silent = [name for name in reducers if name not in out]
    if silent:
        raise UnsupportedArchitectureError(
            f"hook point(s) {', '.join(silent[:4])} did not fire during the forward (stop_at_layer={stop}): "
            "the model does not run them. Load it with sd_lens.load_model (compatibility mode on) or call "
            "model.enable_compatibility_mode()."
        )
    return to_host(out)


def _forward_batch(
    model: HookedModel, batch: Batch, hooks: Sequence[tuple[str, HookFn]], stop: int | None, mask: bool, logits: bool
) -> Any:
    return forward(
        model, batch.tokens, fwd_hooks=hooks, stop_at_layer=stop,
        attention_mask=batch.mask.long() if mask and batch.padded else None,
        return_type="logits" if logits and stop is None else None,
    )


def make_batch(model: HookedModel, seqs: Sequence[Int[Tensor, " pos"]], index: Sequence[int], pad_id: int = 0) -> Batch:
    """Right-pad ``seqs`` into a :class:`Batch` on the model's device."""
    tokens, lengths = pad(seqs, pad_id)
    device = model_device(model)
    mask = padding_mask(lengths, tokens.shape[1])
    return Batch(list(index), tokens.to(device), lengths, mask.to(device), lengths.to(device))


def run(
    model: HookedModel,
    tokens: Int[Tensor, "batch pos"] | Int[Tensor, " pos"],
    reducers: Mapping[str, Reducer],
    *,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    stop_at_layer: StopAt = "auto",
) -> dict[str, Any]:
    """One forward of ``tokens`` (every position real; a 1-D tensor is one row).

    Returns ``{hook name: reducer(activation, batch)}``. ``stop_at_layer="auto"`` stops after the
    deepest block a reducer reads (interventions deeper than that cannot change what it reads).
    """
    tokens = tokens[None] if tokens.ndim == 1 else tokens
    batch = make_batch(model, list(tokens), range(tokens.shape[0]))
    return run_batch(model, batch, reducers, fwd_hooks=fwd_hooks, stop_at_layer=stop_at_layer)


def stream(
    model: HookedModel,
    sequences: Sequence[Int[Tensor, " pos"]],
    reducers: Mapping[str, Reducer],
    *,
    batch_size: int = 16,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    stop_at_layer: StopAt = "auto",
    longest_first: bool = False,
    pad_id: int = 0,
    attention_mask: bool = False,
    progress: bool | str = False,
) -> Iterator[tuple[Batch, dict[str, Any]]]:
    """Run ``sequences`` (1-D token tensors of any lengths) in batches of similar length.

    Yields ``(batch, {hook name: reducer value})`` after each forward; the caller folds the values
    into its result, so memory holds one batch's activations at a time.

    Args:
        model: a TransformerLens model.
        sequences: token ids of each sequence (no padding).
        reducers: ``{hook name: reducer}``.
        batch_size: sequences per forward.
        fwd_hooks: interventions applied in every forward (ordinary TransformerLens hooks).
        stop_at_layer: ``"auto"`` (after the deepest block a reducer reads), a block count, or None (all).
        longest_first: batch the longest sequences first (default: shortest first).
        pad_id: the id written at padded positions (never read back).
        attention_mask: also pass the padding mask to the model (exact without it for causal
            attention; see the module docstring).
        progress: show a tqdm bar; a string is its description.
    """
    groups = length_sorted_batches(sequences, batch_size, longest_first=longest_first)
    iterator: Iterable[list[int]] = groups
    if progress:
        from tqdm.auto import tqdm

        desc = progress if isinstance(progress, str) else "forward"
        iterator = tqdm(groups, desc=desc, unit="batch", total=math.ceil(len(sequences) / batch_size))
    for idx in iterator:
        batch = make_batch(model, [sequences[i] for i in idx], idx, pad_id)
        yield batch, run_batch(
            model, batch, reducers, fwd_hooks=fwd_hooks, stop_at_layer=stop_at_layer, attention_mask=attention_mask
        )


@dataclass
class Pass:
    """A streamed analysis in three parts, so that several can share one forward per batch.

    ``reducers`` (``{hook name: reducer}``), ``consume(batch, values)`` folding one batch's reducer
    values into the analysis's state, and ``finish()`` building its result from that state.
    :func:`run_passes` feeds any number of passes from one :func:`stream` over ``sequences``
    (every pass of one run must stream the same sequences); :meth:`result` is ``finish()``, once.
    """

    sequences: Sequence[Int[Tensor, " pos"]]
    reducers: Mapping[str, Reducer]
    consume: Callable[[Batch, Mapping[str, Any]], None]
    finish: Callable[[], Any]
    name: str = "pass"
    _result: Any = None
    _done: bool = False

    def result(self) -> Any:
        if not self._done:
            self._result, self._done = self.finish(), True
        return self._result


def run_passes(
    model: HookedModel,
    passes: Sequence[Pass],
    *,
    batch_size: int = 16,
    progress: bool | str = False,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
) -> None:
    """Run several :class:`Pass` es over their (common) sequences with one forward per batch.

    Reducers of different passes on the same hook point all read that activation. Each pass's
    ``consume`` gets the values of its own reducers only, in pass order, after each forward.
    ``fwd_hooks`` (interventions, e.g. a change of the residual basis) apply in every forward, before
    the reducers at the same hook point.
    """
    if not passes:
        return
    seqs = passes[0].sequences
    for p in passes[1:]:
        if len(p.sequences) != len(seqs) or any(
            a is not b and not bool((a.shape == b.shape) and (a == b).all()) for a, b in zip(p.sequences, seqs)
        ):
            raise ValueError(f"passes {passes[0].name!r} and {p.name!r} stream different sequences")
    owners: dict[str, list[tuple[int, Reducer]]] = {}
    for i, p in enumerate(passes):
        for name, reducer in p.reducers.items():
            owners.setdefault(name, []).append((i, reducer))

    def combined(rs: list[tuple[int, Reducer]]) -> Reducer:
        return lambda act, batch: [r(act, batch) for _, r in rs]

    reducers = {name: combined(rs) for name, rs in owners.items()}
    for batch, out in stream(model, seqs, reducers, batch_size=batch_size, progress=progress, fwd_hooks=fwd_hooks):
        per: list[dict[str, Any]] = [{} for _ in passes]
        for name, values in out.items():
            for (i, _), value in zip(owners[name], values):
                per[i][name] = value
        for p, values in zip(passes, per):
            p.consume(batch, values)
