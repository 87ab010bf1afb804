"""A causal lever for each singular defect of the initial token, chosen from its component attribution.

**Lever.** For each major defect carried by the initial token, :func:`find_lever` removes the
defect-direction component of sublayer outputs chosen from the attribution (by forward hooks on
the sublayer outputs, before any post-norm: see "Where the lever acts" below) and measures the initial token's norm at every block, clean and intervened. Candidates, in order
(:func:`lever_candidates`): the dominant sublayer (the larger of ``attn`` and ``ffn``) at each block
of the explosion set; both sublayers there; every sublayer that adds along the direction from the
first block of the explosion set to the peak (a build-up that feeds itself is rebuilt by the blocks
after the set). The first that removes ``target`` of the peak norm is chosen, else the best. The
peak is taken from the defect's first block to the block before the next initial-token defect
starts (else the last block), so a lever that only moves the peak to a later block is not counted
as a success.

**Where the lever acts.** Where a sublayer has a post-norm (Gemma-3's ``ln1_post`` / ``ln2_post``),
the lever acts on the sublayer's output *before* that norm (``attn.hook_out`` / ``mlp.hook_out``)
and removes its component along ``γ ⊙ u`` (γ the norm's effective scale, ``u`` the defect
direction): the normed output ``γ ⊙ y / rms(y)`` then has exactly no component along ``u``. Which
hook holds the pre-norm output is *checked* on the clean run (``post_norm(raw) == hook_*_out``
within 1e-4), else the lever falls back to the normed outputs. Without a post-norm the lever acts
on ``hook_attn_out`` / ``hook_mlp_out`` along ``u``.

The **control** removes, at the same hooks, a vector of the *same norm* along a random unit
direction (one per seed; the norms are those removed in the intervened run). It is a null only
where that vector is small next to what it lands on, or where a normalisation bounds it:
``relative_size`` reports its ratio to the value it is added to (see :class:`Lever`). Before a post-norm the control passes through the same normalisation
as the lever, which bounds what any vector can add; on the normed outputs of Gemma-3 (measured:
10 383 removed at block 3's FFN from a 6 252 residual) a random vector of that size derails the
build-up that feeds itself (each block's FFN adds along the direction because the residual already
points there) as much as the lever does, and no lever there is ``specific``.

It is a specialisation of the experiment engine (:func:`~sd_lens.analyses.causal.engine.sweep`): the
candidates are the sites, tried in order until one reaches the target; the chosen one gets the matched
random controls. The attribution itself is :mod:`sd_lens.analyses.attribution`.

References: Wang et al., *Demystifying Singular Defects in Large Language Models* (ICML 2025)
(explosion and decay layers, observation (ii)); Sun et al., *Massive Activations in Large Language
Models* (2024) (interventions on activations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.analyses.attribution import ComponentAttribution, DefectAttribution
from sd_lens.analyses.causal.engine import Trial, random_direction, sweep
from sd_lens.analyses.defects import DefectReport
from sd_lens.errors import InputError, UnsupportedArchitectureError
from sd_lens.interventions import project_out as remove_along
from sd_lens.interventions import remove_matched
from sd_lens.linalg import unit
from sd_lens.models.view import ModelView, model_view
from sd_lens.runtime.engine import run
from sd_lens.runtime.hooks import act_name
from sd_lens.runtime.reducers import first_row, token_norms
from sd_lens.types import HookedModel, HookFn

__all__ = ["Lever", "LeverCandidate", "LeverReport", "find_lever", "lever_candidates", "lever_sites"]

_SUBLAYER_HOOK = {"attn": "attn_out", "ffn": "mlp_out"}


# ------------------------------------------------------------------------------------------------
# lever
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LeverCandidate:
    """One intervention tried: which sublayer outputs at which blocks, and the peak it leaves."""

    name: str
    sites: list[tuple[int, str]]
    peak_norm: float
    reduction: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sites": [[layer, s] for layer, s in self.sites],
            "peak_norm": round(self.peak_norm, 3),
            "reduction": round(self.reduction, 4),
        }


@dataclass(frozen=True, eq=False)
class Lever:
    """The chosen intervention for one initial-token defect, with its matched random control.

    ``sites``: (block, sublayer) pairs whose output had the defect-direction component removed;
    ``hooks``: the hook of each site (the output before a post-norm where the block has one).
    ``norms_*``: the initial token's ``resid_post`` norm at every block; ``norms_control`` is
    ``[n_seeds, n_layers]``. The peak is taken over ``window`` (the defect's first block to the
    block before the next initial-token defect starts, else the last block). ``removed``: the norm
    removed at each site in the intervened run, matched by the control; ``relative_size``: that
    norm over the clean norm of what the control's vector is added to — the pre-norm output at a
    site before a post-norm, else the residual entering the site's block (above 1 there, the random
    vector outweighs the residual and derails whatever the residual's direction drives; before a
    post-norm the normalisation bounds what it can add, whatever its relative size). ``reduction = 1 - peak_intervened / peak_clean``; ``specific``: the lever removes more
    than the control does under every seed.
    """

    defect: int
    label: str
    name: str
    sites: list[tuple[int, str]]
    hooks: list[str]
    window: tuple[int, int]
    removed: list[float]
    relative_size: list[float]
    norms_clean: Tensor
    norms_intervened: Tensor
    norms_control: Tensor
    seeds: list[int]
    target: float
    candidates: list[LeverCandidate]

    def _peak(self, norms: Tensor) -> Tensor:
        lo, hi = self.window
        return norms[..., lo : hi + 1].amax(dim=-1)

    @property
    def peak_clean(self) -> float:
        return float(self._peak(self.norms_clean))

    @property
    def peak_layer(self) -> int:
        return self.window[0] + int(self.norms_clean[self.window[0] : self.window[1] + 1].argmax())

    @property
    def peak_intervened(self) -> float:
        return float(self._peak(self.norms_intervened))

    @property
    def control_peaks(self) -> Tensor:
        return self._peak(self.norms_control)

    @property
    def reduction(self) -> float:
        return 1.0 - self.peak_intervened / self.peak_clean

    @property
    def control_reductions(self) -> Tensor:
        return 1.0 - self.control_peaks / self.peak_clean

    @property
    def achieved(self) -> bool:
        return self.reduction >= self.target

    @property
    def specific(self) -> bool:
        return self.reduction > float(self.control_reductions.max())

    def to_dict(self) -> dict[str, Any]:
        cr = self.control_reductions
        return {
            "defect": self.defect,
            "label": self.label,
            "name": self.name,
            "sites": [[layer, s] for layer, s in self.sites],
            "hooks": list(self.hooks),
            "window": list(self.window),
            "removed": [round(x, 3) for x in self.removed],
            "relative_size": [round(x, 4) for x in self.relative_size],
            "peak_layer": self.peak_layer,
            "peak_clean": round(self.peak_clean, 3),
            "peak_intervened": round(self.peak_intervened, 3),
            "reduction": round(self.reduction, 4),
            "target": self.target,
            "achieved": self.achieved,
            "specific": self.specific,
            "control": {
                "seeds": list(self.seeds),
                "peak_mean": round(float(self.control_peaks.mean()), 3),
                "peak_min": round(float(self.control_peaks.min()), 3),
                "peak_max": round(float(self.control_peaks.max()), 3),
                "reduction_mean": round(float(cr.mean()), 4),
                "reduction_min": round(float(cr.min()), 4),
                "reduction_max": round(float(cr.max()), 4),
            },
            "norms_clean": [round(float(x), 3) for x in self.norms_clean],
            "norms_intervened": [round(float(x), 3) for x in self.norms_intervened],
            "norms_control_mean": [round(float(x), 3) for x in self.norms_control.mean(0)],
            "candidates": [c.to_dict() for c in self.candidates],
        }


@dataclass(frozen=True, eq=False)
class LeverReport:
    """Levers of every initial-token major defect (others are listed in ``skipped`` with the reason)."""

    model: str
    levers: list[Lever]
    skipped: dict[str, str]

    def __len__(self) -> int:
        return len(self.levers)

    def __iter__(self):
        return iter(self.levers)

    def __getitem__(self, i: int) -> Lever:
        return self.levers[i]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "levers": [x.to_dict() for x in self.levers], "skipped": dict(self.skipped)}


def _norms(model: HookedModel, tokens: Tensor, n_layers: int, hooks: list[tuple[str, HookFn]]) -> Tensor:
    """The initial token's resid_pre norm of block 0, then its resid_post norm at every block: [n_layers + 1]."""
    names = [act_name("resid_pre", 0)] + [act_name("resid_post", layer) for layer in range(n_layers)]
    out = run(model, tokens, {n: first_row(token_norms) for n in names}, fwd_hooks=hooks)
    return torch.stack([out[n][0] for n in names])


