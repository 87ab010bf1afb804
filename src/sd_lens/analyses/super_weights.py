"""Super weights: the single down-projection entries that write (and cancel) a singular defect.

Yu et al., *The Super Weight in Large Language Models* (2024): one entry ``W_down[row, col]`` of an
early FFN's down-projection, whose input ``h[col]`` spikes on the initial token, writes the massive
activation of residual channel ``row``; zeroing that one weight destroys the model (Llama-7B: mean
zero-shot accuracy 70.12 → 35.15) while restoring the activation it wrote ("super activation") brings
most of it back. Their search is a fixed threshold (``|value| > 50``) on the max of the down-projection's
input and output on one prompt. Here it is data-driven, per singular defect of
:func:`~sd_lens.analyses.defects.find_defects`, on the defect's own carriers from the corpus:

* **Carriers.** The defect's carrier prefixes (:func:`~sd_lens.analyses.attribution.carrier_prefixes`:
  the initial token alone for an initial-token defect), re-run once, keeping at their last token the
  down-projection input ``h`` (``blocks.l.mlp.hook_post``) and the residual before and after every block.
* **Entries.** With ``W_out`` ``[d_mlp, d_model]`` of :func:`~sd_lens.models.view.model_view` (the paper's
  ``W_down[row, col] = W_out[col, row]``), entry ``(row, col)`` of block ``l`` adds
  ``f_row · h_col · W_down[row, col]`` to residual channel ``row``, where ``f`` is the post-FFN norm's
  effective factor (Gemma-3's sandwich norm: ``g / rms(y)`` of the FFN output ``y``; 1 without one,
  :func:`~sd_lens.analyses.life_cycle.ffn_output`). Its contribution to the defect is that times
  ``u[row]`` (``u`` the defect direction), averaged over the carriers. Every entry of every block is
  ranked by it: with a post-norm the ranking is by the *effective* contribution, after the norm's gain,
  not by the weight (Gemma-3's largest writer is a small weight that the norm multiplies by ~10⁵).
* **Emitters** are, per block up to the defect's peak, the entry that adds most along ``u`` when it adds
  at least ``min_share`` of the peak component; **cancellers**, per block after the peak (to the block
  after the defect's last), the entry that removes most, under the same rule. The **super weight** is
  the emitter with the largest contribution. Each entry reports its ``value``, its input ``spike``
  (``h_col`` at the carriers), the ``output`` it writes before any post-norm (``value · spike``), the
  norm's ``gain`` and its ``effective`` value, and its ``share`` of the carriers' change of channel
  ``row`` in that block.
* **Iterative search.** The super weight is zeroed (in the model's parameter, temporarily: the original
  tensor is put back bit for bit, also after an error), the carriers are probed again, and what emerges
  is reported: the peak component that remains, the new largest emitter, and each canceller's spike
  now — a canceller whose spike vanishes with the emitter is its *paired* late-layer weight.
* **Verification** (per super weight and per leading canceller), on held-out texts, as a
  :class:`~sd_lens.analyses.causal_score.CausalScore`: perplexity ratio and KL to the clean model with the
  entry zeroed, against zeroing ``n_seeds`` random entries of about the same magnitude in the same matrix
  (one per seed, the mean reported), plus the control that zeroes the weight but **restores its
  activation** (the entry still writes at the positions where its input spikes, at least
  ``restore_fraction`` of the carriers' spike): weight → activation → model, or something else. The
  perplexity and KL are those of :func:`~sd_lens.analyses.metrics.perplexity`, with every edit
  of one weight in the same forward as a single clean copy of the texts (rows ``[clean | zeroed | restored |
  control 1 | ...]``); the zeroing is applied as hooks on its rows (``y[..., row] -= h[..., col] ·
  W_down[row, col]`` at the down-projection's output, before any post-norm), the same function as the zeroed
  parameter up to float rounding.
* **Consistency** (:class:`Consistency`): super-weight row = the massive-activation channel (the largest
  ``|x|`` channel of the carriers at the peak) = the defect's dominant channel (largest ``|u|``);
  super-weight block = the explosion block, canceller blocks within the decay blocks; every mismatch
  in words (e.g. "build-up over blocks 4-8").

Reference: Yu et al., *The Super Weight in Large Language Models* (arXiv 2411.07191, 2024), §3.

Why one file over 600 lines: one job, the super weights of each defect: the search (emitters and
cancellers) and its verification share the carriers' trace and the in-place edit that must be undone.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Sequence

import torch
from torch import Tensor

from sd_lens.analyses.attribution import carrier_prefixes
from sd_lens.analyses.causal_score import INERT_KL, CausalScore
from sd_lens.analyses.defects import Defect, DefectReport
from sd_lens.analyses.life_cycle import ffn_output
from sd_lens.analyses.metrics import edited_perplexities
from sd_lens.analyses.probe import NormProbe
from sd_lens.corpus import held_out_texts
from sd_lens.errors import InputError, UnsupportedArchitectureError
from sd_lens.models.linears import linear_weights
from sd_lens.models.metadata import model_name
from sd_lens.models.registry import get_family
from sd_lens.models.view import model_view
from sd_lens.runtime.engine import stream
from sd_lens.runtime.hooks import act_name, require_hooks
from sd_lens.runtime.lock import model_lock
from sd_lens.runtime.reducers import last_token
from sd_lens.runtime.tokens import Tokenized, tokenize
from sd_lens.types import HookedModel, HookFn

__all__ = [
    "Consistency",
    "DefectSuperWeights",
    "Emergence",
    "SuperWeight",
    "SuperWeights",
    "Verification",
    "consistency",
    "down_entry",
    "super_weights",
    "zero_entry_hooks",
    "zeroed",
]

Role = Literal["emitter", "canceller"]


def _r(x: float | None, nd: int = 5) -> float | None:
    if x is None:
        return None
    return float(f"{x:.{nd}g}") if math.isfinite(x) else None


def _runs(blocks: Sequence[int]) -> str:
    """``[3, 4, 5, 8]`` -> ``"3-5, 8"``."""
    out: list[list[int]] = []
    for b in sorted(set(blocks)):
        if out and b == out[-1][1] + 1:
            out[-1][1] = b
        else:
            out.append([b, b])
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in out)


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Verification:
    """A weight's removal on held-out text, with its controls.

    ``score``: zeroing the weight against zeroing random entries of the same magnitude in the same
    matrix (``control_*`` of the score: the mean over ``n_seeds`` seeds; ``controls``: each seed's
    ``(row, col, value, perplexity ratio, KL)``). ``restore``: zeroing the weight but restoring the
    activation it writes where its input spikes (perplexity ratio, KL); ``restored_positions`` how many
    positions were restored. ``clean_perplexity``: of the held-out texts.
    """

    score: CausalScore
    controls: list[tuple[int, int, float, float, float]]
    restore_ppl_ratio: float
    restore_kl: float
    restored_positions: int
    clean_perplexity: float
    perplexity: float
    n_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score.to_dict(),
            "clean_perplexity": _r(self.clean_perplexity, 6),
            "perplexity": _r(self.perplexity, 6),
            "controls": [{"row": r, "col": c, "value": _r(v), "ppl_ratio": _r(p, 6), "kl": _r(k)}
                         for r, c, v, p, k in self.controls],
            "restore_ppl_ratio": _r(self.restore_ppl_ratio, 6),
            "restore_kl": _r(self.restore_kl),
            "restored_positions": self.restored_positions,
            "n_tokens": self.n_tokens,
        }


@dataclass(frozen=True, eq=False)
class SuperWeight:
    """One down-projection entry ``W_down[row, col]`` of ``block`` that writes (or cancels) a defect.

    ``value``: the weight; ``spike``: its input ``h_col`` at the carriers (mean); ``output``:
    ``value · spike``, what it writes before any post-norm; ``norm_scale``: the post-FFN norm's scale of
    channel ``row`` (None without a post-norm); ``gain``: the norm's effective factor ``g / rms(y)`` at the
    carriers (1 without one); ``effective``: ``gain · output``, what reaches the residual; ``along``: that
    times the direction's ``u[row]`` (its contribution to the defect); ``share``: ``effective`` over the
    carriers' change of channel ``row`` in this block; ``peak_share``: ``along`` over the defect's peak
    component. ``iteration``: the search round that found it (0: the clean model). ``verification``:
    when verified.
    """

    block: int
    row: int
    col: int
    role: Role
    value: float
    spike: float
    output: float
    norm_scale: float | None
    gain: float
    effective: float
    along: float
    share: float
    peak_share: float
    iteration: int = 0
    verification: Verification | None = None

    @property
    def name(self) -> str:
        return f"W[{self.row},{self.col}]@{self.block}"

    @property
    def score(self) -> CausalScore | None:
        return None if self.verification is None else self.verification.score

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "block": self.block,
            "row": self.row,
            "col": self.col,
            "role": self.role,
            "iteration": self.iteration,
            "value": _r(self.value),
            "spike": _r(self.spike),
            "output": _r(self.output),
            "norm_scale": _r(self.norm_scale),
            "gain": _r(self.gain),
            "effective": _r(self.effective),
            "along": _r(self.along),
            "share": _r(self.share, 4),
            "peak_share": _r(self.peak_share, 4),
            **({"verification": self.verification.to_dict()} if self.verification is not None else {}),
        }


@dataclass(frozen=True, eq=False)
class Emergence:
    """One round of the iterative search: the weights zeroed so far, the defect's peak component that
    remains (``peak_ratio``: over the clean one), the largest emitter now (None when none adds
    ``min_share`` of the clean peak) and the spike of each clean canceller now (``canceller_spikes``,
    by name: a spike that vanishes pairs the canceller with the zeroed emitters)."""

    iteration: int
    zeroed: list[str]
    peak_component: float
    peak_ratio: float
    emitter: SuperWeight | None
    canceller_spikes: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "zeroed": list(self.zeroed),
            "peak_component": _r(self.peak_component),
            "peak_ratio": _r(self.peak_ratio, 4),
            "emitter": None if self.emitter is None else self.emitter.to_dict(),
            "canceller_spikes": {k: _r(v) for k, v in self.canceller_spikes.items()},
        }


@dataclass(frozen=True, eq=False)
class Consistency:
    """Super weight against the defect: rows and blocks that agree, and the mismatches in words."""

    dominant_channel: int
    massive_channel: int
    super_row: int | None
    super_block: int | None
    explosion_layer: int
    decay_layers: list[int]
    emitter_blocks: list[int]
    canceller_blocks: list[int]
    mismatches: list[str]

    @property
    def rows_agree(self) -> bool:
        return self.super_row is not None and self.super_row == self.massive_channel == self.dominant_channel

    @property
    def blocks_agree(self) -> bool:
        return (self.super_block == self.explosion_layer and len(self.emitter_blocks) == 1
                and set(self.canceller_blocks) <= set(self.decay_layers))

    @property
    def agrees(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        rows = "rows agree" if self.rows_agree else "rows do not agree"
        blocks = "blocks agree" if self.blocks_agree else "blocks do not agree"
        tail = f": {'; '.join(self.mismatches)}" if self.mismatches else ""
        return f"{rows} (channel {self.dominant_channel}), {blocks}{tail}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "dominant_channel": self.dominant_channel,
            "massive_channel": self.massive_channel,
            "super_row": self.super_row,
            "super_block": self.super_block,
            "explosion_layer": self.explosion_layer,
            "decay_layers": list(self.decay_layers),
            "emitter_blocks": list(self.emitter_blocks),
            "canceller_blocks": list(self.canceller_blocks),
            "rows_agree": self.rows_agree,
            "blocks_agree": self.blocks_agree,
            "agrees": self.agrees,
            "mismatches": list(self.mismatches),
            "summary": self.summary(),
        }


@dataclass(frozen=True, eq=False)
class DefectSuperWeights:
    """The super weights of one defect: emitters (largest first), cancellers (largest removal first),
    the rounds of the iterative search and the consistency check. ``peak_layer`` / ``peak_component``:
    where the carriers' component along the direction is largest, and its value."""

    defect: int
    label: str
    n_carriers: int
    peak_layer: int
    peak_component: float
    emitters: list[SuperWeight]
    cancellers: list[SuperWeight]
    emergence: list[Emergence]
    consistency: Consistency

    @property
    def super_weight(self) -> SuperWeight | None:
        """The emitter with the largest contribution (None when no entry adds ``min_share`` of the peak)."""
        return self.emitters[0] if self.emitters else None

    @property
    def weights(self) -> list[SuperWeight]:
        """Emitters, cancellers and the emitters the iterative search found, each once."""
        out = [*self.emitters, *self.cancellers]
        names = {w.name for w in out}
        for e in self.emergence:
            if e.emitter is not None and e.emitter.name not in names:
                out.append(e.emitter)
                names.add(e.emitter.name)
        return out

    def summary(self) -> str:
        sw = self.super_weight
        if sw is None:
            return f"{self.label}: no single down-projection entry writes it; {self.consistency.summary()}."
        text = (f"{self.label}: super weight {sw.name} = {sw.value:.4g}, spike {sw.spike:.4g}, writes "
                f"{sw.output:.4g}")
        if sw.norm_scale is not None:
            text += f" (post-FFN norm gain {sw.gain:.4g}: effective {sw.effective:.4g})"
        text += f", {100 * sw.share:.0f}% of channel {sw.row}'s change in block {sw.block}"
        if sw.score is not None:
            v = sw.verification
            assert v is not None
            text += (f"; zeroed: perplexity x{sw.score.ppl_ratio:.4g}, KL {sw.score.kl:.3g} ({sw.score.label}); "
                     f"random same-size entries x{sw.score.control_ppl_ratio or 1.0:.4g}; "
                     f"restoring its activation x{v.restore_ppl_ratio:.4g}")
        if self.cancellers:
            c = self.cancellers[0]
            text += f"; cancelled by {c.name} ({100 * c.share:.0f}% of block {c.block}'s change)"
        return text + f"; {self.consistency.summary()}."

    def to_dict(self) -> dict[str, Any]:
        sw = self.super_weight
        return {
            "defect": self.defect,
            "label": self.label,
            "n_carriers": self.n_carriers,
            "peak_layer": self.peak_layer,
            "peak_component": _r(self.peak_component),
            "super_weight": None if sw is None else sw.name,
            "emitters": [w.to_dict() for w in self.emitters],
            "cancellers": [w.to_dict() for w in self.cancellers],
            "emergence": [e.to_dict() for e in self.emergence],
            "consistency": self.consistency.to_dict(),
            "summary": self.summary(),
        }


