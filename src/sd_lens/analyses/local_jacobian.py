"""The FFN linearised where a defect token actually is (a local Jacobian), and causal checks from it.

**Why.** Wang et al. (ICML 2025) linearise each block's FFN by a least-squares fit on unit
Gaussian inputs (:func:`~sd_lens.analyses.ffn_fit.fit_ffn`) and read the trigger of a defect off
the fit's leading right singular vector ``v0``. That is a model of the FFN *on average over
isotropic inputs*. A defect token's real input can be far from that: on Gemma-3 the initial
token's normalised FFN input is almost one-hot in a channel its pre-FFN norm masks (effective
scale ``1 + w = 0``), so the FFN sees a small remainder (norm ~1.5 instead of ~25), and the
post-FFN norm (gains of several hundred) rescales whatever comes out.

**Local Jacobian.** For a carrier token (the initial token, or the last token of a noninitial
defect's carrier prefix, :func:`~sd_lens.analyses.attribution.carrier_prefixes`) at block ``l``,
collect its normalised FFN input ``n`` (hook ``blocks.l.ln2.hook_normalized``) and differentiate
the map from ``n`` to the value the FFN adds to the residual stream,

    f(n) = post_norm(ffn_out(n))        (post_norm = identity where the family has none)

with :func:`torch.func.jacrev` in float64 at that ``n``: ``J = ∂f/∂n`` ``[d_model, d_model]``
(column form, like ``FFNFit.F``). ``f`` is built from :class:`~sd_lens.models.view.BlockView`'s
weights and is *checked* to be the real map: ``f(n)`` must reproduce ``blocks.l.hook_mlp_out`` at
that token (``closure_error``, relative; ``closes`` when within ``rtol``). Reported: the top
singular values and vectors of ``J`` (``v_local`` in the normalised-input space, ``u_local`` in the
residual space) and of the FFN's own Jacobian before the post-norm (``J_ffn``); the angles of
``u_local`` to the defect direction and of the local vectors to the Gaussian fit's ``v0``/``u0``;
how much of ``n`` lies along ``v_local`` (the coefficient and its cosine); the norm of ``n`` and of
the *effective* input ``γ₂ ⊙ n + β₂`` that the FFN's weights see.

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
initial-token defect starts, as in :func:`~sd_lens.analyses.attribution.find_lever`):
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

References: Wang et al., *Demystifying Singular Defects in Large Language Models* (ICML 2025)
(the least-squares linearisation, observation (iv) and its ablation/patching test); Sun et al.,
*Massive Activations in Large Language Models* (2024) (interventions on activations).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sd_lens.analyses.attribution import (
    ComponentAttribution,
    DefectAttribution,
    component_attribution,
)
from sd_lens.analyses.defects import DefectReport
from sd_lens.analyses.ffn_fit import FFNFit, Method, fit_ffn
from sd_lens.analyses.probe import NormProbe
from sd_lens.errors import InputError
from sd_lens.interventions import set_coefficient
from sd_lens.linalg import acute_angle_deg, svd_signed, unit
from sd_lens.models.metadata import model_dtype
from sd_lens.models.view import BlockView, ModelView, model_view
from sd_lens.runtime.engine import Batch, run
from sd_lens.runtime.hooks import act_name, ffn_input, require_hooks
from sd_lens.runtime.precision import closure_rtol
from sd_lens.runtime.reducers import first_row, token_norms
from sd_lens.types import HookedModel, HookFn

__all__ = [
    "KINDS",
    "DefectCheck",
    "Intervention",
    "LocalCausalReport",
    "LocalJacobian",
    "Patch",
    "added_value_map",
    "effective_input",
    "jacobian_at",
    "local_causal_checks",
    "local_jacobian",
    "row_edits",
    "subtract",
    "visible_channels",
]

Kind = Literal["gaussian_v0", "local_top", "local_steer", "local_cancel"]
#: the interventions, in order (see the module docstring)
KINDS: tuple[str, ...] = ("gaussian_v0", "local_top", "local_steer", "local_cancel")
_PATCH_KINDS: tuple[str, ...] = ("gaussian_v0", "local_top", "local_steer")


def _r(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}") if math.isfinite(x) else float("nan")


def _angle(a: Tensor, b: Tensor) -> float:
    return float(acute_angle_deg(a, b))


# ------------------------------------------------------------------------------------------------
# the map and its Jacobian
# ------------------------------------------------------------------------------------------------
def added_value_map(
    view: BlockView, dtype: torch.dtype = torch.float64, *, post_norm: bool = True
) -> Callable[[Tensor], Tensor]:
    """``n ↦`` the value block ``view.layer``'s FFN adds to the residual (post-FFN norm included).

    The same arithmetic as ``view.post_norm(view.ffn_out(n), view.mlp_post_scale)`` in ``dtype``
    (``BlockView`` casts its inputs to float32, which would spoil float64 derivatives).
    ``post_norm=False`` gives the FFN output before any post-FFN norm.
    """

    def c(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(dtype)

    g2, W_in, W_out = view.ln2_scale.to(dtype), view.W_in.to(dtype), view.W_out.to(dtype)
    b2, b_in, W_gate, b_gate = c(view.ln2_bias), c(view.b_in), c(view.W_gate), c(view.b_gate)
    b_out, post = c(view.b_out), c(view.mlp_post_scale)

    def f(n: Tensor) -> Tensor:
        h = n.to(dtype) * g2
        if b2 is not None:
            h = h + b2
        pre = h @ W_in
        if b_in is not None:
            pre = pre + b_in
        if W_gate is None:
            hidden = view.act(pre)
        else:
            gate = h @ W_gate
            if b_gate is not None:
                gate = gate + b_gate
            hidden = view.act(gate) * pre
        y = hidden @ W_out
        if b_out is not None:
            y = y + b_out
        return view.post_norm(y, post) if post_norm else y

    return f


def jacobian_at(
    view: BlockView, n: Float[Tensor, " d_model"], dtype: torch.dtype = torch.float64, *, post_norm: bool = True
) -> tuple[Float[Tensor, " d_model"], Float[Tensor, "d_model d_model"]]:
    """``(f(n), J)`` with ``J[i, j] = ∂f_i/∂n_j`` (:func:`torch.func.jacrev`), ``f`` = :func:`added_value_map`."""
    f = added_value_map(view, dtype, post_norm=post_norm)
    x = n.detach().to(dtype)
    with torch.enable_grad():
        J = torch.func.jacrev(f)(x)
    with torch.no_grad():
        y = f(x)
    return y.detach(), J.detach()


@dataclass(frozen=True, eq=False)
class LocalJacobian:
    """The local linearisation of one block's FFN at one carrier token (see the module docstring).

    ``J``: ``[d_model, d_model]`` Jacobian of the added value (post-norm included) at the real input
    ``n``; ``J_ffn`` the same before the post-norm (equal to ``J`` without one). ``closure_error``:
    ``‖f(n) − mlp_out‖ / ‖mlp_out‖`` against the hook value; ``closes``: within ``rtol``.
    ``sigma``: top singular values of ``J``; ``v_local``/``u_local`` its top right/left singular
    vectors (``svd_signed`` sign convention), ``sigma_ffn``/``v_ffn``/``u_ffn`` those of ``J_ffn``.
    ``direction``: the defect direction ``u`` (unit), ``added``: ``u·f(n)``, ``steer``: ``Jᵀu/‖Jᵀu‖``,
    ``gain``: ``‖Jᵀu‖``. ``effective_input``: :func:`effective_input` of ``n`` (what the FFN's weights
    read), ``n_visible``: how many channels it has, ``gaussian_effective_norm``: the (root mean
    square) norm of the same for a unit Gaussian ``n``, the inputs the Gaussian fit was made on.
    ``gaussian``: the Gaussian fit of the block (its ``v0``/``u0``/``s0``), or None.
    """

    layer: int
    n: Tensor = field(repr=False)
    real_out: Tensor = field(repr=False)
    out: Tensor = field(repr=False)
    J: Tensor = field(repr=False)
    J_ffn: Tensor = field(repr=False)
    sigma: Tensor
    v_local: Tensor = field(repr=False)
    u_local: Tensor = field(repr=False)
    sigma_ffn: float
    v_ffn: Tensor = field(repr=False)
    u_ffn: Tensor = field(repr=False)
    direction: Tensor | None = field(repr=False)
    steer: Tensor | None = field(repr=False)
    gain: float
    added: float
    closure_error: float
    rtol: float
    effective_input: Tensor = field(repr=False)
    ln2_folded: bool
    n_visible: int
    gaussian_effective_norm: float
    gaussian: FFNFit | None = field(default=None, repr=False)

    @property
    def closes(self) -> bool:
        return self.closure_error <= self.rtol

    @property
    def input_norm(self) -> float:
        return float(self.n.norm())

    @property
    def effective_input_norm(self) -> float:
        """‖γ₂ ⊙ n + β₂‖ over the channels the FFN can read (:func:`effective_input`)."""
        return float(self.effective_input.norm())

    @property
    def input_along_v(self) -> float:
        """``n · v_local``: the input's coefficient along the local top right singular vector."""
        return float(self.n.double() @ self.v_local.double())

    @property
    def input_cos_v(self) -> float:
        return self.input_along_v / max(self.input_norm, 1e-30)

    def angles(self) -> dict[str, float]:
        """Angles in degrees (acute, sign-free) between the local, Gaussian and defect directions."""
        out: dict[str, float] = {}
        u = self.direction
        if u is not None:
            out["u_local_to_defect"] = _angle(self.u_local, u)
            out["u_ffn_to_defect"] = _angle(self.u_ffn, u)
        if self.gaussian is not None:
            v0, u0 = self.gaussian.v0, self.gaussian.u0
            out["v_local_to_v0"] = _angle(self.v_local, v0)
            out["u_local_to_u0"] = _angle(self.u_local, u0)
            out["v_ffn_to_v0"] = _angle(self.v_ffn, v0)
            out["u_ffn_to_u0"] = _angle(self.u_ffn, u0)
            if u is not None:
                out["u0_to_defect"] = _angle(u0, u)
            if self.steer is not None:
                out["steer_to_v0"] = _angle(self.steer, v0)
        if self.steer is not None:
            out["steer_to_v_local"] = _angle(self.steer, self.v_local)
        return out

    def to_dict(self) -> dict[str, Any]:
        g = self.gaussian
        steer_coef = float(self.n.double() @ self.steer.double()) if self.steer is not None else float("nan")
        return {
            "layer": self.layer,
            "closure_error": float(f"{self.closure_error:.3g}"),
            "closes": self.closes,
            "sigma": [_r(float(s)) for s in self.sigma],
            "sigma_ffn": _r(self.sigma_ffn),
            "gain": _r(self.gain),
            "added": _r(self.added),
            "input_norm": _r(self.input_norm),
            "effective_input_norm": _r(self.effective_input_norm),
            "ln2_folded": self.ln2_folded,
            "n_visible": self.n_visible,
            "gaussian_effective_norm": _r(self.gaussian_effective_norm),
            "input_along_v_local": _r(self.input_along_v),
            "input_cos_v_local": _r(self.input_cos_v),
            "input_along_steer": _r(steer_coef),
            "input_along_v0": _r(float(self.n.double() @ g.v0.double())) if g is not None else None,
            "gaussian_s0": _r(g.s0) if g is not None else None,
            "angles_deg": {k: round(v, 2) for k, v in self.angles().items()},
        }


