"""The residual identity: do a block's hooks add up to what the block adds to the residual stream?

Attributing a defect to a block's attention and FFN (:mod:`sd_lens.analyses.attribution`) reads what
each sublayer adds from ``blocks.l.hook_attn_out`` and ``blocks.l.hook_mlp_out``. That is only right
when, at every block and token,

    resid_pre + attn_out + mlp_out = resid_post        and        resid_pre + attn_out = resid_mid

(the second where the block is sequential: parallel blocks, GPT-NeoX/Pythia, have no ``resid_mid``).
A bridge can name something else ``hook_attn_out`` (Gemma's sublayers are followed by a post-norm:
the value added is the post-norm's output, and a hook on the sublayer's own output would miss it by
orders of magnitude), or a hook can be edited; this module checks the identity on real text instead
of assuming it.

**Tolerance, from the dtype and the magnitudes.** The model adds ``pre + attn (+ mlp)`` in its own
dtype; each addition rounds every entry by up to ``eps/2`` of its size, so the hooks may miss the
exact sum by ``eps/2 · (‖pre‖ + ‖attn‖ + ‖mlp‖)``; twice that is allowed. Errors are relative to the
residual's norm there (the larger of ``‖resid_pre‖`` and ``‖resid_post‖``, at least 1), and the
identity holds when every token's error is within that rounding allowance plus ``rtol`` (default
``4 · eps`` of the dtype: 4.8e-7 in float32, 0.031 in bfloat16).

**Which hook carries what.** Where the identity fails, one text is re-run keeping every hook of the
failing blocks, and each hook's value is compared with what the block really adds — the attention's
``resid_mid - resid_pre`` and the FFN's ``resid_post - resid_mid`` (their sum on parallel blocks) — so
the message names the hooks that carry the added values (e.g. ``blocks.3.ln1_post.hook_out``) and by
how much the named hook misses.

:func:`closure` is the arithmetic, shared with the attribution's own check on its carriers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from sd_lens.corpus import default_corpus
from sd_lens.errors import InputError, UnsupportedArchitectureError
from sd_lens.models.metadata import model_dtype, model_name
from sd_lens.runtime.engine import Batch, run, stream
from sd_lens.runtime.hooks import act_name, require_hooks
from sd_lens.runtime.reducers import first_row, keep
from sd_lens.runtime.tokens import Tokenized, tokenize
from sd_lens.types import HookedModel

__all__ = ["Closure", "ResidualIdentity", "closure", "residual_identity"]

#: diagnose at most this many failing blocks (each is one forward of one text)
MAX_DIAGNOSED = 4


@dataclass(frozen=True, eq=False)
class Closure:
    """The identity's errors on some tokens: every tensor has their shape (``[...]``).

    ``post_error = ‖pre + attn + mlp - post‖ / scale``; ``mid_error = ‖pre + attn - mid‖ / scale``
    (None for parallel blocks); ``rounding``: what rounding the additions in the model's dtype allows,
    on the same scale; ``scale = max(‖pre‖, ‖post‖, 1)``.
    """

    scale: Tensor
    rounding: Tensor
    post_error: Tensor
    mid_error: Tensor | None

    def _errors(self) -> list[Tensor]:
        return [self.post_error] + ([] if self.mid_error is None else [self.mid_error])

    def error(self) -> float:
        """The largest relative error (0 on no tokens)."""
        if self.post_error.numel() == 0:
            return 0.0
        return max(float(e.amax()) for e in self._errors())

    def excess(self) -> float:
        """The largest relative error beyond the rounding allowance (0 on no tokens)."""
        if self.post_error.numel() == 0:
            return 0.0
        return max(float((e - self.rounding).amax()) for e in self._errors())

    def holds(self, rtol: float) -> bool:
        return self.excess() <= rtol


def closure(
    pre: Tensor, attn: Tensor, mlp: Tensor, post: Tensor, mid: Tensor | None = None, *, eps: float
) -> Closure:
    """The identity's relative errors for activations ``[..., d_model]`` (compute in float64)."""
    scale = torch.maximum(pre.norm(dim=-1), post.norm(dim=-1)).clamp(min=1.0)
    # Rounding: the model adds pre + attn (+ ffn) in its own dtype, each addition rounding every entry by up
    # to eps/2 of its size, so the sum may miss the exact one by eps/2·(‖pre‖ + ‖attn‖ + ‖ffn‖) (twice that
    # allowed). Negligible next to a float32 tolerance; it is what half precision needs.
    rounding = eps * (pre.norm(dim=-1) + attn.norm(dim=-1) + mlp.norm(dim=-1)) / scale
    post_error = (pre + attn + mlp - post).norm(dim=-1) / scale
    mid_error = None if mid is None else (pre + attn - mid).norm(dim=-1) / scale
    return Closure(scale, rounding, post_error, mid_error)