@dataclass(frozen=True, eq=False)
class SuperWeights:
    """The super weights of every major defect (iterate for the defects)."""

    model: str
    n_layers: int
    min_share: float
    n_seeds: int
    restore_fraction: float
    held_out_texts: int
    defects: list[DefectSuperWeights]
    seconds: float = field(default=0.0)

    def __len__(self) -> int:
        return len(self.defects)

    def __iter__(self) -> Iterator[DefectSuperWeights]:
        return iter(self.defects)

    def __getitem__(self, i: int) -> DefectSuperWeights:
        return self.defects[i]

    def scores(self) -> list[CausalScore]:
        """The causal score of every verified weight."""
        return [w.score for d in self.defects for w in d.weights if w.score is not None]

    def summary(self) -> str:
        return "\n".join(d.summary() for d in self.defects) or "no major defect"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n_layers": self.n_layers,
            "min_share": self.min_share,
            "n_seeds": self.n_seeds,
            "restore_fraction": self.restore_fraction,
            "held_out_texts": self.held_out_texts,
            "defects": [d.to_dict() for d in self.defects],
            "seconds": round(self.seconds, 3),
        }


# ------------------------------------------------------------------------------------------------
# the down-projection's parameter, and zeroing entries of it
# ------------------------------------------------------------------------------------------------
def _down_linears(model: HookedModel) -> dict[int, Any]:
    # the parameters the forward computes with
    return {b: lins[0] for (b, site), lins in linear_weights(model).items() if site == "down"}


