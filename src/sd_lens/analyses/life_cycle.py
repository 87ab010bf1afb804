"""Life cycle of each singular defect: the weights that write its outlier channel, the heads that read
it, and the blocks that cancel it — one result per defect, composed from the existing analyses.

An et al., *Systematic Outliers in Large Language Models* (ICLR 2025, §4 and their
``lifecycle_emergence.py`` / ``lifecycle_spread.py`` / ``lifecycle_disappearance.py``) follow an
activation outlier through three stages: it *emerges* in a few down-projection rows of an early FFN,
it *spreads* as the key that attention heads sink on, and it *disappears* when a late FFN writes the
opposite value into its channel. Here the stages are read per major defect of
:func:`~sd_lens.analyses.defects.find_defects` (Wang et al., *Demystifying Singular Defects in Large
Language Models*, ICML 2025), aligned with the defect's explosion and decay blocks, from results
that are already computed — nothing a result gives is recomputed:

* **Channels.** The residual channels that hold at least ``min_share`` of the direction's squared
  norm (:func:`~sd_lens.analyses.activation_outliers.defect_channels`), each with the blocks of the
  defect where one of its carriers is a massive activation in it at ``resid_post``
  (:class:`~sd_lens.analyses.activation_outliers.ActivationOutliers`, Sun et al.'s criterion; empty
  when the defect is large but not 1000x the median) and the defect that owns the channel
  (``channel_defects``). The **hand-over**: the channel holding most of the defect's own direction at
  each of its blocks (``Defect.block_directions``), as runs of blocks — a direction that turns
  moves from one channel to another.
* **Emergence.** The blocks of the explosion set of
  :class:`~sd_lens.analyses.attribution.ComponentAttribution` (the fewest blocks that build
  ``fraction`` of the peak component), at each the sublayer that adds more along the direction, and
  the FFN's down-projection rows (hidden neurons) that add most to the defect's channel there.
* **Spread.** Per block from the defect's first block to the block after its last, the sink heads
  of :class:`~sd_lens.analyses.attention_sinks.AttentionSinks` (Gu et al., ICLR 2025: mean sink
  score above ε) on its carriers: the initial token (``score``), or the noninitial carrier rows
  (their mean ``key_alpha``, over rows at least ``min_queries`` queries see). A key at block ``l``
  is the state after block ``l - 1``, so heads read a defect from the block after its first one.
* **Disappearance.** The decay blocks (``Defect.decay_layers``) and the **cancelling blocks**: the
  fewest blocks after the peak (up to the block after the defect's last) whose negative ``total``
  (attention + FFN along the direction) removes ``fraction`` of the peak component (the explosion
  set's rule, mirrored); at each the sublayer that removes more, and the down-projection rows that
  subtract most from the channel. ``cancelled_by`` is that sublayer at the block that removes most.

**Neuron contributions.** The carriers of the attribution (``DefectAttribution.carriers``) are run
once more through the runtime seam, keeping at their last token the down-projection input ``h``
(``blocks.l.mlp.hook_post``) and the FFN's output (``blocks.l.hook_mlp_out``) at the blocks asked
for. With ``W_out`` [d_mlp, d_model] and ``b_out`` of :func:`~sd_lens.models.view.model_view`, the
FFN writes ``y = h @ W_out + b_out`` and adds ``f * y`` to the residual, where ``f`` is the
post-FFN norm's effective factor (Gemma-3: ``g / rms(y)``, per carrier; 1 without a post-norm).
The contribution of neuron ``i`` to channel ``c`` is ``f_c * h_i * W_out[i, c]`` (mean over
carriers): over all neurons, plus ``f_c * b_out[c]``, it is exactly the value the FFN adds to
channel ``c`` (``closure_error`` checks the whole vector against ``hook_mlp_out``). The channel
studied at a block is the defect channel ``c`` through which the FFN moves the direction most,
``argmax d[c] * ffn[c]`` (emergence) or ``argmin`` (disappearance). Each top neuron says whether its
row is a peaked ``W_out`` row (:class:`~sd_lens.analyses.weight_outliers.WeightOutliers`) and whether
it is itself a massive activation of the down-projection input (``ActivationOutliers`` at
``mlp_post``); each block says whether the pre-FFN norm masks the channel and what gain the
post-FFN norm gives it.

Reference code: github.com/an-yongqi/systematic-outliers (read for the method; their layers and
channels are hand-picked per model, nothing here is).

Why one file over 600 lines: one job, a defect's life cycle; its three stages are read on the same
channels and the same explosion and decay blocks of the defect, from the same computed results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.analyses.activation_outliers import ActivationOutliers, defect_channels
from sd_lens.analyses.attention_sinks import AttentionSinks
from sd_lens.analyses.attribution import ComponentAttribution, DefectAttribution, explosion_set
from sd_lens.analyses.defects import Defect, DefectReport
from sd_lens.analyses.probe import NormProbe
from sd_lens.analyses.weight_outliers import WeightOutliers
from sd_lens.errors import InputError
from sd_lens.models.view import BlockView, model_view
from sd_lens.runtime.engine import stream
from sd_lens.runtime.hooks import act_name, require_hooks
from sd_lens.runtime.reducers import last_token
from sd_lens.types import HookedModel

__all__ = [
    "BlockStep",
    "ChannelUse",
    "DefectLifeCycle",
    "LifeCycle",
    "NeuronContribution",
    "SinkSpread",
    "SpreadHead",
    "ffn_output",
    "life_cycle",
    "neuron_contributions",
]

Sublayer = Literal["attn", "ffn"]


def _r(x: float, nd: int = 4) -> float:
    return float(f"{x:.{nd}g}") if math.isfinite(x) else x


def _runs(blocks: list[int]) -> str:
    """``[3, 4, 5, 8]`` -> ``"3-5, 8"``."""
    out: list[str] = []
    for b in sorted(blocks):
        if out and b == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{b}"
        else:
            out.append(str(b))
    return ", ".join(out)


def _main(step: "BlockStep", cover: float = 0.9, most: int = 3) -> list["NeuronContribution"]:
    """The step's leading neurons: until they cover ``cover`` of the channel's value, at most ``most``,
    none below a tenth of the first one's share."""
    out: list[NeuronContribution] = []
    for n in step.neurons[:most]:
        if out and (n.share < 0.1 * out[0].share or sum(x.share for x in out) >= cover):
            break
        out.append(n)
    return out


