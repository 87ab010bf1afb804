"""The FFN linearised where a defect token actually is (a local Jacobian): the math, no intervention.

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

The interventions read from it (which input direction to ablate, the matched controls, patching) are
:mod:`sd_lens.analyses.causal.local_checks`.

References: Wang et al., *Demystifying Singular Defects in Large Language Models* (ICML 2025)
(the least-squares linearisation, observation (iv) and its ablation/patching test); Sun et al.,
*Massive Activations in Large Language Models* (2024) (interventions on activations).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sd_lens.analyses.ffn_fit import FFNFit, Method, fit_ffn
from sd_lens.errors import InputError
from sd_lens.linalg import acute_angle_deg, svd_signed, unit
from sd_lens.models.metadata import model_dtype
from sd_lens.models.view import BlockView, ModelView, model_view
from sd_lens.runtime.engine import Batch, run
from sd_lens.runtime.hooks import act_name, ffn_input, require_hooks
from sd_lens.runtime.precision import closure_rtol
from sd_lens.types import HookedModel, HookFn

__all__ = ["LocalJacobian", "added_value_map", "effective_input", "jacobian_at", "local_jacobian", "visible_channels"]


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