def _index(lin: Any, row: int, col: int) -> tuple[int, int]:
    """The parameter's index of ``W_down[row, col]`` (row: residual channel, col: hidden neuron)."""
    return (row, col) if lin.in_axis == 1 else (col, row)


def down_entry(model: HookedModel, block: int, row: int, col: int) -> float:
    """``W_down[row, col]`` of ``block`` as the forward uses it (row: residual channel, col: FFN neuron)."""
    lin = _down_linears(model)[block]
    return float(lin.param.detach()[_index(lin, row, col)])


@contextmanager
def zeroed(model: HookedModel, entries: Sequence[tuple[int, int, int]]) -> Iterator[None]:
    """Zero the down-projection entries ``(block, row, col)`` inside the block; on exit (also after an
    exception) every parameter gets its original tensor back, bit for bit."""
    lins = _down_linears(model)
    by_block: dict[int, list[tuple[int, int]]] = {}
    for b, r, c in entries:
        if b not in lins:
            raise InputError(f"block {b!r} does not exist")
        by_block.setdefault(b, []).append((r, c))
    originals: list[tuple[torch.nn.Parameter, Tensor]] = []
    with model_lock(model):
        try:
            with torch.no_grad():
                for b, rc in by_block.items():
                    lin = lins[b]
                    data = lin.param.data
                    new = data.clone()
                    for r, c in rc:
                        new[_index(lin, r, c)] = 0
                    originals.append((lin.param, data))
                    lin.param.data = new
            yield
        finally:
            with torch.no_grad():
                for param, data in reversed(originals):
                    param.data = data


