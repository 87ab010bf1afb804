"""Causal checks from the local Jacobian: FFN-input interventions at a defect's carriers, against matched
random controls, and patching.

The Jacobian itself (:class:`~sd_lens.analyses.causal.jacobian.LocalJacobian`, ``v_local``, ``steer``,
``gain``) is :mod:`sd_lens.analyses.causal.jacobian`.

**Which input direction to ablate.** With ``u`` the defect direction, the FFN adds ``c = u·f(n)``
along it. To first order, an edit ``n → n − δ`` changes that by ``−uᵀJδ = −(Jᵀu)·δ``. Among all
edits that change it by a given amount, the smallest is along ``w = Jᵀu / ‖Jᵀu‖`` (Cauchy–Schwarz),
so ``w`` (``steer``) is the input direction whose removal the local linear model predicts removes
the most output along the defect direction per unit of edit; ``gain = ‖Jᵀu‖`` is that rate. The
top right singular vector ``v_local`` is the direction that changes the output *most in any
direction* — which need not be the defect direction, and need not be where ``n`` has a component.
Interventions (hook ``ln2.hook_normalized`` of the block, at the carrier position only):

* ``gaussian_v0``: project out the Gaussian fit's ``v0`` (the paper's ablation);
* ``local_top``: project out ``v_local``;
* ``local_steer``: project out ``w``;
* ``local_cancel``: subtract ``a · (c / gain) · w``, for each fraction ``a`` of ``cancel_fractions``:
  ``a = 1`` is the minimum-norm edit the local linear model predicts cancels what the FFN adds
  along ``u`` (for a linear map with no offset, projecting out ``w`` is the same edit; with an
  offset or a non-linearity the two differ), smaller ``a`` smaller edits.

Each is run at every block of the defect's explosion set alone, and at all of them together
(``combined``). The effect is the carrier's **peak** ``resid_post`` norm over the defect's window
(its first block to its last; for an initial-token defect, to the block before the next
initial-token defect starts, as in :func:`~sd_lens.analyses.causal.lever.find_lever`):
``reduction = 1 − peak_intervened / peak_clean`` (mean over carriers).

**Control.** The same hook removes, at the same positions and blocks, a vector of *exactly the same
norm* as the intervention removed there (the norm recorded in the intervened run), along a random
unit direction, for ``n_seeds`` seeds (:func:`~sd_lens.analyses.attribution.remove_matched`).
``specific``: the intervention reduces the peak more than the control under every seed. Sizes are
reported relative to ``‖n‖`` and, through ``γ₂``, relative to the effective input (a random
direction and a masked-channel-free direction of the same ``n``-norm can differ a lot in what the
FFN sees: ``effective_size`` of both is reported).

**Which model fits.** At single-block interventions the real change of the added value
``Δ = mlp_out(intervened) − mlp_out(clean)`` (read from the hook) is compared with the local linear
prediction ``J δn`` and the Gaussian fit's ``P_y F δn`` (``F`` is the fit's linear map of the FFN,
``P_y`` the exact Jacobian of the post-norm at the real FFN output, identity without a post-norm):
``local_error`` and ``gaussian_error`` are ``‖prediction − Δ‖ / ‖Δ‖``.

**Patching** (the paper's other half of the causal test, and item 8 for noninitial defects): a
non-carrier token of the same sequence (of the first few non-initial positions that are not the
carrier, the one with the lowest norm where the carrier's norm peaks) gets its coefficient along
the direction set to the carrier's (:func:`sd_lens.interventions.set_coefficient`) at one block of
the explosion set; its norm at the carrier's peak block is compared with its clean one and with
the carrier's. The sequence is the carrier prefix of a noninitial defect (its carrier is the last
token) or, for the initial token, the probe's first text of more than two tokens.

The interventions run on the experiment engine (:func:`~sd_lens.analyses.causal.engine.sweep`): for each
site, the axes are the carriers and the (kind, fraction) edits; the edits of one carrier run as the rows of
one forward, and all their controls as the rows of one more.

References: Wang et al., *Demystifying Singular Defects in Large Language Models* (ICML 2025)
(the least-squares linearisation, observation (iv) and its ablation/patching test); Sun et al.,
*Massive Activations in Large Language Models* (2024) (interventions on activations).

Why one file over 600 lines: one job, the local-Jacobian interventions at a defect's carriers with
their matched controls and patching, as a specialisation of the engine (the math is in ``jacobian.py``);
most of the length is the typed result rows and their summaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.analyses.attribution import ComponentAttribution, DefectAttribution, component_attribution
from sd_lens.analyses.causal.engine import Trial, random_direction, sweep
from sd_lens.analyses.causal.jacobian import (
    LocalJacobian,
    _at,
    _local_from,
    _quiet_run,
    _r,
    added_value_map,
    visible_channels,
)
from sd_lens.analyses.defects import DefectReport
from sd_lens.analyses.ffn_fit import FFNFit, Method, fit_ffn
from sd_lens.analyses.probe import NormProbe
from sd_lens.errors import InputError
from sd_lens.interventions import set_coefficient
from sd_lens.linalg import unit
from sd_lens.models.metadata import model_dtype
from sd_lens.models.view import BlockView, ModelView, model_view
from sd_lens.runtime.hooks import act_name, ffn_input, require_hooks
from sd_lens.runtime.precision import closure_rtol
from sd_lens.runtime.reducers import first_row, token_norms
from sd_lens.types import HookedModel, HookFn

__all__ = [
    "KINDS",
    "DefectCheck",
    "Intervention",
    "LocalCausalReport",
    "Patch",
    "local_causal_checks",
    "row_edits",
    "subtract",
]

Kind = Literal["gaussian_v0", "local_top", "local_steer", "local_cancel"]
#: the interventions, in order (see the module docstring)
KINDS: tuple[str, ...] = ("gaussian_v0", "local_top", "local_steer", "local_cancel")
_PATCH_KINDS: tuple[str, ...] = ("gaussian_v0", "local_top", "local_steer")



# ------------------------------------------------------------------------------------------------
# interventions
# ------------------------------------------------------------------------------------------------
def subtract(vector: Float[Tensor, " d"], positions: list[int]) -> HookFn:
    """Hook subtracting a fixed ``vector`` at ``positions`` (the ``local_cancel`` edit); returns a new tensor."""
    v_cpu = vector.detach().float()
    sel = list(positions)

    def hook(act: Tensor, hook: Any) -> Tensor:
        out = act.clone()
        out[:, sel] = (act[:, sel].float() - v_cpu.to(act.device)).to(act.dtype)
        return out

    return hook


@dataclass(frozen=True, eq=False)
class Intervention:
    """One FFN-input intervention on a defect's carriers (means over carriers), with its control.

    ``kind``: one of :data:`KINDS`; ``fraction``: of the ``local_cancel`` edit (1 otherwise).
    ``blocks``: where it acts (one block, or the whole explosion set: ``combined``). ``removed``:
    the norm of the edit ``δn`` at each block (mean over carriers); ``relative_size``: over ``‖n‖``;
    ``effective_size``: ``‖γ₂ ⊙ δn‖`` over the effective input ``‖γ₂ ⊙ n + β₂‖`` (clean);
    ``control_effective_size``: the same for the control's random vectors (mean over seeds).
    ``reduction``: ``1 − peak_intervened / peak_clean`` of the carrier's peak norm over the window,
    ``control_reductions``: ``[n_seeds]`` the same for the matched random control. ``real_change``,
    ``local_pred``, ``gaussian_pred``: the change of the added value along the defect direction
    (single-block interventions only, else NaN), ``local_error``/``gaussian_error``: relative error
    of the whole predicted change vector.
    """

    kind: str
    blocks: list[int]
    fraction: float
    removed: list[float]
    relative_size: list[float]
    effective_size: list[float]
    control_effective_size: list[float]
    peak_clean: float
    peak_intervened: float
    reduction: float
    control_reductions: Tensor
    seeds: list[int]
    target: float
    real_change: float = float("nan")
    local_pred: float = float("nan")
    gaussian_pred: float = float("nan")
    local_error: float = float("nan")
    gaussian_error: float = float("nan")

    @property
    def combined(self) -> bool:
        return len(self.blocks) > 1

    @property
    def specific(self) -> bool:
        return self.reduction > float(self.control_reductions.max())

    @property
    def achieved(self) -> bool:
        return self.reduction >= self.target

    @property
    def better_model(self) -> str | None:
        """``"local"`` or ``"gaussian"``: whose prediction of the real change was closer (None if not measured)."""
        if not (math.isfinite(self.local_error) and math.isfinite(self.gaussian_error)):
            return None
        return "local" if self.local_error <= self.gaussian_error else "gaussian"

    def to_dict(self) -> dict[str, Any]:
        cr = self.control_reductions
        return {
            "kind": self.kind,
            "blocks": list(self.blocks),
            "fraction": self.fraction,
            "removed": [_r(x) for x in self.removed],
            "relative_size": [_r(x) for x in self.relative_size],
            "effective_size": [_r(x) for x in self.effective_size],
            "control_effective_size": [_r(x) for x in self.control_effective_size],
            "peak_clean": _r(self.peak_clean, 6),
            "peak_intervened": _r(self.peak_intervened, 6),
            "reduction": _r(self.reduction),
            "achieved": self.achieved,
            "specific": self.specific,
            "control": {
                "seeds": list(self.seeds),
                "reduction_mean": _r(float(cr.mean())),
                "reduction_min": _r(float(cr.min())),
                "reduction_max": _r(float(cr.max())),
            },
            "fit": None if self.combined else {
                "real_change": _r(self.real_change),
                "local_pred": _r(self.local_pred),
                "gaussian_pred": _r(self.gaussian_pred),
                "local_error": _r(self.local_error),
                "gaussian_error": _r(self.gaussian_error),
                "better": self.better_model,
            },
        }


@dataclass(frozen=True, eq=False)
class Patch:
    """A non-carrier token's coefficient along a direction set to the carrier's, at one block.

    ``norm_before``/``norm_after``: that token's ``resid_post`` norm at ``peak_block`` (the block
    where the carrier's norm peaks in the window), clean and patched; ``carrier_norm``: the
    carrier's there (the carrier is at ``carrier_position`` of the same sequence). ``ratio = norm_after / carrier_norm``: 1 would mean the patch made the token a
    carrier; ``gain = norm_after / norm_before``.
    """

    kind: str
    layer: int
    position: int
    carrier_position: int
    coefficient_before: float
    coefficient_after: float
    peak_block: int
    norm_before: float
    norm_after: float
    carrier_norm: float

    @property
    def ratio(self) -> float:
        return self.norm_after / max(self.carrier_norm, 1e-30)

    @property
    def gain(self) -> float:
        return self.norm_after / max(self.norm_before, 1e-30)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "layer": self.layer, "position": self.position, "carrier_position": self.carrier_position,
            "coefficient_before": _r(self.coefficient_before), "coefficient_after": _r(self.coefficient_after),
            "peak_block": self.peak_block, "norm_before": _r(self.norm_before, 6), "norm_after": _r(self.norm_after, 6),
            "carrier_norm": _r(self.carrier_norm, 6), "ratio": _r(self.ratio), "gain": _r(self.gain),
        }


@dataclass(frozen=True, eq=False)
class DefectCheck:
    """Local Jacobians, interventions and patching of one major defect (see the module docstring).

    ``jacobians``: block -> the local Jacobian at the first carrier; ``interventions``: every kind at
    every block of ``blocks`` alone, then at all of them (``combined``); ``skipped``: why a block
    or a kind was left out (e.g. its map does not close).
    """

    defect: int
    label: str
    initial_token: bool
    window: tuple[int, int]
    blocks: list[int]
    n_carriers: int
    jacobians: dict[int, LocalJacobian]
    interventions: list[Intervention]
    patches: list[Patch]
    skipped: dict[str, str]

    def best(self, specific: bool = True) -> Intervention | None:
        """The intervention that reduces the peak most (among the specific ones by default)."""
        pool = [x for x in self.interventions if x.specific or not specific]
        return max(pool, key=lambda x: x.reduction, default=None)

    def find(self, kind: str, blocks: list[int], fraction: float = 1.0) -> Intervention:
        """The intervention of ``kind`` at ``blocks`` (``fraction``: of a ``local_cancel``)."""
        for x in self.interventions:
            if x.kind == kind and x.blocks == blocks and x.fraction == fraction:
                return x
        raise KeyError((kind, blocks, fraction))

    def to_dict(self) -> dict[str, Any]:
        best = self.best()
        return {
            "defect": self.defect, "label": self.label, "initial_token": self.initial_token,
            "window": list(self.window), "blocks": list(self.blocks), "n_carriers": self.n_carriers,
            "jacobians": {str(k): v.to_dict() for k, v in self.jacobians.items()},
            "interventions": [x.to_dict() for x in self.interventions],
            "best_specific": None if best is None else {
                "kind": best.kind, "blocks": best.blocks, "fraction": best.fraction, "reduction": _r(best.reduction),
            },
            "patches": [p.to_dict() for p in self.patches],
            "skipped": dict(self.skipped),
        }


@dataclass(frozen=True, eq=False)
class LocalCausalReport:
    """:class:`DefectCheck` of every major defect (iterate)."""

    model: str
    n_seeds: int
    seed: int
    target: float
    checks: list[DefectCheck]

    def __len__(self) -> int:
        return len(self.checks)

    def __iter__(self):
        return iter(self.checks)

    def __getitem__(self, i: int) -> DefectCheck:
        return self.checks[i]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "n_seeds": self.n_seeds, "seed": self.seed, "target": self.target,
            "checks": [c.to_dict() for c in self.checks],
        }


# ------------------------------------------------------------------------------------------------
# the checks
# ------------------------------------------------------------------------------------------------
class _Carrier:
    """One carrier sequence: its clean reads and local Jacobians."""

    def __init__(self, tokens: Tensor, pos: int):
        self.tokens = tokens
        self.pos = pos
        self.norms = torch.zeros(0)  # [n_blocks_read, T] resid_post norms
        self.local: dict[int, LocalJacobian] = {}


def _reads(
    model: HookedModel, tokens: Tensor, pos: int, hi: int, blocks: Sequence[int], hooks: Sequence[tuple[str, HookFn]] = ()
) -> tuple[Tensor, dict[int, tuple[Tensor, Tensor]]]:
    """resid_post norms ``[hi + 1, T]`` of every position, and (n, mlp_out) at ``pos`` of ``blocks``."""
    reducers: dict[str, Any] = {act_name("resid_post", layer): first_row(token_norms) for layer in range(hi + 1)}
    for layer in blocks:
        reducers[ffn_input(layer)] = _at(pos)
        reducers[act_name("mlp_out", layer)] = _at(pos)
    out = _quiet_run(model, tokens[None], reducers, hooks)
    norms = torch.stack([out[act_name("resid_post", layer)] for layer in range(hi + 1)])
    return norms, {layer: (out[ffn_input(layer)], out[act_name("mlp_out", layer)]) for layer in blocks}


def _window(att: DefectAttribution, attribution: ComponentAttribution) -> tuple[int, int]:
    if not att.initial_token:
        return att.first_layer, att.last_layer
    later = sorted(a.first_layer for a in attribution if a.initial_token and a.first_layer > att.first_layer)
    return att.first_layer, (later[0] - 1) if later else attribution.n_layers - 1


def _edit(kind: str, loc: LocalJacobian, fit: FFNFit | None, fraction: float = 1.0) -> tuple[Tensor, bool] | None:
    """(direction, is_projection) of an intervention; for ``local_cancel`` the subtracted vector."""
    if kind == "gaussian_v0":
        return (fit.v0, True) if fit is not None else None
    if kind == "local_top":
        return loc.v_local, True
    if loc.steer is None or not loc.gain > 0:
        return None
    if kind == "local_steer":
        return loc.steer, True
    return (fraction * loc.added / loc.gain) * loc.steer, False  # local_cancel


def local_causal_checks(
    model: HookedModel,
    report: DefectReport,
    probe: NormProbe,
    attribution: ComponentAttribution | None = None,
    *,
    n_seeds: int = 5,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    cancel_fractions: Sequence[float] = (0.5, 1.0),
    max_carriers: int = 4,
    target: float = 0.5,
    rtol: float | None = None,
    gaussian_method: Method = "gaussian",
    patch: bool = True,
    patch_candidates: int = 4,
) -> LocalCausalReport:
    """Local Jacobians and FFN-input interventions with matched random controls, for every major defect.

    For each major defect: its carriers (the initial token alone, or up to ``max_carriers`` carrier
    prefixes of a noninitial defect), its explosion set from ``attribution`` (the peak block when the
    set is empty), the local Jacobian at each of those blocks and carriers, the interventions
    ``kinds`` at each block alone and at all together, each with ``n_seeds`` matched random controls,
    and (``patch``) patching of a non-carrier token. See the module docstring.

    Args:
        model: the model.
        report: :func:`~sd_lens.analyses.defects.find_defects` of ``probe``.
        probe: the norm probe (carrier prefixes and the patching text).
        attribution: :func:`~sd_lens.analyses.attribution.component_attribution` of ``report``
            (computed when None).
        n_seeds: random control directions per intervention (seeds ``seed``, ``seed + 1``, ...).
        seed: the first seed.
        kinds: which of :data:`KINDS` to run.
        cancel_fractions: the fractions ``a`` of the ``local_cancel`` edit (one intervention each).
        max_carriers: carrier prefixes per noninitial defect.
        target: the reduction of the peak an intervention should reach (``achieved``).
        rtol: a block whose map does not reproduce ``hook_mlp_out`` within this is skipped (default: 1e-3,
            or 4 machine epsilons of the model's dtype where larger; see
            :func:`~sd_lens.runtime.precision.closure_rtol`).
        gaussian_method: the :func:`~sd_lens.analyses.ffn_fit.fit_ffn` method of the Gaussian fit.
        patch: run the patching check.
        patch_candidates: the patched token is the lowest-norm non-carrier among this many positions.

    Raises:
        InputError: bad arguments (before any forward).
    """
    if n_seeds < 1:
        raise InputError(f"n_seeds must be at least 1, got {n_seeds}")
    if max_carriers < 1:
        raise InputError(f"max_carriers must be at least 1, got {max_carriers}")
    if not (math.isfinite(target) and 0 < target <= 1):
        raise InputError(f"target must be in (0, 1], got {target}")
    if rtol is None:
        rtol = closure_rtol(model_dtype(model), 1e-3)
    if not (math.isfinite(rtol) and rtol > 0):
        raise InputError(f"rtol must be a positive number, got {rtol}")
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise InputError(f"unknown intervention kind(s) {bad}; choose from {', '.join(KINDS)}")
    if "local_cancel" in kinds and (
        not cancel_fractions or not all(math.isfinite(a) and a > 0 for a in cancel_fractions)
    ):
        raise InputError(f"cancel_fractions must be positive numbers, got {list(cancel_fractions)}")
    if patch_candidates < 1:
        raise InputError(f"patch_candidates must be at least 1, got {patch_candidates}")
    if report.n_layers != probe.n_layers or report.n_layers != int(model.cfg.n_layers):
        raise InputError("report, probe and model cover different numbers of blocks")
    if attribution is not None and (
        len(attribution) != len(report) or any(a.defect != d.index for a, d in zip(attribution, report))
    ):
        raise InputError("the attribution was not computed from this report (its defects differ)")
    n_layers = int(model.cfg.n_layers)
    require_hooks(model, [ffn_input(x) for x in range(n_layers)] + [act_name("mlp_out", x) for x in range(n_layers)])
    if attribution is None:
        attribution = component_attribution(model, report, probe, max_carriers=max_carriers)
    view = model_view(model)
    fits: dict[int, FFNFit] = {}
    d_model = int(model.cfg.d_model)
    seeds = list(range(seed, seed + n_seeds))
    randoms = [random_direction(d_model, s) for s in seeds]
    checks = []
    for att in attribution:
        skipped: dict[str, str] = {}
        window = _window(att, attribution)
        blocks = list(att.explosion_set) or [att.peak_layer]
        u = att.direction
        carriers = [_Carrier(p, len(p) - 1) for p in att.carriers[:max_carriers]]
        for c in carriers:
            c.norms, reads = _reads(model, c.tokens, c.pos, window[1], blocks)
            for layer in blocks:
                if layer not in fits:
                    fits[layer] = fit_ffn(view.block(layer), method=gaussian_method, n_eval=0)
                n, real = reads[layer]
                c.local[layer] = _local_from(view.block(layer).to("cpu"), n, real, u, fits[layer], rtol, torch.float64)
        good = []
        for layer in blocks:
            errs = [c.local[layer].closure_error for c in carriers]
            if max(errs) > rtol:
                skipped[f"block {layer}"] = (
                    f"the map n -> added value does not reproduce hook_mlp_out (relative error {max(errs):.3g} > {rtol:g})"
                )
            else:
                good.append(layer)
        sites = [[layer] for layer in good] + ([good] if len(good) > 1 else [])
        plans = [(kind, a) for kind in kinds for a in (cancel_fractions if kind == "local_cancel" else [1.0])]
        interventions = []
        for site in sites:
            done = _intervene(model, view, carriers, plans, site, fits, randoms, seeds, window, target, u)
            for kind, a in plans:
                if not any(x.kind == kind and x.fraction == a for x in done):
                    skipped[f"{kind} at {site}"] = "no such direction (no Gaussian fit, or zero gain along the defect)"
            interventions.extend(done)
        order = {p: i for i, p in enumerate(plans)}
        interventions.sort(key=lambda x: (order[(x.kind, x.fraction)], len(x.blocks) > 1))
        patches = _patches(model, probe, att, carriers[0], good, fits, window, patch_candidates) if patch else []
        checks.append(
            DefectCheck(
                defect=att.defect, label=att.label, initial_token=att.initial_token, window=window, blocks=blocks,
                n_carriers=len(carriers), jacobians={layer: carriers[0].local[layer] for layer in blocks},
                interventions=interventions, patches=patches, skipped=skipped,
            )
        )
    return LocalCausalReport(model=report.model, n_seeds=n_seeds, seed=seed, target=target, checks=checks)


def _peak(norms: Tensor, pos: int, window: tuple[int, int]) -> float:
    return float(norms[window[0] : window[1] + 1, pos].max())


Spec = tuple[str, Tensor, float]  # (mode, vector, size): "project" | "subtract" | "matched"


def row_edits(specs: Sequence[Spec | None], position: int, removed: list[float] | None = None) -> HookFn:
    """Hook editing each row of a batch of copies of one sequence differently, at ``position``.

    ``specs[b]`` for row ``b``: ``("project", v, _)`` removes the component along ``v`` (as
    :func:`~sd_lens.analyses.attribution.remove_along`, appending the removed norm of each row to
    ``removed``), ``("subtract", v, _)`` subtracts ``v`` (as :func:`subtract`), ``("matched", r, s)``
    removes ``sign(act · r) · s · r`` (as :func:`~sd_lens.analyses.attribution.remove_matched`);
    None leaves the row alone. One forward then runs an intervention and all its controls.
    """
    rows = [(b, sp[0], unit(sp[1].detach().float()) if sp[0] != "subtract" else sp[1].detach().float(), sp[2])
            for b, sp in enumerate(specs) if sp is not None]

    def hook(act: Tensor, hook: Any) -> Tensor:
        out = act.clone()
        sizes = [0.0] * act.shape[0]
        for b, mode, v_cpu, size in rows:
            v = v_cpu.to(act.device)
            x = act[b, position].float()
            if mode == "project":
                coef = x @ v
                out[b, position] = (x - coef * v).to(act.dtype)
                sizes[b] = float(coef.abs())
            elif mode == "subtract":
                out[b, position] = (x - v).to(act.dtype)
                sizes[b] = float(v.norm())
            else:
                sign = 1.0 if float(x @ v) >= 0 else -1.0
                out[b, position] = (x - sign * size * v).to(act.dtype)
                sizes[b] = size
        if removed is not None:
            removed.extend(sizes)
        return out

    return hook


def _reads_rows(
    model: HookedModel, tokens: Tensor, pos: int, hi: int, blocks: Sequence[int], rows: int,
    hooks: Sequence[tuple[str, HookFn]] = (),
) -> tuple[Tensor, dict[int, tuple[Tensor, Tensor]]]:
    """:func:`_reads` of ``rows`` copies of ``tokens``: norms ``[rows, hi + 1, T]``, reads ``[rows, d]``."""
    reducers: dict[str, Any] = {act_name("resid_post", layer): token_norms for layer in range(hi + 1)}
    for layer in blocks:
        for name in (ffn_input(layer), act_name("mlp_out", layer)):
            reducers[name] = lambda a, b: a[:, pos].double()
    out = _quiet_run(model, tokens[None].expand(rows, -1), reducers, hooks)
    norms = torch.stack([out[act_name("resid_post", layer)] for layer in range(hi + 1)], dim=1)
    return norms, {layer: (out[ffn_input(layer)], out[act_name("mlp_out", layer)]) for layer in blocks}


class _Read(NamedTuple):
    """One row of a forward of copies of a carrier's sequence: the resid_post norms ``[hi + 1, T]``, the
    (FFN input, mlp_out) at the carrier of each block of the site (edits only), the carrier's clean peak
    and its position."""

    norms: Tensor
    reads: dict[int, tuple[Tensor, Tensor]]
    peak_clean: float
    pos: int


@dataclass(frozen=True)
class _Row:
    """What one (carrier, edit) measured besides the peak: the sizes of the edit at each block of the site
    and, at a single block, the fit of the local and Gaussian predictions (NaN otherwise)."""

    peak_clean: float
    peak_intervened: float
    removed: list[float]
    relative: list[float]
    effective: list[float]
    control_effective: list[float]
    fit: list[float]


def _intervene(
    model: HookedModel,
    view: ModelView,
    carriers: list[_Carrier],
    plans: list[tuple[str, float]],
    site: list[int],
    fits: dict[int, FFNFit],
    randoms: list[Tensor],
    seeds: list[int],
    window: tuple[int, int],
    target: float,
    u: Tensor,
) -> list[Intervention]:
    """Every (kind, fraction) of ``plans`` at ``site`` on the engine: per carrier, one forward for them all
    (one row each) and one for all their controls (one row per edit and seed)."""
    plans = [p for p in plans if all(_edit(p[0], c.local[x], fits.get(x), p[1]) is not None for c in carriers for x in site)]
    if not plans:
        return []
    random_of = dict(zip(seeds, randoms))

    def edit(carrier: int, plan: int) -> Trial:
        c, (kind, a) = carriers[carrier], plans[plan]
        specs: list[Spec] = []
        for x in site:
            e = _edit(kind, c.local[x], fits.get(x), a)
            assert e is not None  # the plans were filtered above
            specs.append(("project" if e[1] else "subtract", e[0], 0.0))
        return Trial(spec=(c, specs), record={"removed": []})

    def control(trial: Trial, seed: int, carrier: int, plan: int) -> Trial:
        c, sizes = carriers[carrier], trial.record["removed"]
        return Trial(spec=(c, [("matched", random_of[seed], sizes[i]) for i in range(len(site))]))

    def rows(trials: list[Trial]) -> list[_Read]:
        c = trials[0].spec[0]
        edits = "removed" in trials[0].record
        sizes: list[list[float]] = [[] for _ in site]
        hooks = [(ffn_input(x), row_edits([t.spec[1][i] for t in trials], c.pos, sizes[i] if edits else None))
                 for i, x in enumerate(site)]
        norms, reads = _reads_rows(model, c.tokens, c.pos, window[1], site if edits else [], len(trials), hooks)
        for b, t in enumerate(trials):
            if edits:
                t.record["removed"] = [sizes[i][b] for i in range(len(site))]
        pc = _peak(c.norms, c.pos, window)
        return [_Read(norms[b], {x: (n[b], o[b]) for x, (n, o) in reads.items()}, pc, c.pos) for b in range(len(trials))]

    out = sweep(
        model, {"carrier": range(len(carriers)), "plan": range(len(plans))}, edit, measure_rows=rows, clean=False,
        effect=lambda v, _: 1.0 - _peak(v.norms, v.pos, window) / v.peak_clean, control=control, seeds=seeds,
    )
    uu = unit(u.double())
    table = [[_row(view, c, site, fits, out.values[(ci, b)], out.trials[(ci, b)], window, randoms, uu)
              for b in range(len(plans))] for ci, c in enumerate(carriers)]

    def mean(name: str) -> Tensor:  # over carriers, float64
        return torch.tensor([[getattr(r, name) for r in row] for row in table], dtype=torch.float64).mean(0)

    m = {name: mean(name) for name in ("peak_clean", "peak_intervened", "removed", "relative", "effective",
                                       "control_effective", "fit")}
    red, ctrl = out.effect.mean(0), out.control_effect.mean(0)
    return [
        Intervention(
            kind=kind, blocks=list(site), fraction=a,
            removed=m["removed"][b].tolist(), relative_size=m["relative"][b].tolist(),
            effective_size=m["effective"][b].tolist(), control_effective_size=m["control_effective"][b].tolist(),
            peak_clean=float(m["peak_clean"][b]), peak_intervened=float(m["peak_intervened"][b]),
            reduction=float(red[b]), control_reductions=ctrl[b].clone(), seeds=list(seeds), target=target,
            real_change=float(m["fit"][b, 0]), local_pred=float(m["fit"][b, 1]), gaussian_pred=float(m["fit"][b, 2]),
            local_error=float(m["fit"][b, 3]), gaussian_error=float(m["fit"][b, 4]),
        )
        for b, (kind, a) in enumerate(plans)
    ]


def _row(
    view: ModelView,
    c: _Carrier,
    site: list[int],
    fits: dict[int, FFNFit],
    value: _Read,
    trial: Trial,
    window: tuple[int, int],
    randoms: list[Tensor],
    uu: Tensor,
) -> _Row:
    """The sizes of one carrier's edit and, at a single block, how well each linear model predicted it."""
    norms, reads, pc, _ = value
    locs = [c.local[x] for x in site]
    g2 = [(view.block(x).ln2_scale * visible_channels(view.block(x))).cpu() for x in site]
    rand_eff = [float(torch.stack([(g * r).norm() for r in randoms]).mean()) for g in g2]
    sizes = trial.record["removed"]
    dirs = [unit(vec.float()) for _, vec, _ in trial.spec[1]]
    fit = [float("nan")] * 5
    if len(site) == 1:
        layer, loc = site[0], locs[0]
        n_int, out_int = reads[layer]
        dn = n_int - loc.n.double()
        real = out_int - loc.real_out.double()
        lp = loc.J.double() @ dn
        f = fits.get(layer)
        gp = _gaussian_change(view.block(layer).to("cpu"), loc, f, dn) if f is not None else torch.full_like(lp, float("nan"))
        rn = float(real.norm()) or 1e-30
        fit = [float(real @ uu), float(lp @ uu), float(gp @ uu), float((lp - real).norm()) / rn, float((gp - real).norm()) / rn]
    return _Row(
        peak_clean=pc, peak_intervened=_peak(norms, c.pos, window),
        removed=list(sizes),
        relative=[s / max(loc.input_norm, 1e-30) for s, loc in zip(sizes, locs)],
        effective=[s * float((g * d).norm()) / max(loc.effective_input_norm, 1e-30) for s, g, d, loc in zip(sizes, g2, dirs, locs)],
        control_effective=[s * re / max(loc.effective_input_norm, 1e-30) for s, re, loc in zip(sizes, rand_eff, locs)],
        fit=fit,
    )