def _local_from(
    view: BlockView,
    n: Tensor,
    real_out: Tensor,
    direction: Tensor | None,
    gaussian: FFNFit | None,
    rtol: float,
    dtype: torch.dtype,
) -> LocalJacobian:
    y, J_ffn = jacobian_at(view, n, dtype, post_norm=False)
    if view.mlp_post_scale is None:
        out, J = y, J_ffn
    else:  # chain rule: the post-norm's Jacobian at the real FFN output times the FFN's
        post = view.mlp_post_scale.to(dtype)
        with torch.enable_grad():
            P = torch.func.jacrev(lambda t: view.post_norm(t, post))(y)
        out, J = view.post_norm(y, post), P.detach() @ J_ffn
    err = float((out - real_out.to(dtype)).norm() / real_out.to(dtype).norm().clamp_min(1e-30))
    U, S, Vh = svd_signed(J)
    Uf, Sf, Vhf = svd_signed(J_ffn)
    steer, gain, added = None, float("nan"), float("nan")
    if direction is not None:
        u = unit(direction.detach().to(dtype).cpu())
        jtu = J.T @ u
        gain = float(jtu.norm())
        steer = unit(jtu).float()
        added = float(out @ u)
    eff = effective_input(view, n)
    return LocalJacobian(
        layer=view.layer, n=n.float(), real_out=real_out.float(), out=out.float(), J=J.float(), J_ffn=J_ffn.float(),
        sigma=S[:3].clone(), v_local=Vh[0].clone(), u_local=U[:, 0].clone(), sigma_ffn=float(Sf[0]),
        v_ffn=Vhf[0].clone(), u_ffn=Uf[:, 0].clone(), direction=None if direction is None else unit(direction.float().cpu()),
        steer=steer, gain=gain, added=added, closure_error=err, rtol=rtol, effective_input=eff, ln2_folded=view.ln2_folded,
        n_visible=int(visible_channels(view).sum()),
        gaussian_effective_norm=float((view.ln2_scale * visible_channels(view)).norm()),
        gaussian=gaussian,
    )