_RAW_HOOK = {"attn": "blocks.{}.attn.hook_out", "ffn": "blocks.{}.mlp.hook_out"}


def _post_scale(view: ModelView, layer: int, sublayer: str) -> Tensor | None:
    b = view.block(layer)
    scale = b.attn_post_scale if sublayer == "attn" else b.mlp_post_scale
    return None if scale is None else scale.cpu()


def lever_sites(
    model: HookedModel, tokens: Tensor, direction: Float[Tensor, " d_model"], n_layers: int
) -> tuple[dict[tuple[int, str], tuple[str, Tensor]], dict[tuple[int, str], float]]:
    """For every (block, sublayer): the hook a lever edits and the direction it removes there.

    Before a post-norm with effective scale ``γ`` (checked on ``tokens``: the norm of the hook's
    value must give ``hook_attn_out`` / ``hook_mlp_out`` within 1e-4), the pre-norm output and
    ``unit(γ ⊙ u)``; else the sublayer's output and ``u``. The second dict gives, for the sites
    before a post-norm, the norm of the clean pre-norm output at the first position of ``tokens``.
    """
    view = model_view(model)
    u = unit(direction.detach().float().cpu())
    out: dict[tuple[int, str], tuple[str, Tensor]] = {}
    base: dict[tuple[int, str], float] = {}
    raw: dict[str, tuple[int, str, Tensor, str]] = {}
    for layer in range(n_layers):
        for s in ("attn", "ffn"):
            post = act_name(_SUBLAYER_HOOK[s], layer)
            out[(layer, s)] = (post, u)
            scale = _post_scale(view, layer, s)
            name = _RAW_HOOK[s].format(layer)
            if scale is not None and name in model.hook_dict:
                raw[name] = (layer, s, scale, post)
    if raw:
        names = list(raw) + [r[3] for r in raw.values()]
        vals = run(model, tokens, {n: first_row(lambda a, b: a.float()) for n in names})
        for name, (layer, s, scale, post) in raw.items():
            normed = view.block(layer).post_norm(vals[name], scale)
            err = float((normed - vals[post]).norm() / vals[post].norm().clamp(min=1e-12))
            if err <= 1e-4:
                out[(layer, s)] = (name, unit(scale * u))
                base[(layer, s)] = float(vals[name].norm())
    return out, base