def _writers(step: "BlockStep") -> str:
    return ", ".join(f"{n.neuron} ({100 * n.share:.0f}%)" for n in _main(step))


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class NeuronContribution:
    """One down-projection row's contribution to a residual channel at one block (means over carriers).

    ``contribution = f_c * h_i * W_out[i, c]``: what neuron ``i`` adds to channel ``c`` of the
    residual (after the post-FFN norm's factor ``f_c``); ``activation``: ``h_i``; ``weight``:
    ``W_out[i, c]``; ``share``: ``contribution`` over the FFN's whole value in channel ``c``;
    ``weight_outlier``: row ``i`` is a peaked ``W_out`` row (``WeightOutliers``);
    ``massive_input``: ``h_i`` is a massive activation at ``mlp_post`` of this block (``ActivationOutliers``).
    """

    neuron: int
    contribution: float
    activation: float
    weight: float
    share: float
    weight_outlier: bool
    massive_input: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "neuron": self.neuron,
            "contribution": _r(self.contribution),
            "activation": _r(self.activation),
            "weight": _r(self.weight),
            "share": _r(self.share),
            "weight_outlier": self.weight_outlier,
            "massive_input": self.massive_input,
        }


@dataclass(frozen=True, eq=False)
class BlockStep:
    """One block of a defect's emergence or disappearance.

    ``attn``, ``ffn``: what each sublayer adds along the defect direction (the attribution's means);
    ``sublayer``: the one that adds more (emergence) or removes more (disappearance). ``channel``: the
    defect channel through which the FFN moves the direction most at this block; ``ffn_channel``: the
    value the FFN adds to it (after any post-norm), ``ffn_channel_pre_norm`` the same before the
    post-norm, ``post_factor`` the post-norm's mean effective factor for it (1 without a post-norm),
    ``bias`` the part of ``ffn_channel`` from ``b_out``. ``neurons``: the ``top_k`` rows that add most
    (emergence) or subtract most (disappearance), in that order. ``pre_ffn_scale``: the pre-FFN norm's
    effective (or, folded, proxy) scale of the channel, ``pre_ffn_masked`` whether it masks it;
    ``post_ffn_gain``: the post-FFN norm's ``|scale|`` of it (None without one), ``post_ffn_amplified``
    whether that is a ``WeightOutliers`` amplified channel.
    """

    block: int
    attn: float
    ffn: float
    sublayer: Sublayer
    channel: int
    ffn_channel: float
    ffn_channel_pre_norm: float
    post_factor: float
    bias: float
    neurons: list[NeuronContribution]
    pre_ffn_scale: float | None
    pre_ffn_masked: bool
    post_ffn_gain: float | None
    post_ffn_amplified: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "attn": _r(self.attn),
            "ffn": _r(self.ffn),
            "sublayer": self.sublayer,
            "channel": self.channel,
            "ffn_channel": _r(self.ffn_channel),
            "ffn_channel_pre_norm": _r(self.ffn_channel_pre_norm),
            "post_factor": _r(self.post_factor),
            "bias": _r(self.bias),
            "neurons": [n.to_dict() for n in self.neurons],
            "pre_ffn_scale": None if self.pre_ffn_scale is None else _r(self.pre_ffn_scale),
            "pre_ffn_masked": self.pre_ffn_masked,
            "post_ffn_gain": None if self.post_ffn_gain is None else _r(self.post_ffn_gain),
            "post_ffn_amplified": self.post_ffn_amplified,
        }