@dataclass(frozen=True, eq=False)
class ResidualIdentity:
    """Whether ``resid_pre + attn_out (+ mlp_out) = resid_post`` (and ``= resid_mid`` after the attention)
    holds at every block of a model on some texts.

    Attributes:
        error: float32 ``[n_layers]``: each block's largest relative error over the tokens (both identities).
        excess: float32 ``[n_layers]``: the same beyond the rounding allowance; the identity holds where it
            is at most ``rtol``.
        failing: the blocks where it does not hold.
        diagnosis: for the first failing blocks, which hooks carry the values the block adds.
    """

    model: str
    n_layers: int
    parallel: bool
    dtype: str
    eps: float
    rtol: float
    n_texts: int
    n_tokens: int
    error: Tensor
    excess: Tensor
    failing: list[int]
    diagnosis: dict[int, str]
    seconds: float = 0.0

    @property
    def holds(self) -> bool:
        return not self.failing

    @property
    def max_error(self) -> float:
        return float(self.error.max()) if self.error.numel() else 0.0

    def message(self) -> str:
        """One sentence when it holds; otherwise the failing blocks and what carries what."""
        what = "resid_pre + hook_attn_out + hook_mlp_out = resid_post" + (
            "" if self.parallel else " and resid_pre + hook_attn_out = resid_mid"
        )
        if self.holds:
            return (f"{what} at every block (largest relative error {self.max_error:.2g}, tolerance {self.rtol:.2g} "
                    f"plus the {self.dtype} rounding of the additions; {self.n_tokens} tokens)")
        lines = [
            f"{what} fails at block(s) {', '.join(map(str, self.failing))} (relative error up to "
            f"{float(self.excess.max()):.3g} beyond the {self.dtype} rounding, tolerance {self.rtol:.2g}): the hooks do "
            "not carry what the blocks add to the residual stream, so a sublayer attribution from them would be wrong"
        ]
        lines += [f"  block {b}: {text}" for b, text in sorted(self.diagnosis.items())]
        return "\n".join(lines)

    def require(self) -> None:
        """Raise :class:`~sd_lens.errors.UnsupportedArchitectureError` with :meth:`message` unless it holds."""
        if not self.holds:
            raise UnsupportedArchitectureError(self.message())

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "holds": self.holds,
            "parallel": self.parallel,
            "dtype": self.dtype,
            "rtol": float(f"{self.rtol:.3g}"),
            "n_texts": self.n_texts,
            "n_tokens": self.n_tokens,
            "max_error": float(f"{self.max_error:.3g}"),
            "error": [float(f"{float(x):.3g}") for x in self.error],
            "failing": list(self.failing),
            "diagnosis": {str(b): t for b, t in sorted(self.diagnosis.items())},
            "seconds": round(self.seconds, 3),
        }


def _kinds(parallel: bool) -> list[str]:
    return ["resid_pre", "attn_out", "mlp_out", "resid_post"] + ([] if parallel else ["resid_mid"])


def _block_reducers(n_layers: int, parallel: bool, eps: float) -> dict[str, Any]:
    """One reducer per hook; the last of a block's hooks to fire (in any order) returns the block's
    ``[B, 4]`` maxima over real tokens: post error, mid error, and both beyond the rounding allowance."""
    kinds = _kinds(parallel)
    held: dict[tuple[int, str], dict[str, Tensor]] = {}  # by block and device (a shape-only check runs twice)

    def make(layer: int, kind: str) -> Any:
        def reduce(act: Tensor, batch: Batch) -> Tensor | None:
            key = (layer, str(act.device))
            mine = held.setdefault(key, {})
            mine[kind] = act.double()
            if len(mine) < len(kinds):
                return None
            del held[key]
            c = closure(mine["resid_pre"], mine["attn_out"], mine["mlp_out"], mine["resid_post"],
                        mine.get("resid_mid"), eps=eps)
            real = batch.mask
            mid = c.mid_error if c.mid_error is not None else torch.zeros_like(c.post_error)
            parts = torch.stack([c.post_error, mid, c.post_error - c.rounding, mid - c.rounding], dim=-1)
            parts = torch.where(real[..., None], parts, torch.full_like(parts, -torch.inf))
            return parts.amax(dim=1)  # [B, 4]

        return reduce

    return {act_name(kind, layer): make(layer, kind) for layer in range(n_layers) for kind in kinds}