def _down_out_hook(model: HookedModel, block: int) -> str:
    """The hook point of the down-projection's output, before any post-FFN norm."""
    name = f"blocks.{block}.mlp.out.hook_out"
    if name in model.hook_dict:
        return name
    if not get_family(model).post_norms:
        return act_name("mlp_out", block)
    raise UnsupportedArchitectureError(
        "this model has no hook on the down-projection's output before its post-FFN norm (a TransformerBridge has)"
    )


def zero_entry_hooks(
    model: HookedModel, block: int, row: int, col: int, value: float, *, restore_above: float | None = None,
    tally: list[int] | None = None,
) -> list[tuple[str, HookFn]]:
    """Hooks computing the forward with ``W_down[row, col]`` of ``block`` zeroed: ``h[..., col]`` is read at
    the down-projection's input and ``h[..., col] · value`` subtracted from its output channel ``row``
    (before any post-norm). ``restore_above``: keep the entry's output where ``|h[..., col]|`` is at least
    this (the "restore the activation" control); ``tally[0]`` counts those positions."""
    seen: dict[str, Tensor] = {}

    def read(act: Tensor, hook: Any) -> Tensor:
        seen["h"] = act[..., col].detach()
        return act

    def subtract(act: Tensor, hook: Any) -> Tensor:
        h = seen.pop("h").to(act.device)
        delta = h.float() * value
        if restore_above is not None:
            keep = h.abs() >= restore_above
            if tally is not None:
                tally[0] += int(keep.sum())
            delta = torch.where(keep, torch.zeros_like(delta), delta)
        out = act.clone()
        out[..., row] = (out[..., row].float() - delta).to(act.dtype)
        return out

    return [(act_name("post", block, "mlp"), read), (_down_out_hook(model, block), subtract)]