@dataclass(frozen=True, eq=False)
class ChannelUse:
    """One residual channel of a defect: its ``share`` of the direction's squared norm, the defect
    blocks where a carrier of the defect is a massive activation in it at ``resid_post``
    (``massive_blocks``), and the defect ``owner`` whose direction puts most on it among all defects
    (None when the channel is no massive-activation channel at all)."""

    channel: int
    share: float
    massive_blocks: list[int]
    owner: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "share": _r(self.share), "massive_blocks": list(self.massive_blocks),
                "owner": self.owner}


@dataclass(frozen=True, eq=False)
class SpreadHead:
    """A sink head on a defect's carriers: ``score`` is its mean sink score on them; ``carrier`` is
    ``"initial"`` or ``"noninitial"``."""

    block: int
    head: int
    score: float
    carrier: str

    def to_dict(self) -> dict[str, Any]:
        return {"block": self.block, "head": self.head, "score": _r(self.score), "carrier": self.carrier}


@dataclass(frozen=True, eq=False)
class SinkSpread:
    """Sink heads on a defect's carriers, per block of ``blocks`` (its first block to the one after its last).

    ``initial[i]`` / ``noninitial[i]``: how many heads of ``blocks[i]`` sink on the initial token /
    on the noninitial carriers (``[]`` when the defect has none). ``heads``: every such head,
    strongest first. ``first_block``: the first block with one (None when none).
    """

    blocks: list[int]
    initial: list[int]
    noninitial: list[int]
    heads: list[SpreadHead]
    epsilon: float

    @property
    def n_heads(self) -> int:
        return len(self.heads)

    @property
    def first_block(self) -> int | None:
        hit = [b for b, i, n in zip(self.blocks, self.initial or [0] * len(self.blocks),
                                    self.noninitial or [0] * len(self.blocks)) if i + n > 0]
        return hit[0] if hit else None

    def to_dict(self, top_k: int | None = None) -> dict[str, Any]:
        return {
            "blocks": list(self.blocks),
            "initial": list(self.initial),
            "noninitial": list(self.noninitial),
            "n_heads": self.n_heads,
            "first_block": self.first_block,
            "epsilon": self.epsilon,
            "heads": [h.to_dict() for h in (self.heads if top_k is None else self.heads[:top_k])],
        }