def _diagnose(model: HookedModel, tokens: Tensor, layer: int, parallel: bool, rtol: float) -> str:
    """Which hooks of block ``layer`` carry what it adds, on one text."""
    prefix = f"blocks.{layer}."
    # the outputs of the block's modules (they fire whenever the module runs) and the residual hooks
    names = [
        n for n in model.hook_dict
        if n.startswith(prefix) and n.endswith(("hook_out", "hook_attn_out", "hook_mlp_out", "hook_resid_pre",
                                                 "hook_resid_mid", "hook_resid_post"))
    ]
    try:
        vals = run(model, tokens, {n: first_row(keep) for n in names}, stop_at_layer=layer + 1)
    except UnsupportedArchitectureError:  # some module of the block does not run: read the hooks one by one
        vals = {}
        for n in names:
            try:
                vals.update(run(model, tokens, {n: first_row(keep)}, stop_at_layer=layer + 1))
            except UnsupportedArchitectureError:
                continue
    pre, post = vals[act_name("resid_pre", layer)].double(), vals[act_name("resid_post", layer)].double()
    d = pre.shape[-1]
    if parallel:
        added = {"the attention and FFN together (resid_post - resid_pre)": (post - pre, ["attn_out", "mlp_out"])}
    else:
        mid = vals[act_name("resid_mid", layer)].double()
        added = {
            "the attention (resid_mid - resid_pre)": (mid - pre, ["attn_out"]),
            "the FFN (resid_post - resid_mid)": (post - mid, ["mlp_out"]),
        }
    residual = {act_name(k, layer) for k in ("resid_pre", "resid_mid", "resid_post")}
    out = []
    for what, (target, named) in added.items():
        size = target.norm(dim=-1).clamp(min=1e-12)

        def miss(v: Tensor) -> float:
            return float(((v.double() - target).norm(dim=-1) / size).amax())

        if parallel:
            named_value = vals[act_name("attn_out", layer)].double() + vals[act_name("mlp_out", layer)].double()
            named_text = "hook_attn_out + hook_mlp_out"
        else:
            named_value = vals[act_name(named[0], layer)].double()
            named_text = act_name(named[0], layer)
        carriers = [
            n for n, v in vals.items()
            if n not in residual and isinstance(v, Tensor) and v.shape == target.shape and v.shape[-1] == d
            and miss(v) <= max(rtol, 1e-6) * 10
        ]
        out.append(
            f"{what} is carried by {', '.join(carriers) if carriers else 'no hook of the block'}; "
            f"{named_text} misses it by {miss(named_value):.3g} relative"
        )
    return "; ".join(out)


def residual_identity(
    model: HookedModel,
    texts: Sequence[str] | Tokenized | None = None,
    *,
    rtol: float | None = None,
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
) -> ResidualIdentity:
    """Check ``resid_pre + attn_out (+ mlp_out) = resid_post`` at every block on ``texts``.

    Args:
        model: a TransformerLens model (:func:`sd_lens.load_model`).
        texts: strings, a :class:`~sd_lens.runtime.tokens.Tokenized`, or None for the first 8 texts of
            :func:`~sd_lens.corpus.default_corpus` (the identity is a property of the hooks, not of the text).
        rtol: tolerance beyond the rounding allowance (None: ``4 · eps`` of the model's dtype).
        batch_size, max_tokens_per_text: as everywhere.

    Returns a result whether or not the identity holds; :meth:`ResidualIdentity.require` raises when not.
    """
    t0 = time.perf_counter()
    dtype = model_dtype(model)
    eps = float(torch.finfo(getattr(torch, dtype)).eps)
    if rtol is None:
        rtol = 4 * eps
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not (rtol >= 0 and rtol < float("inf")):
        raise InputError(f"rtol must be a non-negative number, got {rtol!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    n_layers = int(model.cfg.n_layers)
    parallel = act_name("resid_mid", 0) not in model.hook_dict
    require_hooks(model, [act_name(k, layer) for layer in range(n_layers) for k in _kinds(parallel)])
    tok = texts if isinstance(texts, Tokenized) else tokenize(
        model, default_corpus(8) if texts is None else texts, max_tokens_per_text=max_tokens_per_text
    )
    reducers = _block_reducers(n_layers, parallel, eps)
    worst = torch.full((n_layers, 4), -torch.inf, dtype=torch.float64)
    for _, values in stream(model, tok.sequences, reducers, batch_size=batch_size):
        for layer in range(n_layers):
            got = [v for k in _kinds(parallel) if (v := values[act_name(k, layer)]) is not None]
            worst[layer] = torch.maximum(worst[layer], got[0].amax(dim=0))
    worst = worst.clamp(min=0.0)
    error = worst[:, :2].amax(dim=1)
    excess = worst[:, 2:].amax(dim=1)
    failing = [layer for layer in range(n_layers) if float(excess[layer]) > rtol]
    diagnosis = {
        layer: _diagnose(model, tok.sequences[0], layer, parallel, rtol) for layer in failing[:MAX_DIAGNOSED]
    }
    return ResidualIdentity(
        model=model_name(model), n_layers=n_layers, parallel=parallel, dtype=dtype, eps=eps, rtol=float(rtol),
        n_texts=len(tok.sequences), n_tokens=tok.n_tokens, error=error.float(), excess=excess.float(),
        failing=failing, diagnosis=diagnosis, seconds=time.perf_counter() - t0,
    )