# ------------------------------------------------------------------------------------------------
# the carriers' states and every entry's contribution
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _States:
    hidden: dict[int, Tensor]  # [K, d_mlp] per block
    pre: Tensor  # [K, n_layers, d_model] resid_pre of each block
    post: Tensor  # [K, n_layers, d_model] resid_post


def _carrier_states(model: HookedModel, prefixes: list[Tensor], blocks: list[int], batch_size: int) -> _States:
    n_layers, d_model, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_model), int(model.cfg.d_mlp)
    names = {b: (act_name("post", b, "mlp"), act_name("resid_pre", b), act_name("resid_post", b)) for b in blocks}
    require_hooks(model, [n for t in names.values() for n in t])
    k = len(prefixes)
    hidden = {b: torch.zeros(k, d_mlp) for b in blocks}
    pre = torch.zeros(k, n_layers, d_model)
    post = torch.zeros(k, n_layers, d_model)
    reducers = {n: last_token for t in names.values() for n in t}
    for batch, values in stream(model, prefixes, reducers, batch_size=batch_size):
        for b, (h, a, z) in names.items():
            hidden[b][batch.index] = values[h].float().cpu()
            pre[batch.index, b] = values[a].float().cpu()
            post[batch.index, b] = values[z].float().cpu()
    return _States(hidden, pre, post)


def _best_entry(
    model: HookedModel, view: Any, states: _States, block: int, u: Tensor, adding: bool, peak: float, role: Role,
    iteration: int,
) -> SuperWeight:
    """The entry of ``block`` that adds most (``adding``) or removes most along ``u`` at the carriers."""
    bv = view.block(block).to("cpu")
    h = states.hidden[block].double()  # [K, d_mlp]
    _, factor, _ = ffn_output(bv, h)  # [K, d_model]
    k = h.shape[0]
    hf = h.T @ factor / k  # [d_mlp, d_model]: mean over carriers of h_col * f_row
    contrib = bv.W_out.double() * hf  # effective, per (col, row)
    along = contrib * u.double()[None, :]
    flat = along.flatten()
    i = int(flat.argmax() if adding else flat.argmin())
    col, row = divmod(i, along.shape[1])
    value = float(bv.W_out[col, row])
    spike = float(h[:, col].mean())
    gain = float(factor[:, row].mean())
    change = float((states.post[:, block, row] - states.pre[:, block, row]).double().mean())
    eff = float(contrib[col, row])
    return SuperWeight(
        block=block, row=row, col=col, role=role, value=value, spike=spike, output=value * spike,
        norm_scale=None if bv.mlp_post_scale is None else float(bv.mlp_post_scale[row]), gain=gain,
        effective=eff, along=float(along[col, row]), share=eff / change if change else 0.0,
        peak_share=float(along[col, row]) / peak if peak else 0.0, iteration=iteration,
    )