def _gaussian_change(view: BlockView, loc: LocalJacobian, fit: FFNFit, dn: Tensor) -> Tensor:
    """``P_y F δn``: the Gaussian fit's change of the FFN output through the exact post-norm Jacobian."""
    dy = fit.F.double() @ dn
    if view.mlp_post_scale is None:
        return dy
    y = added_value_map(view, torch.float64, post_norm=False)(loc.n.double())
    post = view.mlp_post_scale.double()
    with torch.enable_grad():
        change = torch.func.jvp(lambda t: view.post_norm(t, post), (y,), (dy,))[1]
    return change.detach()


def _patches(
    model: HookedModel,
    probe: NormProbe,
    att: DefectAttribution,
    carrier: _Carrier,
    blocks: list[int],
    fits: dict[int, FFNFit],
    window: tuple[int, int],
    n_candidates: int,
) -> list[Patch]:
    """Set a non-carrier token's coefficient to the carrier's, block by block (see the module docstring)."""
    if not blocks:
        return []
    if att.initial_token and carrier.pos == 0:
        tokens = next((s for s in probe.sequences if len(s) > 2), None)
        if tokens is None:
            return []
        tokens = tokens[: n_candidates + 2]
    else:
        tokens = carrier.tokens
    T = len(tokens)
    clean, reads = _reads(model, tokens, carrier.pos, window[1], blocks)
    cand = [p for p in range(1, min(T - 1, n_candidates + 1)) if p != carrier.pos]
    if not cand:
        return []
    lo, hi = window
    peak_block = lo + int(clean[lo : hi + 1, carrier.pos].argmax())
    pos = min(cand, key=lambda p: float(clean[peak_block, p]))
    _, own = _reads(model, tokens, pos, lo, blocks)

    def patch(layer: int, kind: str) -> Trial | None:  # the carrier's coefficient (in this sequence) at pos
        e = _edit(kind, carrier.local[layer], fits.get(layer))
        if e is None:
            return None
        v = unit(e[0].double())
        target_coef = float(reads[layer][0] @ v)
        hooks = [(ffn_input(layer), set_coefficient(v.float(), target_coef, [pos]))]
        return Trial(hooks, record={"v": v, "coefficient": target_coef})

    def measure(trial: Trial) -> Tensor:
        names = [act_name("resid_post", x) for x in range(window[1] + 1)]
        res = _quiet_run(model, tokens[None], {n: first_row(token_norms) for n in names}, trial.hooks)
        return torch.stack([res[n] for n in names])

    out = sweep(model, {"layer": blocks, "kind": _PATCH_KINDS}, patch, measure=measure, clean=False)
    return [
        Patch(
            kind=kind, layer=layer, position=pos, carrier_position=carrier.pos,
            coefficient_before=float(own[layer][0] @ out.trials[(layer, kind)].record["v"]),
            coefficient_after=out.trials[(layer, kind)].record["coefficient"],
            peak_block=peak_block, norm_before=float(clean[peak_block, pos]),
            norm_after=float(norms[peak_block, pos]), carrier_norm=float(clean[peak_block, carrier.pos]),
        )
        for (layer, kind), norms in out.values.items()
    ]
