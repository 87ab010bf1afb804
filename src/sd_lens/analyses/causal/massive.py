"""Interventions on massive activations (set to zero, set to their mean), measured by perplexity.

Sun et al., *Massive Activations in Large Language Models* (COLM 2024), §3 ("massive activations
act as fixed but crucial biases"): at the layer where the massive activations *emerge*, set them

* to **zero** — perplexity explodes (LLaMA2-7B: WikiText, C4 and PG-19 perplexity become
  effectively infinite), or
* to their **mean** over many sequences — perplexity is unchanged (to the second decimal),

and conclude that the massive activations are input-agnostic biases the model cannot do without.
Their code (github.com/locuslab/massive-activations, ``lib/hook.py`` ``Intervened_Layer`` and
``lib/eval_utils.py`` ``eval_ppl``) edits the output hidden state of that decoder layer — the
residual stream after the block, TransformerLens's ``blocks.{l}.hook_resid_post`` — in the few
(token, channel) entries that hold the massive activations: the starting token (position 0) and,
for LLaMA2-7B, the token where the largest activation sits when it is not the first (the first
delimiter), each in the two massive channels; the "mean" values are constants, one per
(channel, starting token / other token), averaged beforehand over many sequences.

Here nothing is hard-coded:

* **Which channels, which block.** The channels are the residual-stream outlier channels of an
  :class:`~sd_lens.analyses.activation_outliers.ActivationOutliers` (same criterion as Sun et al.:
  ``|v| > absolute`` and ``|v| >= relative x`` the median), each at the first block where it is
  massive (its *emergence block*). Channels emerging at the same block share one hook.
* **Which entries** (:func:`set_massive`): decided per token at run time by the same criterion —
  an entry ``(t, c)`` of a sequence is massive when ``|x[t, c]| > absolute`` and
  ``|x[t, c]| >= relative x median|x|``, the median over every channel and (real) token of that
  sequence at that hook (Sun et al. take the median of one sequence's layer output). This selects
  the starting token and any other massive carrier (a delimiter) exactly as their code does,
  without knowing beforehand where they are. :func:`set_entries` sets fixed positions instead.
* **Mean values** (:func:`massive_means`): for each channel, the mean of the signed value over
  every massive entry of that channel in a corpus, separately for the starting token
  (position 0; one entry per text where it is massive) and for the other positions (every massive
  entry at ``t > 0``) — Sun et al.'s two constants per channel. At run time an entry at position 0
  gets the starting-token mean, any other entry the other-token mean (the starting-token mean when
  the corpus had no massive entry at ``t > 0`` in that channel).

**Held-out texts.** The means and channels come from one corpus; the perplexity is measured on
texts that are not in it. :func:`held_out_corpus` gives the default: the prose lines of
:func:`sd_lens.corpus.default_corpus` that follow its first ``skip`` lines in the same order
(``default_corpus(skip + n)[skip:]``), disjoint from ``default_corpus(skip)``.

**Perplexity** and the KL to the clean model are :func:`sd_lens.analyses.metrics.perplexity`'s, measured by
:func:`~sd_lens.analyses.metrics.edited_perplexities`: each mode is one edit of the experiment engine
(:func:`~sd_lens.analyses.causal.engine.sweep`, one batched measurement for all modes), every forward holds
one clean copy of its texts and one per mode (rows ``[clean | zero | mean]``), and the clean perplexity is the
clean copy's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence, cast

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sd_lens.analyses.activation_outliers import ActivationOutliers, activation_outliers
from sd_lens.analyses.causal.engine import Trial, sweep
from sd_lens.analyses.metrics import Perplexity, edited_perplexities, held_out_corpus, perplexity
from sd_lens.corpus import check_held_out, default_corpus
from sd_lens.errors import InputError
from sd_lens.models.metadata import model_name
from sd_lens.runtime.engine import Batch, real_mask, stream
from sd_lens.runtime.hooks import act_name, require_hooks
from sd_lens.runtime.reducers import resident
from sd_lens.runtime.tokens import Tokenized, tokenize
from sd_lens.types import HookedModel, HookFn

__all__ = [
    "MassiveMeans",
    "OutlierIntervention",
    "emergence_targets",
    "intervention_hooks",
    "massive_mask",
    "massive_means",
    "outlier_intervention",
    "set_entries",
    "set_massive",
]

Mode = Literal["zero", "mean"]
MODES = ("zero", "mean")


def _tokens(model: HookedModel, texts: Sequence[str] | Tokenized, max_tokens_per_text: int | None) -> Tokenized:
    return texts if isinstance(texts, Tokenized) else tokenize(model, texts, max_tokens_per_text=max_tokens_per_text)


# ------------------------------------------------------------------------------------------------
# the run-time criterion and the hooks
# ------------------------------------------------------------------------------------------------
def _row_median(a: Float[Tensor, "batch pos d"], real: Bool[Tensor, "batch pos"] | None) -> Float[Tensor, " batch"]:
    """Median of ``a`` over positions and channels of each row (real positions only when ``real`` is
    given); the mean of the two middle values for an even count (as ``numpy.median``)."""
    flat = a.float().reshape(a.shape[0], -1)
    if real is None:
        n = torch.full((a.shape[0],), flat.shape[1], device=a.device)
    else:
        keep = real.to(a.device)[:, :, None].expand(a.shape).reshape(a.shape[0], -1)
        flat = flat.masked_fill(~keep, math.inf)
        n = keep.sum(1)
    srt = flat.sort(dim=1).values
    lo = ((n - 1).clamp(min=0) // 2)[:, None]
    hi = (n // 2).clamp(max=flat.shape[1] - 1)[:, None]
    return (srt.gather(1, lo) + srt.gather(1, hi)).squeeze(1) / 2


def massive_mask(
    act: Float[Tensor, "batch pos d"],
    channels: Sequence[int] | Tensor,
    *,
    relative: float = 1000.0,
    absolute: float | None = 100.0,
    real: Bool[Tensor, "batch pos"] | None = None,
) -> Bool[Tensor, "batch pos n_channels"]:
    """Which entries of ``channels`` are massive (Sun et al.'s criterion, per sequence).

    ``(b, t, c)`` is massive when ``|act[b, t, c]| > absolute`` (no test when None) and
    ``|act[b, t, c]| >= relative x`` the median of ``|act[b]|`` over every channel and position of row
    ``b`` (over its ``real`` positions when given; pad positions are never massive then).
    """
    if isinstance(channels, Tensor) and channels.device == act.device:
        ch = channels.long()
    else:
        ch = torch.as_tensor(channels, dtype=torch.long).to(act.device, non_blocking=True)
    a = act.detach().abs()
    med = _row_median(a, real)
    sel = a[..., ch].float()
    mask = (sel >= relative * med[:, None, None]) & (sel > 0)
    if absolute is not None:
        mask &= sel > absolute
    if real is not None:
        mask &= real.to(act.device)[:, :, None]
    return mask


def _check_channels(channels: Sequence[int] | Tensor) -> Tensor:
    ch = torch.as_tensor(channels, dtype=torch.long).flatten()
    if ch.numel() == 0 or bool((ch < 0).any()) or len(set(ch.tolist())) != ch.numel():
        raise InputError(f"channels must be distinct non-negative integers, got {channels!r}")
    return ch


def set_entries(
    channels: Sequence[int] | Tensor,
    positions: Sequence[int] | Tensor,
    values: float | Float[Tensor, "..."] = 0.0,
) -> HookFn:
    """Hook setting ``act[:, positions][:, :, channels]`` to ``values`` (a number, ``[n_channels]`` or
    ``[n_positions, n_channels]``) in every row; nothing else changes. Positions at or past a batch's
    length are skipped. Returns a new tensor (see :mod:`sd_lens.interventions`)."""
    ch = _check_channels(channels)
    pos = torch.as_tensor(positions, dtype=torch.long).flatten()
    if pos.numel() == 0 or bool((pos < 0).any()):
        raise InputError(f"positions must be non-negative integers, got {positions!r}")
    val = torch.as_tensor(values, dtype=torch.float32)
    if val.ndim > 2 or (val.ndim >= 1 and val.shape[-1] != ch.numel()) or (val.ndim == 2 and val.shape[0] != pos.numel()):
        raise InputError(f"values must be a number, [{ch.numel()}] or [{pos.numel()}, {ch.numel()}], got shape {tuple(val.shape)}")
    full = val.expand(pos.numel(), ch.numel())

    def hook(act: Tensor, hook: Any) -> Tensor:
        if int(ch.max()) >= act.shape[-1]:
            raise InputError(f"channel {int(ch.max())} is out of range for width {act.shape[-1]}")
        inside = pos < act.shape[1]
        p, v = pos[inside].to(act.device), full[inside].to(act.device, act.dtype)
        out = act.clone()
        out[:, p[:, None], ch.to(act.device)[None, :]] = v
        return out

    return hook


def set_massive(
    channels: Sequence[int] | Tensor,
    *,
    initial: float | Float[Tensor, " n_channels"] = 0.0,
    other: float | Float[Tensor, " n_channels"] | None = None,
    relative: float = 1000.0,
    absolute: float | None = 100.0,
    tally: dict[str, int] | None = None,
) -> HookFn:
    """Hook setting the massive entries of ``channels`` (:func:`massive_mask`, decided per sequence at
    run time) to ``initial`` at position 0 and to ``other`` elsewhere (None: ``initial``); every other
    entry is left as it is. ``initial=0``: Sun et al.'s "set to zero"; the means of
    :func:`massive_means`: their "set to mean".

    Under :func:`perplexity` the median ignores pad positions; elsewhere (``run_with_hooks``) it runs
    over every position of a row. ``tally``, when given, counts the entries set
    (``"initial"``, ``"other"``).
    """
    ch = _check_channels(channels)
    v0 = torch.as_tensor(initial, dtype=torch.float32).expand(ch.numel())
    v1 = v0 if other is None else torch.as_tensor(other, dtype=torch.float32).expand(ch.numel())
    if not (torch.isfinite(v0).all() and torch.isfinite(v1).all()):
        raise InputError("the values to set must be finite")

    def hook(act: Tensor, hook: Any) -> Tensor:
        if int(ch.max()) >= act.shape[-1]:
            raise InputError(f"channel {int(ch.max())} is out of range for width {act.shape[-1]}")
        real = real_mask()  # the engine's batch: padding stays out of the median
        if real is not None and tuple(real.shape) != tuple(act.shape[:2]):
            real = None
        c = ch.to(act.device)
        mask = massive_mask(act, c, relative=relative, absolute=absolute, real=real)
        target = v1.to(act.device, act.dtype).expand(act.shape[1], ch.numel()).clone()
        target[0] = v0.to(act.device, act.dtype)
        out = act.clone()
        out[..., c] = torch.where(mask, target, act[..., c])
        if tally is not None:
            tally["initial"] = tally.get("initial", 0) + int(mask[:, 0].sum())
            tally["other"] = tally.get("other", 0) + int(mask[:, 1:].sum())
        return out

    return hook


# ------------------------------------------------------------------------------------------------
# emergence blocks and means
# ------------------------------------------------------------------------------------------------
def emergence_targets(
    outliers: ActivationOutliers, channels: Sequence[int] | None = None, *, at: Literal["emergence", "all"] = "emergence"
) -> dict[int, list[int]]:
    """``{block: channels}``: each residual-stream outlier channel at the first block where it is
    massive (``at="emergence"``: Sun et al. intervene where the massive activations appear), or at
    every block where it is massive (``at="all"``: for models whose later blocks regrow the value)."""
    if at not in ("emergence", "all"):
        raise InputError(f"at must be 'emergence' or 'all', got {at!r}")
    chans = outliers.channels("resid_post") if channels is None else list(channels)
    out: dict[int, list[int]] = {}
    for c in chans:
        blocks = outliers.blocks_of(int(c), "resid_post")
        if not blocks:
            raise InputError(f"channel {c} is not a resid_post outlier channel of this result")
        for b in blocks if at == "all" else blocks[:1]:
            out.setdefault(b, []).append(int(c))
    return {b: sorted(cs) for b, cs in sorted(out.items())}


def _check_targets(model: HookedModel, targets: Mapping[int, Sequence[int]]) -> dict[int, Tensor]:
    if not targets:
        raise InputError("no block/channels to intervene on (the model has no residual-stream massive activations?)")
    n_layers, width = int(model.cfg.n_layers), int(model.cfg.d_model)
    out: dict[int, Tensor] = {}
    for b, cs in targets.items():
        if not isinstance(b, int) or isinstance(b, bool) or not 0 <= b < n_layers:
            raise InputError(f"block {b!r} is not in 0..{n_layers - 1}")
        ch = _check_channels(cs)
        if int(ch.max()) >= width:
            raise InputError(f"channel {int(ch.max())} is out of range for d_model {width}")
        out[b] = ch
    require_hooks(model, [act_name("resid_post", b) for b in out])
    return out


@dataclass(frozen=True, eq=False)
class MassiveMeans:
    """Mean signed value of the massive entries of ``channels`` at ``blocks.{block}.hook_resid_post``
    over a corpus (Sun et al.'s "mean values"), separately for the starting token and the others.

    ``initial``/``other``: float32 ``[n_channels]`` (NaN where the corpus had no such entry);
    ``n_initial``/``n_other``: how many entries each mean averages.
    """

    block: int
    channels: tuple[int, ...]
    initial: Float[Tensor, " n_channels"]
    other: Float[Tensor, " n_channels"]
    n_initial: tuple[int, ...]
    n_other: tuple[int, ...]
    n_texts: int

    @property
    def hook_name(self) -> str:
        return act_name("resid_post", self.block)

    def values(self) -> tuple[Tensor, Tensor]:
        """(value at position 0, value elsewhere) per channel, with the documented fallbacks: a missing
        other-token mean takes the starting-token mean and vice versa."""
        v0 = torch.where(torch.isnan(self.initial), self.other, self.initial)
        v1 = torch.where(torch.isnan(self.other), v0, self.other)
        return v0, v1

    def to_dict(self) -> dict[str, Any]:
        def r(t: Tensor) -> list[float | None]:
            return [None if math.isnan(float(v)) else round(float(v), 3) for v in t]

        return {
            "block": self.block,
            "channels": list(self.channels),
            "initial": r(self.initial),
            "other": r(self.other),
            "n_initial": list(self.n_initial),
            "n_other": list(self.n_other),
            "n_texts": self.n_texts,
        }


def massive_means(
    model: HookedModel,
    targets: Mapping[int, Sequence[int]],
    texts: Sequence[str] | Tokenized | None = None,
    *,
    relative: float = 1000.0,
    absolute: float | None = 100.0,
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
) -> dict[int, MassiveMeans]:
    """Sun et al.'s mean values: per block of ``targets`` (``{block: channels}``) and channel, the mean
    over ``texts`` (default: :func:`~sd_lens.corpus.default_corpus`) of the signed value at the
    massive entries (:func:`massive_mask`, real positions only) of ``blocks.{block}.hook_resid_post``
    in a clean forward — one mean over the starting token (position 0), one over all other positions.
    """
    chans = _check_targets(model, targets)
    tok = _tokens(model, default_corpus() if texts is None else texts, max_tokens_per_text)
    sums = {b: torch.zeros(2, len(c), dtype=torch.float64) for b, c in chans.items()}
    counts = {b: torch.zeros(2, len(c), dtype=torch.long) for b, c in chans.items()}

    def reducer(channels: Tensor) -> Any:
        ch_at = resident(channels)

        def reduce(act: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
            ch = ch_at(act.device)
            m = massive_mask(act, ch, relative=relative, absolute=absolute, real=batch.mask)
            v = act[..., ch].double() * m
            return (
                torch.stack([v[:, 0].sum(0), v[:, 1:].sum((0, 1))]),
                torch.stack([m[:, 0].sum(0), m[:, 1:].sum((0, 1))]),
            )

        return reduce

    reducers = {act_name("resid_post", b): reducer(c) for b, c in chans.items()}
    for _, out in stream(model, tok.sequences, reducers, batch_size=batch_size):
        for b in chans:
            s, n = out[act_name("resid_post", b)]
            sums[b] += s
            counts[b] += n
    res = {}
    for b, c in chans.items():
        mean = (sums[b] / counts[b].clamp(min=1)).float()
        mean[counts[b] == 0] = math.nan
        res[b] = MassiveMeans(
            block=b, channels=tuple(c.tolist()), initial=mean[0], other=mean[1],
            n_initial=tuple(counts[b][0].tolist()), n_other=tuple(counts[b][1].tolist()), n_texts=len(tok.sequences),
        )
    return res


def intervention_hooks(
    targets: Mapping[int, Sequence[int]] | Mapping[int, MassiveMeans],
    mode: Mode = "zero",
    *,
    relative: float = 1000.0,
    absolute: float | None = 100.0,
    tally: dict[str, int] | None = None,
) -> list[tuple[str, HookFn]]:
    """``fwd_hooks`` setting the massive entries of each block's channels to zero (``mode="zero"``) or
    to their means (``mode="mean"``: ``targets`` must map blocks to :class:`MassiveMeans`; a channel
    that was never massive in the means' corpus has no mean and is left alone in that mode)."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    hooks = []
    for b, t in sorted(targets.items()):
        if isinstance(t, MassiveMeans):
            chans: Sequence[int] = t.channels
            v0, v1 = t.values() if mode == "mean" else (0.0, 0.0)
            if mode == "mean":  # a channel never massive in the means' corpus has no mean: left alone
                has = ~torch.isnan(torch.as_tensor(v0))
                if not bool(has.any()):
                    continue
                chans = [c for c, h in zip(t.channels, has.tolist()) if h]
                v0, v1 = torch.as_tensor(v0)[has], torch.as_tensor(v1)[has]
        else:
            if mode == "mean":
                raise InputError("mode='mean' needs MassiveMeans per block (see massive_means)")
            chans, v0, v1 = [int(c) for c in cast(Sequence[int], t)], 0.0, 0.0
        hooks.append((act_name("resid_post", b), set_massive(
            chans, initial=v0, other=v1, relative=relative, absolute=absolute, tally=tally,
        )))
    if not hooks:
        raise InputError("no channel of the targets has a mean (none was massive in the means' corpus)")
    return hooks


# ------------------------------------------------------------------------------------------------
# the analysis
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class OutlierIntervention:
    """Sun et al.'s intervention on a model's massive activations (see the module docstring).

    Attributes:
        targets: ``{block: channels}`` intervened on (each channel at its emergence block).
        means: per block, the means (from the corpus the outliers came from).
        clean: perplexity without intervention (held-out texts).
        runs: per mode (``"zero"``, ``"mean"``), the perplexity under the intervention, with the KL.
        n_set: per mode, how many entries were set on the held-out texts (``"initial"``: position 0,
            ``"other"``).
        means_texts, held_out_texts: how many texts each side had (disjoint sets).
        at: ``"emergence"``, ``"all"`` or ``"explicit"`` (targets given as ``{block: channels}``).
    """

    model: str
    targets: dict[int, tuple[int, ...]]
    means: dict[int, MassiveMeans]
    clean: Perplexity
    runs: dict[str, Perplexity]
    n_set: dict[str, dict[str, int]]
    relative: float
    absolute: float | None
    means_texts: int
    held_out_texts: int
    at: str = "emergence"
    seconds: float = field(default=0.0)

    def ratio(self, mode: str) -> float:
        """Perplexity under ``mode`` over the clean perplexity."""
        return self.runs[mode].perplexity / self.clean.perplexity

    def summary(self) -> str:
        where = "; ".join(f"block {b}: channels {list(c)}" for b, c in self.targets.items())
        lines = [f"massive activations set at {where} (held-out: {self.held_out_texts} texts, {self.clean.n_tokens} tokens)",
                 f"  clean: perplexity {self.clean.perplexity:.3f}"]
        for mode, p in self.runs.items():
            lines.append(f"  {mode}: perplexity {p.perplexity:.3f} (x{self.ratio(mode):.3g}), KL {p.kl:.4f} nats/token, "
                         f"set {self.n_set[mode]}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "targets": {str(b): list(c) for b, c in self.targets.items()},
            "means": {str(b): m.to_dict() for b, m in self.means.items()},
            "clean": self.clean.to_dict(),
            "runs": {m: p.to_dict() for m, p in self.runs.items()},
            "ratio": {m: (round(self.ratio(m), 4) if math.isfinite(self.ratio(m)) else None) for m in self.runs},
            "n_set": {m: dict(v) for m, v in self.n_set.items()},
            "relative": self.relative,
            "absolute": self.absolute,
            "means_texts": self.means_texts,
            "held_out_texts": self.held_out_texts,
            "at": self.at,
            "seconds": round(self.seconds, 3),
        }


def outlier_intervention(
    model: HookedModel,
    outliers: ActivationOutliers | Mapping[int, Sequence[int]] | None = None,
    held_out_texts: Sequence[str] | None = None,
    *,
    texts: Sequence[str] | None = None,
    modes: Sequence[str] = MODES,
    at: Literal["emergence", "all"] = "emergence",
    relative: float | None = None,
    absolute: float | None | Literal["outliers"] = "outliers",
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
) -> OutlierIntervention:
    """Set the massive activations at their emergence block to zero / their mean; measure perplexity.

    Args:
        model: a TransformerLens model.
        outliers: an :class:`ActivationOutliers` of ``model`` on ``texts`` (None: computed here) — each of
            its ``resid_post`` outlier channels is set at its first block (:func:`emergence_targets`);
            or an explicit ``{block: channels}``. Outliers with no ``resid_post`` channel give a result
            with the clean perplexity only (``targets`` and ``runs`` empty).
        held_out_texts: where perplexity is measured (default: :func:`held_out_corpus`, the
            ``len(texts)`` lines after the default corpus); none of them may be in ``texts``.
        texts: the corpus of the outliers and the means (default: :func:`~sd_lens.corpus.default_corpus`).
        modes: a subset of ``("zero", "mean")``.
        at: ``"emergence"`` (each channel at its first massive block, as Sun et al.) or ``"all"`` (at every
            block where it is massive); ignored for an explicit ``{block: channels}``.
        relative, absolute: the massive criterion (default: the outliers' own, else 1000 and 100).
        batch_size, max_tokens_per_text: as everywhere.

    Raises:
        InputError: bad arguments or overlapping texts (before any forward).
    """
    t0 = time.perf_counter()
    modes = tuple(modes)
    if not modes or any(m not in MODES for m in modes) or len(set(modes)) != len(modes):
        raise InputError(f"modes must be distinct names from {MODES}, got {modes!r}")
    if at not in ("emergence", "all"):
        raise InputError(f"at must be 'emergence' or 'all', got {at!r}")
    texts = default_corpus() if texts is None else list(texts)
    held = held_out_corpus(len(texts)) if held_out_texts is None else list(held_out_texts)
    check_held_out(texts, held, "means' corpus")
    if isinstance(outliers, ActivationOutliers):
        rel = outliers.relative if relative is None else relative
        ab = outliers.absolute if absolute == "outliers" else absolute
    else:
        rel = 1000.0 if relative is None else relative
        ab = 100.0 if absolute == "outliers" else absolute
    if not (isinstance(rel, (int, float)) and math.isfinite(rel) and rel > 0):
        raise InputError(f"relative must be a positive number, got {rel!r}")
    if ab is not None and not (isinstance(ab, (int, float)) and math.isfinite(ab) and ab >= 0):
        raise InputError(f"absolute must be a non-negative number or None, got {ab!r}")
    if outliers is None:
        outliers = activation_outliers(
            model, texts, batch_size=batch_size, max_tokens_per_text=max_tokens_per_text,
            relative=rel, absolute=ab, sites=("resid_post",),
        )
    targets = emergence_targets(outliers, at=at) if isinstance(outliers, ActivationOutliers) else {
        int(b): [int(c) for c in cs] for b, cs in outliers.items()
    }
    # outliers measured on this corpus may have no resid_post channel: then only the clean perplexity
    found_none = isinstance(outliers, ActivationOutliers) and not targets
    if not found_none:
        _check_targets(model, targets)
    means = {} if found_none else massive_means(
        model, targets, texts, relative=rel, absolute=ab, batch_size=batch_size, max_tokens_per_text=max_tokens_per_text
    )
    held_tok = tokenize(model, held, max_tokens_per_text=max_tokens_per_text)

    def edit(mode: Mode) -> Trial:
        tally: dict[str, int] = {"initial": 0, "other": 0}
        return Trial(intervention_hooks(means, mode, relative=rel, absolute=ab, tally=tally), record=tally)

    measured: dict[str, Perplexity] = {}

    def measure_rows(trials: list[Trial]) -> list[Perplexity]:
        """Every mode in shared forwards with one clean copy of the texts (edited_perplexities)."""
        measured["clean"], runs = edited_perplexities(model, held_tok, [list(t.hooks) for t in trials],
                                                      batch_size=batch_size)
        return runs

    out = sweep(model, {"mode": () if found_none else modes}, edit, measure_rows=measure_rows, clean=False)
    clean = measured["clean"] if "clean" in measured else perplexity(model, held_tok, batch_size=batch_size)
    runs = {mode: out.values[(mode,)] for mode in (() if found_none else modes)}
    n_set = {mode: out.trials[(mode,)].record for mode in runs}
    return OutlierIntervention(
        model=model_name(model),
        targets={b: tuple(c) for b, c in targets.items()},
        means=means,
        clean=clean,
        runs=runs,
        n_set=n_set,
        relative=float(rel),
        absolute=None if ab is None else float(ab),
        means_texts=len(texts),
        held_out_texts=len(held),
        at=at if isinstance(outliers, ActivationOutliers) else "explicit",
        seconds=time.perf_counter() - t0,
    )