@dataclass(frozen=True, eq=False)
class DefectLifeCycle:
    """Emergence, spread and disappearance of one major defect (see the module docstring).

    ``explosion_layer`` and ``decay_layers`` are the defect finder's; ``explosion_set`` / ``reached``
    the attribution's; ``cancelling_set`` / ``cancel_reached`` the blocks (after ``peak_layer``) that
    remove ``fraction`` of the peak component and the fraction they remove. ``hand_over``: runs
    ``(channel, first block, last block)`` of the channel holding most of the defect's direction at
    each of its blocks. ``emergence`` / ``disappearance``: one :class:`BlockStep` per block of the
    explosion / cancelling set. ``cancelled_by``: the sublayer that removes more at the block that
    removes most (None when nothing cancels it).
    """

    defect: int
    label: str
    initial_token: bool
    noninitial_tokens: list[str]
    first_layer: int
    last_layer: int
    explosion_layer: int
    decay_layers: list[int]
    peak_layer: int
    peak_component: float
    channels: list[ChannelUse]
    hand_over: list[tuple[int, int, int]]
    explosion_set: list[int]
    reached: float
    emergence: list[BlockStep]
    spread: SinkSpread
    cancelling_set: list[int]
    cancel_reached: float
    disappearance: list[BlockStep]
    cancelled_by: Sublayer | None
    masked_before_ffn: dict[int, list[int]]
    fraction: float

    @property
    def channel(self) -> int:
        """The defect's main channel (largest share)."""
        return self.channels[0].channel

    @property
    def strongest_cancel(self) -> BlockStep | None:
        """The cancelling block whose total removes most."""
        return min(self.disappearance, key=lambda s: s.attn + s.ffn, default=None)

    def summary(self) -> str:
        """One plain-words paragraph: channels, emergence, spread, disappearance."""
        who = "the initial token" if self.initial_token else "noninitial tokens"
        if self.initial_token and self.noninitial_tokens:
            who += " and " + ", ".join(repr(t) for t in self.noninitial_tokens[:2])
        chans = " then ".join(f"{c} (blocks {_runs(list(range(lo, hi + 1)))})" for c, lo, hi in self.hand_over)
        parts = [f"{self.label} ({who}, blocks {self.first_layer}-{self.last_layer}) rides channel {chans}"]
        if self.emergence:
            ffn = [s.block for s in self.emergence if s.sublayer == "ffn"]
            n = len(self.explosion_set)
            text = (f"it emerges at block{'s' if n > 1 else ''} {_runs(self.explosion_set)} "
                    f"(explosion block {self.explosion_layer}) "
                    + ("from the FFN" if len(ffn) == n else "from attention" if not ffn else
                       f"from the FFN at {_runs(ffn)} and attention elsewhere"))
            writers = [f"{_writers(s)} at {s.block}" for s in self.emergence if s.sublayer == "ffn" and s.neurons]
            if writers:
                text += f": down-projection rows (share of channel) {'; '.join(writers)}"
                rows = [x for s in self.emergence if s.sublayer == "ffn" for x in _main(s)]
                text += f" ({sum(x.weight_outlier for x in rows)} of {len(rows)} peaked W_out rows"
                text += f", {sum(x.massive_input for x in rows)} massive FFN inputs)"
            amp = [s for s in self.emergence if s.post_ffn_amplified]
            if amp:
                gains = [s.post_ffn_gain or 0.0 for s in amp]
                text += (f", amplified by the post-FFN norm at {_runs([s.block for s in amp])} "
                         f"(gain {min(gains):.0f}-{max(gains):.0f})")
            parts.append(text)
        else:
            parts.append("no block builds it (it is large from the embedding on)")
        if self.masked_before_ffn:
            parts.append("; ".join(f"the pre-FFN norm masks channel {c} at block{'s' if len(bs) > 1 else ''} {_runs(bs)}"
                                   for c, bs in self.masked_before_ffn.items()))
        sp = self.spread
        if sp.n_heads:
            top = sp.heads[0]
            kinds = [f"{sum(k)} on {what}" for k, what in ((sp.initial, "the initial token"),
                                                           (sp.noninitial, "its noninitial carriers")) if sum(k)]
            parts.append(f"sink heads attend to it from block {sp.first_block} (head-blocks: {', '.join(kinds)}; "
                         f"strongest L{top.block}H{top.head}, mean score {top.score:.2f})")
        else:
            parts.append("no sink head attends to it")
        s = self.strongest_cancel
        if s is None:
            parts.append("nothing cancels it before the last block")
        else:
            text = (f"it is cancelled at block{'s' if len(self.cancelling_set) > 1 else ''} {_runs(self.cancelling_set)} "
                    f"(decay blocks {_runs(self.decay_layers) or 'none'}), mostly at block {s.block} by the "
                    f"{'FFN' if self.cancelled_by == 'ffn' else 'attention'}")
            if self.cancelled_by == "ffn" and s.neurons:
                text += f": rows {_writers(s)} of channel {s.channel}"
            parts.append(text)
        return "; ".join(parts) + "."

    def to_dict(self) -> dict[str, Any]:
        return {
            "defect": self.defect,
            "label": self.label,
            "initial_token": self.initial_token,
            "noninitial_tokens": list(self.noninitial_tokens),
            "first_layer": self.first_layer,
            "last_layer": self.last_layer,
            "explosion_layer": self.explosion_layer,
            "decay_layers": list(self.decay_layers),
            "peak_layer": self.peak_layer,
            "peak_component": _r(self.peak_component),
            "channels": [c.to_dict() for c in self.channels],
            "hand_over": [list(h) for h in self.hand_over],
            "masked_before_ffn": {str(c): list(bs) for c, bs in self.masked_before_ffn.items()},
            "explosion_set": list(self.explosion_set),
            "reached": _r(self.reached),
            "emergence": [s.to_dict() for s in self.emergence],
            "spread": self.spread.to_dict(),
            "cancelling_set": list(self.cancelling_set),
            "cancel_reached": _r(self.cancel_reached),
            "disappearance": [s.to_dict() for s in self.disappearance],
            "cancelled_by": self.cancelled_by,
            "fraction": self.fraction,
            "summary": self.summary(),
        }