def _component(states: _States, u: Tensor) -> Tensor:
    """Mean carrier component along ``u`` after each block: [n_layers]."""
    return (states.post.double() @ u.double()).mean(0)


def _search(
    model: HookedModel, d: Defect, states: _States, u: Tensor, peak: float, peak_layer: int, min_share: float,
    iteration: int,
) -> tuple[list[SuperWeight], list[SuperWeight]]:
    view = model_view(model)  # a fresh view: the weights may be zeroed
    n_layers = int(model.cfg.n_layers)
    before = list(range(0, peak_layer + 1))
    after = list(range(peak_layer + 1, min(d.last_layer + 1, n_layers - 1) + 1)) if iteration == 0 else []
    emitters = [w for b in before
                if (w := _best_entry(model, view, states, b, u, True, peak, "emitter", iteration)).along
                >= min_share * peak]
    cancellers = [w for b in after
                  if (w := _best_entry(model, view, states, b, u, False, peak, "canceller", iteration)).along
                  <= -min_share * peak]
    emitters.sort(key=lambda w: -w.along)
    cancellers.sort(key=lambda w: w.along)
    return emitters, cancellers


# ------------------------------------------------------------------------------------------------
# consistency
# ------------------------------------------------------------------------------------------------
def consistency(
    d: Defect, emitters: Sequence[SuperWeight], cancellers: Sequence[SuperWeight], massive_channel: int
) -> Consistency:
    """Compare a defect's super weights with the defect (see :class:`Consistency`); mismatches in words."""
    dominant = int(d.direction.abs().argmax())
    sw = emitters[0] if emitters else None
    e_blocks = sorted({w.block for w in emitters})
    c_blocks = sorted({w.block for w in cancellers})
    out: list[str] = []
    if sw is None:
        out.append("no single down-projection entry writes it")
    else:
        if sw.row != dominant:
            out.append(f"the super weight writes channel {sw.row}, the defect's dominant channel is {dominant}")
        if massive_channel != dominant:
            out.append(f"the massive activation is in channel {massive_channel}, the dominant channel is {dominant}")
        if len(e_blocks) > 1:
            out.append(f"build-up over blocks {_runs(e_blocks)} (largest single weight at block {sw.block}, "
                       f"explosion block {d.explosion_layer})")
        elif sw.block != d.explosion_layer:
            out.append(f"the super weight is at block {sw.block}, the explosion block is {d.explosion_layer}")
    if cancellers:
        stray = [b for b in c_blocks if b not in d.decay_layers]
        if stray:
            out.append(f"cancelled at block{'s' if len(stray) > 1 else ''} {_runs(stray)}, outside the decay blocks "
                       f"({_runs(d.decay_layers) or 'none'})")
    elif d.decay_layers:
        out.append(f"no single weight cancels it at the decay blocks {_runs(d.decay_layers)}")
    return Consistency(
        dominant_channel=dominant, massive_channel=int(massive_channel), super_row=None if sw is None else sw.row,
        super_block=None if sw is None else sw.block, explosion_layer=d.explosion_layer,
        decay_layers=list(d.decay_layers), emitter_blocks=e_blocks, canceller_blocks=c_blocks, mismatches=out,
    )