def _sites_hooks(
    sites: list[tuple[int, str]], where: dict[tuple[int, str], tuple[str, Tensor]], make: Any
) -> list[tuple[str, HookFn]]:
    return [(where[site][0], make(i, where[site][1])) for i, site in enumerate(sites)]


def lever_candidates(att: DefectAttribution) -> list[tuple[str, list[tuple[int, str]]]]:
    """Interventions to try, in order, all read from the attribution (no model-specific choice).

    1. the dominant sublayer (the larger ``attn`` / ``ffn``) at each block of the explosion set;
    2. both sublayers at each block of the explosion set (the other one can rebuild the component);
    3. every sublayer that adds along the direction, from the first block of the explosion set to
       the peak (a build-up that feeds itself is rebuilt by the blocks after the set).
    Duplicates are dropped.
    """
    ex = att.explosion_set
    if not ex:
        return []
    dominant: list[tuple[int, str]] = [(layer, att.dominant(layer)) for layer in ex]
    both = [(layer, s) for layer in ex for s in ("attn", "ffn")]
    adding = [
        (layer, s)
        for layer in range(ex[0], att.peak_layer + 1)
        for s, v in (("attn", att.attn), ("ffn", att.ffn))
        if float(v[layer]) > 0
    ]
    out: list[tuple[str, list[tuple[int, str]]]] = []
    for name, sites in (
        ("dominant sublayer at the explosion set", dominant),
        ("both sublayers at the explosion set", both),
        ("every adding sublayer from the explosion set to the peak", adding),
    ):
        if sites and all(sites != s for _, s in out):
            out.append((name, sites))
    return out