@dataclass(frozen=True, eq=False)
class LifeCycle:
    """The life cycle of every major defect (iterate for the defects).

    ``closure_error``: the largest ``|f * (h @ W_out + b_out) - hook_mlp_out|`` over the blocks and
    carriers run, relative to the FFN output's norm (the neuron contributions are exact when ~1e-6).
    """

    model: str
    n_layers: int
    top_k: int
    min_share: float
    closure_error: float
    defects: list[DefectLifeCycle]

    def __len__(self) -> int:
        return len(self.defects)

    def __iter__(self):
        return iter(self.defects)

    def __getitem__(self, i: int) -> DefectLifeCycle:
        return self.defects[i]

    def summary(self) -> str:
        return "\n".join(d.summary() for d in self.defects) or "no major defect"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n_layers": self.n_layers,
            "top_k": self.top_k,
            "min_share": self.min_share,
            "closure_error": float(f"{self.closure_error:.3g}"),
            "defects": [d.to_dict() for d in self.defects],
        }


# ------------------------------------------------------------------------------------------------
# neuron contributions
# ------------------------------------------------------------------------------------------------
def ffn_output(
    b: BlockView, hidden: Float[Tensor, "k d_mlp"]
) -> tuple[Float[Tensor, "k d_model"], Float[Tensor, "k d_model"], Float[Tensor, "k d_model"]]:
    """An FFN's output from its down-projection input ``hidden`` (float64).

    Returns ``(y, factor, bias)``: ``y = hidden @ W_out + b_out``, the FFN's output before any
    post-FFN norm; ``factor`` the post-norm's effective factor per carrier and channel
    (``post_norm(y) = factor * y``: ``g / rms(y)`` for an RMS post-norm of scale ``g``, ones without
    a post-norm), so ``factor * y`` is what the FFN adds to the residual; ``bias = factor * b_out``
    (zeros without a bias).
    """
    h = hidden.double()
    y = h @ b.W_out.double()
    bias = torch.zeros_like(y) if b.b_out is None else b.b_out.double().expand_as(y)
    y = y + bias
    if b.mlp_post_scale is None:
        factor = torch.ones_like(y)
    else:
        factor = b.mlp_post_scale.double() * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + b.eps)
    return y, factor, factor * bias


def neuron_contributions(
    b: BlockView, hidden: Float[Tensor, "k d_mlp"], channel: int
) -> Float[Tensor, "k d_mlp"]:
    """What each down-projection row adds to residual ``channel``, per carrier (float64):
    ``factor[k, c] * hidden[k, i] * W_out[i, c]`` (``factor`` of :func:`ffn_output`). Summed over the
    rows, plus ``bias[:, c]``, it is the FFN's value in ``channel`` as added to the residual."""
    _, factor, _ = ffn_output(b, hidden)
    return hidden.double() * b.W_out[:, channel].double() * factor[:, channel : channel + 1]