def visible_channels(view: BlockView) -> Tensor:
    """Bool ``[d_model]``: the channels of ``n`` the FFN can read.

    A channel is invisible when its effective pre-FFN scale is 0 (a masked channel, Gemma's
    ``1 + w = 0``) or, for a norm folded into the weights (compatibility mode), when its rows of
    ``W_in`` and ``W_gate`` are all zero (where the folded scale was 0).
    """
    rows = view.W_in.abs().amax(1)
    if view.W_gate is not None:
        rows = torch.maximum(rows, view.W_gate.abs().amax(1))
    return (view.ln2_scale != 0) & (rows > 0)


def effective_input(view: BlockView, n: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """``γ₂ ⊙ n + β₂`` with the channels the FFN cannot read (:func:`visible_channels`) set to 0."""
    with torch.no_grad():
        return view.ffn_input(n.float()) * visible_channels(view).to(n.device)


def _at(position: int) -> Callable[[Tensor, Batch], Tensor]:
    def reduce(act: Tensor, batch: Batch) -> Tensor:
        return act[0, position].double()

    return reduce


def _quiet_run(
    model: HookedModel, tokens: Tensor, reducers: dict[str, Any], hooks: Sequence[tuple[str, HookFn]] = ()
) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*edited hook_scale/hook_normalized.*")
        return run(model, tokens, reducers, fwd_hooks=list(hooks))


def local_jacobian(
    model: HookedModel,
    layer: int,
    tokens: Int[Tensor, " pos"],
    *,
    position: int = -1,
    direction: Float[Tensor, " d_model"] | None = None,
    gaussian: FFNFit | Method | None = "gaussian",
    rtol: float | None = None,
    dtype: torch.dtype = torch.float64,
    view: ModelView | None = None,
) -> LocalJacobian:
    """The local Jacobian of block ``layer``'s FFN (post-norm included) at one token of ``tokens``.

    Args:
        model: the model.
        layer: the block.
        tokens: one sequence of token ids (with BOS), e.g. a carrier prefix.
        position: the token (default: the last).
        direction: the defect direction ``u`` (for ``steer``, ``gain``, ``added`` and the angles).
        gaussian: a fit of this block, a ``fit_ffn`` method to compute one, or None.
        rtol: ``closes`` when ``f(n)`` reproduces ``hook_mlp_out`` within this relative error
            (default: 1e-3, or 4 machine epsilons of the model's dtype where larger — bfloat16, float16;
            :func:`~sd_lens.runtime.precision.closure_rtol`).
        dtype: float64 (default) or float32 for the Jacobian.
        view: a ``ModelView`` of ``model`` to reuse.
    """
    n_layers = int(model.cfg.n_layers)
    if not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise InputError(f"block {layer!r} does not exist: the model has blocks 0..{n_layers - 1}")
    if tokens.ndim != 1 or tokens.numel() == 0:
        raise InputError(f"tokens must be one non-empty sequence of ids, got shape {tuple(tokens.shape)}")
    T = int(tokens.shape[0])
    if not -T <= position < T:
        raise InputError(f"position {position} is outside a {T}-token sequence")
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    d_model = int(model.cfg.d_model)
    if direction is not None and (direction.shape != (d_model,) or not bool(torch.isfinite(direction).all())):
        raise InputError(f"direction must be a finite vector of d_model={d_model} numbers")
    names = [ffn_input(layer), act_name("mlp_out", layer)]
    require_hooks(model, names)
    view = view or model_view(model)
    fit = fit_ffn(view.block(layer), method=gaussian, n_eval=0) if isinstance(gaussian, str) else gaussian
    out = _quiet_run(model, tokens[None], {nm: _at(position % T) for nm in names})
    tol = closure_rtol(model_dtype(model), 1e-3) if rtol is None else rtol
    return _local_from(view.block(layer).to("cpu"), out[names[0]], out[names[1]], direction, fit, tol, dtype)


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
    randoms = [unit(torch.randn(d_model, generator=torch.Generator().manual_seed(s))) for s in seeds]
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
    """Every (kind, fraction) of ``plans`` at ``site``: one forward for them all, one for all their controls."""
    k, n_seeds = len(carriers), len(randoms)
    plans = [p for p in plans if all(_edit(p[0], c.local[x], fits.get(x), p[1]) is not None for c in carriers for x in site)]
    P = len(plans)
    if not P:
        return []
    uu = unit(u.double())
    acc: dict[str, Tensor] = {
        name: torch.zeros(k, P, *shape, dtype=torch.float64)
        for name, shape in (("removed", (len(site),)), ("rel", (len(site),)), ("eff", (len(site),)),
                            ("ceff", (len(site),)), ("pc", ()), ("pi", ()), ("red", ()), ("ctrl", (n_seeds,)), ("fit", (5,)))
    }
    acc["fit"].fill_(float("nan"))
    for ci, c in enumerate(carriers):
        edits = [[_edit(kind, c.local[x], fits.get(x), a) for x in site] for kind, a in plans]
        sizes = [[] for _ in site]  # type: list[list[float]]
        hooks = []
        for i, layer in enumerate(site):
            specs: list[Spec | None] = []
            for e in edits:
                vec, proj = e[i]  # type: ignore[misc]
                specs.append(("project" if proj else "subtract", vec, 0.0))
            hooks.append((ffn_input(layer), row_edits(specs, c.pos, sizes[i])))
        norms, reads = _reads_rows(model, c.tokens, c.pos, window[1], site, P, hooks)
        size = torch.tensor(sizes, dtype=torch.float64).T  # [P, n_site]
        cspecs: list[list[Spec | None]] = [[] for _ in site]
        for b in range(P):
            for r in randoms:
                for i in range(len(site)):
                    cspecs[i].append(("matched", r, float(size[b, i])))
        chooks = [(ffn_input(layer), row_edits(cspecs[i], c.pos)) for i, layer in enumerate(site)]
        cnorms, _ = _reads_rows(model, c.tokens, c.pos, window[1], [], P * n_seeds, chooks)
        pc = _peak(c.norms, c.pos, window)
        locs = [c.local[x] for x in site]
        g2 = [(view.block(x).ln2_scale * visible_channels(view.block(x))).cpu() for x in site]
        rand_eff = [float(torch.stack([(g * r).norm() for r in randoms]).mean()) for g in g2]
        for b in range(P):
            pi = _peak(norms[b], c.pos, window)
            acc["pc"][ci, b], acc["pi"][ci, b], acc["red"][ci, b] = pc, pi, 1.0 - pi / pc
            for i, loc in enumerate(locs):
                s_bi = float(size[b, i])
                d = unit(edits[b][i][0].float())  # type: ignore[index]
                acc["removed"][ci, b, i] = s_bi
                acc["rel"][ci, b, i] = s_bi / max(loc.input_norm, 1e-30)
                acc["eff"][ci, b, i] = s_bi * float((g2[i] * d).norm()) / max(loc.effective_input_norm, 1e-30)
                acc["ceff"][ci, b, i] = s_bi * rand_eff[i] / max(loc.effective_input_norm, 1e-30)
            for j in range(n_seeds):
                acc["ctrl"][ci, b, j] = 1.0 - _peak(cnorms[b * n_seeds + j], c.pos, window) / pc
            if len(site) == 1:
                layer, loc = site[0], locs[0]
                n_int, out_int = reads[layer][0][b], reads[layer][1][b]
                dn = n_int - loc.n.double()
                real = out_int - loc.real_out.double()
                lp = loc.J.double() @ dn
                fit = fits.get(layer)
                gp = _gaussian_change(view.block(layer).to("cpu"), loc, fit, dn) if fit is not None else torch.full_like(lp, float("nan"))
                rn = float(real.norm()) or 1e-30
                acc["fit"][ci, b] = torch.tensor([float(real @ uu), float(lp @ uu), float(gp @ uu),
                                                  float((lp - real).norm()) / rn, float((gp - real).norm()) / rn])
    m = {name: t.mean(0) for name, t in acc.items()}
    return [
        Intervention(
            kind=kind, blocks=list(site), fraction=a,
            removed=m["removed"][b].tolist(), relative_size=m["rel"][b].tolist(), effective_size=m["eff"][b].tolist(),
            control_effective_size=m["ceff"][b].tolist(), peak_clean=float(m["pc"][b]), peak_intervened=float(m["pi"][b]),
            reduction=float(m["red"][b]), control_reductions=m["ctrl"][b].clone(), seeds=list(seeds), target=target,
            real_change=float(m["fit"][b, 0]), local_pred=float(m["fit"][b, 1]), gaussian_pred=float(m["fit"][b, 2]),
            local_error=float(m["fit"][b, 3]), gaussian_error=float(m["fit"][b, 4]),
        )
        for b, (kind, a) in enumerate(plans)
    ]


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
    out = []
    for layer in blocks:
        loc = carrier.local[layer]
        n_c = reads[layer][0]  # the carrier's input in this sequence
        for kind in _PATCH_KINDS:
            e = _edit(kind, loc, fits.get(layer))
            if e is None:
                continue
            v = unit(e[0].double())
            target_coef = float(n_c @ v)
            res = _quiet_run(
                model, tokens[None],
                {act_name("resid_post", x): first_row(token_norms) for x in range(window[1] + 1)},
                [(ffn_input(layer), set_coefficient(v.float(), target_coef, [pos]))],
            )
            norms = torch.stack([res[act_name("resid_post", x)] for x in range(window[1] + 1)])
            out.append(Patch(
                kind=kind, layer=layer, position=pos, carrier_position=carrier.pos, coefficient_before=float(own[layer][0] @ v), coefficient_after=target_coef,
                peak_block=peak_block, norm_before=float(clean[peak_block, pos]), norm_after=float(norms[peak_block, pos]),
                carrier_norm=float(clean[peak_block, carrier.pos]),
            ))
    return out