def find_lever(
    model: HookedModel,
    report: DefectReport,
    attribution: ComponentAttribution,
    *,
    n_seeds: int = 5,
    seed: int = 0,
    target: float = 0.5,
) -> LeverReport:
    """A causal lever for each major defect of the initial token, chosen from ``attribution``.

    Tries :func:`lever_candidates` in order on the initial token alone (its state is the same in
    every text): each removes the defect-direction component of the named sublayer outputs
    (before a post-norm, where the block has one, so that the normed output has none: see
    :func:`lever_sites`). The first candidate that removes at least
    ``target`` of the peak norm is chosen, else the one that removes the most. The control removes,
    at the chosen sites, a vector of the same norm along a random unit direction, for ``n_seeds``
    seeds (``seed``, ``seed + 1``, ...).

    Args:
        model: the model.
        report: its :class:`~sd_lens.analyses.defects.DefectReport`.
        attribution: :func:`component_attribution` of ``report`` (with ``split="hooks"``: the lever
            edits the sublayer outputs at those hooks).
        n_seeds: random control directions.
        seed: the first control seed.
        target: the fraction of the peak norm a lever should remove (``achieved``).
    """
    if n_seeds < 1:
        raise InputError(f"n_seeds must be at least 1, got {n_seeds}")
    if not (math.isfinite(target) and 0 < target <= 1):
        raise InputError(f"target must be in (0, 1], got {target}")
    if len(attribution) != len(report) or any(a.defect != d.index for a, d in zip(attribution, report)):
        raise InputError("the attribution was not computed from this report (its defects differ)")
    if attribution.split != "hooks":
        raise UnsupportedArchitectureError(
            f"the attribution used split={attribution.split!r}: the lever edits hook_attn_out / hook_mlp_out, "
            "which do not carry the values added to the residual in this model"
        )
    n_layers = attribution.n_layers
    starts = sorted(a.first_layer for a in attribution if a.initial_token)
    seeds = list(range(seed, seed + n_seeds))
    levers: list[Lever] = []
    skipped: dict[str, str] = {}
    for att in attribution:
        if not att.initial_token:
            skipped[att.label] = "not carried by the initial token"
            continue
        cands = lever_candidates(att)
        if not cands:
            skipped[att.label] = "no block adds to its component (empty explosion set)"
            continue
        later = [s for s in starts if s > att.first_layer]
        window = (att.first_layer, (later[0] - 1) if later else n_layers - 1)
        tokens = att.carriers[0][None]
        where, base = lever_sites(model, tokens, att.direction, n_layers)
        levers.append(_lever(model, att, cands, where, base, tokens, window, seeds, target, n_layers))
    return LeverReport(model=attribution.model, levers=levers, skipped=skipped)


def _lever(
    model: HookedModel,
    att: DefectAttribution,
    cands: list[tuple[str, list[tuple[int, str]]]],
    where: dict[tuple[int, str], tuple[str, Tensor]],
    base: dict[tuple[int, str], float],
    tokens: Tensor,
    window: tuple[int, int],
    seeds: list[int],
    target: float,
    n_layers: int,
) -> Lever:
    """One defect's lever: the engine over the candidates (stopping at the first that reaches ``target``),
    the matched random controls of the chosen one."""
    d_model = int(model.cfg.d_model)

    def peak(norms: Tensor) -> float:  # norms: the resid_pre of block 0, then each block's resid_post
        return float(norms[1:][window[0] : window[1] + 1].max())

    def remove(candidate: int) -> Trial:
        sites = cands[candidate][1]
        runs: list[list[float]] = [[] for _ in sites]
        return Trial(_sites_hooks(sites, where, lambda i, w: remove_along(w, [0], runs[i])), record={"removed": runs})

    def control(trial: Trial, seed: int, candidate: int) -> Trial:
        r, removed = random_direction(d_model, seed), [x[0] for x in trial.record["removed"]]
        return Trial(_sites_hooks(cands[candidate][1], where, lambda i, w: remove_matched(r, removed[i], [0])))

    def chosen(effects: dict[tuple[int, ...], float]) -> list[tuple[int, ...]]:
        return [next((p for p, e in effects.items() if e >= target), max(effects, key=lambda p: effects[p]))]

    out = sweep(
        model, {"candidate": range(len(cands))}, remove,
        measure=lambda trial: _norms(model, tokens, n_layers, list(trial.hooks)),
        effect=lambda norms, clean: 1.0 - peak(norms) / peak(cast(Tensor, clean)),
        stop=lambda e: e >= target, control=control, seeds=seeds, choose=chosen,
    )
    assert out.clean is not None
    tried = [LeverCandidate(cands[i][0], cands[i][1], peak(out.values[(i,)]), float(out.effect[i])) for (i,) in out.points]
    (best,) = out.stats
    cand = tried[out.points.index(best)]
    removed = [x[0] for x in out.trials[best].record["removed"]]
    clean_all = out.clean
    return Lever(
        defect=att.defect, label=att.label, name=cand.name, sites=cand.sites,
        hooks=[where[site][0] for site in cand.sites], window=window,
        removed=removed, relative_size=[
            x / max(base.get(site, float(clean_all[site[0]])), 1e-12) for x, site in zip(removed, cand.sites)
        ],
        norms_clean=clean_all[1:], norms_intervened=out.values[best][1:],
        norms_control=torch.stack([v[1:] for v in out.control_values(candidate=best[0])]), seeds=seeds,
        target=target, candidates=tried,
    )