# ------------------------------------------------------------------------------------------------
# the analysis
# ------------------------------------------------------------------------------------------------
def _check(report: DefectReport, probe: NormProbe, outliers: ActivationOutliers, weights: WeightOutliers,
           sinks: AttentionSinks, attribution: ComponentAttribution, n_layers: int, d_model: int) -> None:
    if len(attribution) != len(report) or any(a.defect != d.index for a, d in zip(attribution, report)):
        raise InputError("the attribution was not computed from this report (its defects differ)")
    sizes = {"report": report.n_layers, "probe": probe.n_layers, "activation outliers": outliers.n_layers,
             "weight outliers": weights.n_layers, "attribution": attribution.n_layers}
    bad = {k: v for k, v in sizes.items() if v != n_layers}
    if bad:
        raise InputError(f"the model has {n_layers} blocks but {bad}: give results of this model")
    if weights.d_model != d_model:
        raise InputError(f"the weight outliers have d_model {weights.d_model}, the model {d_model}")
    if "resid_post" not in outliers.sites:
        raise InputError("the activation outliers must include the resid_post site")
    if int(sinks.key_alpha.shape[0]) != probe.n_tokens or not torch.equal(sinks.token_ids, probe.token_ids):
        raise InputError(
            "the attention sinks were measured on another corpus than the probe (their token rows differ): "
            "run both on the same texts"
        )


def _channels(d: Defect, outliers: ActivationOutliers, owners: dict[int, tuple[str, float]], min_share: float,
              max_channels: int) -> list[ChannelUse]:
    tokens = {t for t, _ in d.noninitial_tokens}
    out = []
    for i, (c, share) in enumerate(defect_channels(d.direction, max_channels)):
        if i and share < min_share:
            break
        blocks = sorted({
            e.block for e in outliers.entries
            if e.site == "resid_post" and e.channel == c and d.first_layer <= e.block <= d.last_layer
            and ((e.position == 0 and d.initial_token) or (e.position > 0 and e.token in tokens))
        })
        out.append(ChannelUse(c, share, blocks, owners[c][0] if c in owners else None))
    return out


def _hand_over(d: Defect) -> list[tuple[int, int, int]]:
    runs: list[list[int]] = []
    for layer in range(d.first_layer, d.last_layer + 1):
        v = d.block_directions.get(layer)
        if v is None:
            continue
        c = int(v.abs().argmax())
        if runs and runs[-1][0] == c and runs[-1][2] == layer - 1:
            runs[-1][2] = layer
        else:
            runs.append([c, layer, layer])
    return [(c, lo, hi) for c, lo, hi in runs]


def _spread(d: Defect, probe: NormProbe, sinks: AttentionSinks, n_layers: int) -> SinkSpread:
    window = [b for b in range(d.first_layer, min(d.last_layer + 1, n_layers - 1) + 1) if b in sinks.blocks]
    cols = [sinks.blocks.index(b) for b in window]
    eps = sinks.epsilon
    heads: list[SpreadHead] = []
    initial: list[int] = []
    noninitial: list[int] = []
    if d.initial_token:
        score = sinks.score[cols]  # [n_window, n_heads]
        initial = [int(x) for x in (score > eps).sum(1)]
        heads += [SpreadHead(window[i], h, float(score[i, h]), "initial")
                  for i, h in torch.nonzero(score > eps).tolist()]
    rows = sorted({e.row for e in d.episodes if not e.initial})
    rows = [r for r in rows if int(sinks.key_queries[r]) >= sinks.min_queries]
    if rows:
        alpha = sinks.key_alpha[rows][:, cols].mean(0)  # [n_window, n_heads]
        noninitial = [int(x) for x in (alpha > eps).sum(1)]
        heads += [SpreadHead(window[i], h, float(alpha[i, h]), "noninitial")
                  for i, h in torch.nonzero(alpha > eps).tolist()]
    heads.sort(key=lambda s: (-s.score, s.block, s.head))
    return SinkSpread(window, initial, noninitial, heads, eps)


def _cancelling(att: DefectAttribution, d: Defect, n_layers: int, fraction: float) -> tuple[list[int], float]:
    lo, hi = att.peak_layer + 1, min(d.last_layer + 1, n_layers - 1)
    if lo > hi:
        return [], 0.0
    removed = -att.total[lo : hi + 1]
    blocks, reached = explosion_set(removed, hi - lo, att.peak_component, fraction)
    return [lo + b for b in blocks], reached