# ------------------------------------------------------------------------------------------------
# verification
# ------------------------------------------------------------------------------------------------
def _controls(model: HookedModel, w: SuperWeight, exclude: set[tuple[int, int, int]], n_seeds: int,
              seed: int) -> list[tuple[int, int, float]]:
    """``n_seeds`` entries of the same matrix nearest in magnitude to ``w`` (drawn among the ``8 n_seeds``
    nearest, none of ``exclude``), as ``(row, col, value)``."""
    lin = _down_linears(model)[w.block]
    m = lin.param.detach().float().cpu()
    mat = m if lin.in_axis == 1 else m.T  # [d_model (row), d_mlp (col)]
    dist = (mat.abs() - abs(down_entry(model, w.block, w.row, w.col))).abs().flatten()
    for b, r, c in exclude:
        if b == w.block:
            dist[r * mat.shape[1] + c] = math.inf
    pool = torch.argsort(dist, stable=True)[: 8 * n_seeds]
    g = torch.Generator().manual_seed(seed)
    pick = pool[torch.randperm(len(pool), generator=g)[:n_seeds]]
    return [(int(i) // mat.shape[1], int(i) % mat.shape[1], float(mat.flatten()[i])) for i in pick]


def _verify(model: HookedModel, w: SuperWeight, held: Tokenized, exclude: set[tuple[int, int, int]], n_seeds: int,
            seed: int, restore_fraction: float, batch_size: int) -> Verification:
    value = down_entry(model, w.block, w.row, w.col)
    picks = _controls(model, w, exclude, n_seeds, seed)
    tally = [0]
    edits = [
        zero_entry_hooks(model, w.block, w.row, w.col, value),
        zero_entry_hooks(model, w.block, w.row, w.col, value, restore_above=restore_fraction * abs(w.spike),
                         tally=tally),
        *[zero_entry_hooks(model, w.block, r, c, v) for r, c, v in picks],
    ]
    clean_p, edited = edited_perplexities(model, held, edits, batch_size=batch_size)  # one clean copy per forward
    clean = clean_p.perplexity
    runs = [(p.perplexity, float(p.kl or 0.0)) for p in edited]
    (ppl, kl), (r_ppl, r_kl) = runs[0], runs[1]
    controls = [(r, c, v, p / clean, k) for (r, c, v), (p, k) in zip(picks, runs[2:])]
    score = CausalScore(
        w.name, ppl_ratio=ppl / clean, kl=kl,
        control_ppl_ratio=sum(c[3] for c in controls) / len(controls) if controls else None,
        control_kl=sum(c[4] for c in controls) / len(controls) if controls else None, inert_kl=INERT_KL,
    )
    n_tokens = sum(max(len(q) - 1, 0) for q in held.sequences)
    return Verification(
        score=score, controls=controls, restore_ppl_ratio=r_ppl / clean, restore_kl=r_kl,
        restored_positions=tally[0], clean_perplexity=clean, perplexity=ppl, n_tokens=n_tokens,
    )


def _with(w: SuperWeight, v: Verification | None) -> SuperWeight:
    from dataclasses import replace

    return replace(w, verification=v)


# ------------------------------------------------------------------------------------------------
# the analysis
# ------------------------------------------------------------------------------------------------
def super_weights(
    model: HookedModel,
    report: DefectReport,
    probe: NormProbe,
    held_out: Sequence[str] | None = None,
    *,
    max_carriers: int = 8,
    min_share: float = 0.05,
    iterations: int = 2,
    verify: bool = True,
    verify_cancellers: bool = True,
    n_seeds: int = 5,
    restore_fraction: float = 0.1,
    seed: int = 0,
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
) -> SuperWeights:
    """Find, probe iteratively and verify the super weights of every major defect (module docstring).

    Args:
        model: the model ``report`` and ``probe`` come from.
        report: :func:`~sd_lens.analyses.defects.find_defects` of ``probe``.
        probe: the :class:`~sd_lens.analyses.probe.NormProbe` (its sequences give the carriers).
        held_out: texts for the perplexity and KL (default: :func:`~sd_lens.corpus.held_out_texts` of the
            probe's texts, 48 lines that are not in it).
        max_carriers: carrier prefixes per defect.
        min_share: an entry is an emitter (canceller) when it adds (removes) at least this fraction of the
            defect's peak component at the carriers.
        iterations: rounds of the iterative search after the clean one (0: none).
        verify: measure perplexity and KL of the super weight and the leading canceller (with controls).
        verify_cancellers: verify the leading canceller too (False: the super weight only, half the forwards).
        n_seeds: random same-magnitude entries zeroed as the control, one per seed (at least 5 is the
            issue's protocol; any positive number is accepted).
        restore_fraction: the restore control keeps the entry's output where its input is at least this
            fraction of the carriers' spike.
        seed: seeds the controls' draw.
        batch_size, max_tokens_per_text: as everywhere.

    Raises:
        InputError: bad arguments, or a report of another model (before any forward).
    """
    import time

    t0 = time.perf_counter()
    for name, v in (("max_carriers", max_carriers), ("n_seeds", n_seeds), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise InputError(f"iterations must be a non-negative integer, got {iterations!r}")
    for name, f in (("min_share", min_share), ("restore_fraction", restore_fraction)):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0 < f < 1):
            raise InputError(f"{name} must be in (0, 1), got {f!r}")
    n_layers = int(model.cfg.n_layers)
    if report.n_layers != n_layers or probe.n_layers != n_layers:
        raise InputError(f"the model has {n_layers} blocks, the report {report.n_layers} and the probe "
                         f"{probe.n_layers}: give results of this model")
    _down_linears(model)  # an unsupported layout fails before any forward
    held_texts = held_out_texts(probe.texts) if held_out is None else list(held_out)
    held = tokenize(model, held_texts, max_tokens_per_text=max_tokens_per_text) if verify else None
    blocks = list(range(n_layers))
    out: list[DefectSuperWeights] = []
    with model_lock(model):
        for d in report:
            prefixes = carrier_prefixes(probe, d, max_carriers)
            if not prefixes:  # nothing to probe: report the defect with no weight
                out.append(DefectSuperWeights(
                    defect=d.index, label=d.label, n_carriers=0, peak_layer=d.peak_layer, peak_component=0.0,
                    emitters=[], cancellers=[], emergence=[], consistency=consistency(d, [], [], int(d.direction.abs().argmax())),
                ))
                continue
            u = d.direction.float().cpu()
            states = _carrier_states(model, prefixes, blocks, batch_size)
            comp = _component(states, u)
            lo, hi = d.first_layer, d.last_layer
            peak_layer = lo + int(comp[lo : hi + 1].argmax())
            peak = float(comp[peak_layer])
            # a peak component that is not positive has nothing to write or cancel
            emitters, cancellers = _search(model, d, states, u, peak, peak_layer, min_share, 0) if peak > 0 else ([], [])
            massive = int(states.post[:, peak_layer].mean(0).abs().argmax())
            check = consistency(d, emitters, cancellers, massive)
            # the iterative search: zero what was found, probe again, report what emerges
            rounds: list[Emergence] = []
            found = [(w.block, w.row, w.col, w.name) for w in emitters[:1]]
            for it in range(1, iterations + 1 if emitters else 1):
                with zeroed(model, [(b, r, c) for b, r, c, _ in found]):
                    st = _carrier_states(model, prefixes, blocks, batch_size)
                    comp_z = _component(st, u)
                    peak_z = float(comp_z[lo : hi + 1].max())
                    new, _ = _search(model, d, st, u, peak, peak_layer, min_share, it)
                new = [w for w in new if (w.block, w.row, w.col) not in {f[:3] for f in found}]
                spikes = {c.name: float(st.hidden[c.block][:, c.col].mean()) for c in cancellers}
                nxt = new[0] if new else None
                rounds.append(Emergence(it, [f[3] for f in found], peak_z, peak_z / peak if peak else math.nan, nxt,
                                        spikes))
                if nxt is None:
                    break
                found.append((nxt.block, nxt.row, nxt.col, nxt.name))
            if verify and held is not None:
                exclude = {(w.block, w.row, w.col) for w in [*emitters, *cancellers]}
                if emitters:
                    emitters[0] = _with(emitters[0], _verify(model, emitters[0], held, exclude, n_seeds, seed,
                                                             restore_fraction, batch_size))
                if cancellers and verify_cancellers:
                    cancellers[0] = _with(cancellers[0], _verify(model, cancellers[0], held, exclude, n_seeds, seed,
                                                                 restore_fraction, batch_size))
            out.append(DefectSuperWeights(
                defect=d.index, label=d.label, n_carriers=len(prefixes), peak_layer=peak_layer, peak_component=peak,
                emitters=emitters, cancellers=cancellers, emergence=rounds, consistency=check,
            ))
    return SuperWeights(
        model=model_name(model), n_layers=n_layers, min_share=float(min_share), n_seeds=n_seeds,
        restore_fraction=float(restore_fraction), held_out_texts=len(held_texts) if verify else 0, defects=out,
        seconds=time.perf_counter() - t0,
    )