def life_cycle(
    model: HookedModel,
    report: DefectReport,
    probe: NormProbe,
    outliers: ActivationOutliers,
    weights: WeightOutliers,
    sinks: AttentionSinks,
    attribution: ComponentAttribution,
    *,
    top_k: int = 5,
    min_share: float = 0.05,
    max_channels: int = 4,
    fraction: float | None = None,
    batch_size: int = 16,
) -> LifeCycle:
    """Emergence, spread and disappearance of every major defect (see the module docstring).

    Args:
        model: the model every result comes from.
        report: :func:`~sd_lens.analyses.defects.find_defects` of ``probe``.
        probe: the :class:`~sd_lens.analyses.probe.NormProbe` (its token rows locate the carriers
            in ``sinks``).
        outliers: :func:`~sd_lens.analyses.activation_outliers.activation_outliers` (``resid_post``
            site; the ``mlp_post`` site, when present, marks massive hidden neurons).
        weights: :func:`~sd_lens.analyses.weight_outliers.weight_outliers` of the model.
        sinks: :func:`~sd_lens.analyses.attention_sinks.attention_sinks` on the probe's corpus.
        attribution: :func:`~sd_lens.analyses.attribution.component_attribution` of ``report``.
        top_k: down-projection rows listed per block.
        min_share: a channel holding at least this share of the direction's squared norm is one of
            the defect's channels (the largest always is).
        max_channels: at most this many channels per defect.
        fraction: the cancelling blocks remove this fraction of the peak component (default: the
            attribution's ``fraction``, the explosion set's).
        batch_size: carrier prefixes per forward.

    Raises:
        InputError: bad arguments or results of different models / corpora (before any forward).
    """
    for name, v in (("top_k", top_k), ("max_channels", max_channels), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(min_share, bool) or not isinstance(min_share, (int, float)) or not 0 <= min_share <= 1:
        raise InputError(f"min_share must be in [0, 1], got {min_share!r}")
    fraction = attribution.fraction if fraction is None else fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (0 < fraction <= 1):
        raise InputError(f"fraction must be in (0, 1], got {fraction!r}")
    n_layers, d_model = int(model.cfg.n_layers), int(model.cfg.d_model)
    _check(report, probe, outliers, weights, sinks, attribution, n_layers, d_model)

    # which blocks each defect needs, and one run over every carrier prefix
    plans = []
    for d, att in zip(report, attribution):
        cancel, reached = _cancelling(att, d, n_layers, fraction)
        plans.append((cancel, reached))
    blocks = sorted({b for att, (cancel, _) in zip(attribution, plans) for b in [*att.explosion_set, *cancel]})
    prefixes: list[Tensor] = []
    index: dict[tuple[int, ...], int] = {}
    rows: list[list[int]] = []
    for att in attribution:
        mine = []
        for p in att.carriers:
            key = tuple(p.tolist())
            if key not in index:
                index[key] = len(prefixes)
                prefixes.append(p)
            mine.append(index[key])
        rows.append(mine)
    names = {b: (act_name("post", b, "mlp"), act_name("mlp_out", b)) for b in blocks}
    require_hooks(model, [n for pair in names.values() for n in pair])
    hidden = {b: torch.zeros(len(prefixes), int(model.cfg.d_mlp)) for b in blocks}
    mlp_out = {b: torch.zeros(len(prefixes), d_model) for b in blocks}
    if blocks and prefixes:
        reducers = {n: last_token for pair in names.values() for n in pair}
        for batch, values in stream(model, prefixes, reducers, batch_size=batch_size):
            for b, (h_name, o_name) in names.items():
                hidden[b][batch.index] = values[h_name].float()
                mlp_out[b][batch.index] = values[o_name].float()

    view = model_view(model)
    split: dict[int, tuple[Tensor, Tensor, Tensor, BlockView]] = {}
    closure = 0.0
    for b in blocks:
        bv = view.block(b).to("cpu")  # a few blocks' host arithmetic with the streamed values
        y, factor, bias = ffn_output(bv, hidden[b])
        split[b] = (y, factor, bias, bv)
        added = mlp_out[b].double()
        err = ((factor * y - added).norm(dim=-1) / added.norm(dim=-1).clamp(min=1.0)).amax()
        closure = max(closure, float(err))

    owners = outliers.channel_defects(report)
    massive_hidden = {(e.block, e.channel) for e in outliers.entries if e.site == "mlp_post"}
    down_rows = {dp.block: {i for i, _, _ in dp.rows} for dp in weights.down}

    def step(att: DefectAttribution, mine: list[int], b: int, chans: list[int], adding: bool) -> BlockStep:
        y, factor, bias, bv = split[b]
        u = att.direction.double()
        f_c = factor[mine].mean(0)
        added = (factor * y)[mine].mean(0)  # [d_model]: what the FFN adds, per channel
        along = torch.tensor([float(u[c] * added[c]) for c in chans])
        c = chans[int(along.argmax() if adding else along.argmin())]
        h = hidden[b][mine].double()  # [k, d_mlp]
        contrib = (h * bv.W_out[:, c].double() * factor[mine, c : c + 1]).mean(0)  # [d_mlp]
        sign = 1.0 if float(u[c]) >= 0 else -1.0
        order = torch.argsort(sign * contrib, descending=adding, stable=True)[:top_k]
        total_c = float(added[c])
        neurons = [
            NeuronContribution(
                neuron=int(i), contribution=float(contrib[i]), activation=float(h[:, i].mean()),
                weight=float(bv.W_out[i, c]), share=float(contrib[i]) / total_c if total_c else 0.0,
                weight_outlier=int(i) in down_rows.get(b, set()), massive_input=(b, int(i)) in massive_hidden,
            )
            for i in order.tolist()
        ]
        a_v, f_v = float(att.attn[b]), float(att.ffn[b])
        gain = weights.max_gain(c, "mlp_post").get(b) if bv.mlp_post_scale is not None else None
        pre = weights.scale(b, "ln2")
        return BlockStep(
            block=b, attn=a_v, ffn=f_v,
            sublayer=("attn" if a_v > f_v else "ffn") if adding else ("attn" if a_v < f_v else "ffn"),
            channel=c, ffn_channel=total_c, ffn_channel_pre_norm=float(y[mine, c].mean()), post_factor=float(f_c[c]),
            bias=float(bias[mine, c].mean()), neurons=neurons,
            pre_ffn_scale=None if pre is None else float(pre[c]),
            pre_ffn_masked=weights.masked_before_ffn(b, c), post_ffn_gain=gain,
            post_ffn_amplified=weights.is_amplified(b, c, "mlp_post"),
        )

    out: list[DefectLifeCycle] = []
    for d, att, mine, (cancel, reached) in zip(report, attribution, rows, plans):
        chans = _channels(d, outliers, owners, float(min_share), max_channels)
        chan_ids = [c.channel for c in chans]
        emergence = [step(att, mine, b, chan_ids, True) for b in att.explosion_set] if mine else []
        disappearance = [step(att, mine, b, chan_ids, False) for b in cancel] if mine else []
        strongest = min(disappearance, key=lambda s: s.attn + s.ffn, default=None)
        masked = {c: bs for c in chan_ids
                  if (bs := [b for b in range(d.first_layer, d.last_layer + 1) if weights.masked_before_ffn(b, c)])}
        out.append(DefectLifeCycle(
            defect=d.index, label=d.label, initial_token=d.initial_token,
            noninitial_tokens=[t for t, _ in d.noninitial_tokens], first_layer=d.first_layer, last_layer=d.last_layer,
            explosion_layer=d.explosion_layer, decay_layers=list(d.decay_layers), peak_layer=att.peak_layer,
            peak_component=att.peak_component, channels=chans, hand_over=_hand_over(d),
            explosion_set=list(att.explosion_set), reached=att.reached, emergence=emergence,
            spread=_spread(d, probe, sinks, n_layers), cancelling_set=cancel, cancel_reached=reached,
            disappearance=disappearance, cancelled_by=None if strongest is None else strongest.sublayer,
            masked_before_ffn=masked, fraction=float(fraction),
        ))
    return LifeCycle(model=report.model, n_layers=n_layers, top_k=top_k, min_share=float(min_share),
                     closure_error=closure, defects=out)
