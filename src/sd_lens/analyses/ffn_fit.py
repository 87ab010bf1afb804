"""The FFN of one block replaced by its best linear map (analysis 3 in docs/analyses.md).

The FFN's hidden activation (the input of the down-projection) is a non-linear function
``h(n)`` of the block's normalised FFN input ``n`` (``n = x / rms(x)`` for RMSNorm,
``(x − mean) / std`` for LayerNorm, *before* the norm's scale γ₂, which ``h`` applies itself; with
TransformerLens' folded norms γ₂ lives inside ``W_in``/``W_gate``). A least-squares fit gives

    h(n) ≈ M n + b          M: [d_mlp, d_model]
    ffn_out(n) ≈ F n + c    F = W_outᵀ M: [d_model, d_model]  (column form)

The analyses use only the linear parts ``M`` and ``F``: the intercept ``b``, ``b_out`` and the
ln₂ bias go into ``b_hidden`` (kept for evaluation) and never into ``F``. ``F`` excludes a
post-FFN norm (Gemma-3's ``ln2_post``), which is not linear.

Three ways to choose the inputs of the fit (``method``):

``"monte_carlo"``
    The reference method of the singular-defects paper: ``n ~ N(0, I)``, least squares of ``h`` on
    ``n`` without intercept (``intercept=True`` adds one). Computed in chunks with the normal
    equations (each chunk's ``XᵀX`` and ``XᵀY`` one float32 product, summed over chunks in
    float64), never holding the ``n_samples × d_mlp`` matrix, solved by Cholesky.
    Note: the reference samples isotropically the input of the MLP *after* γ₂ (then multiplies
    the fit by diag(γ₂)); here ``n`` itself is isotropic, the scale real normalised inputs have.
    The two agree when γ₂ = 1 and differ otherwise (see ``benchmarks/bench_ffn_fit.py``).
``"gaussian"``
    The closed form of the same fit for infinitely many samples. For ``n ~ N(0, I)`` Stein's lemma
    gives ``E[h(n) nᵀ] = E[∇h(n)]``, so the least-squares map is the expected Jacobian, and for
    every hidden unit it reduces to one-dimensional Gaussian integrals of the activation and its
    derivative. One-dimensional Stein identities turn those into integrals of the activation
    itself (``E[act'(a)] = E[act(a)·t]/s`` for ``a = b + s·t``), so any activation works, kinks
    included, and no derivative is needed. The integrals use the trapezoidal rule on a dense
    grid, spectrally accurate for smooth activations (silu, gelu) and second-order for relu.
    ``b_hidden`` is ``E[h(n)]``, the intercept of the population fit.
``"reference"``
    The convention of the singular-defects code, in closed form: isotropic inputs ``z ~ N(0, I)``
    at the MLP input *after* γ₂ (``z = γ₂ ⊙ n``), the same Stein closed form for ``h(z) ≈ M_z z``,
    then ``M = M_z diag(γ₂)`` so that it acts on ``n``. Where γ₂ is far from 1 (Gemma's masked
    and amplified channels) the inputs it fits on are not the scale real inputs have; offered so
    that published figures can be reproduced. R² is measured on isotropic ``z``. Equal to
    ``"gaussian"`` when γ₂ = 1 (e.g. TransformerLens models with folded norms).
``"real"``
    Least squares with intercept on normalised inputs collected from real text
    (:func:`~sd_lens.analyses.ffn_inputs.collect_ffn_inputs`), solved with the normal equations and an eigen-decomposition
    pseudo-inverse (real inputs can be rank-deficient). The intercept absorbs the non-zero mean of
    real inputs and activations, so ``M`` is the slope; ``b_hidden`` is the intercept. Needs many
    more inputs than dimensions (a warning is raised at or below ``d``; ≥ 5·d recommended).
    On real text the held-out R² is dominated by the few tokens whose FFN output explodes (in
    SmolLM2 at block 11 ten of 9 000 tokens carry two thirds of the output variance), so it
    depends on which of them the split holds out; ``u₀`` of the fit is far more stable.

Every method reports R² of the FFN *output* (and of the hidden activation) on held-out inputs:
fresh Gaussian samples for the Gaussian methods, a held-out split of the real inputs for
``"real"``. R² is pooled over output coordinates and centred:
``1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖²`` with ``ŷ = W_outᵀ(M n + b_hidden)`` (the output bias cancels);
it lies in (−∞, 1].

LayerNorm models (GPT-2, GPT-NeoX): normalised inputs are centred, so ``n`` lives in the
(d − 1)-dimensional subspace orthogonal to the all-ones vector. The Gaussian methods use
``n ~ N(0, P)`` with ``P = I − 11ᵀ/d`` (sampled in an orthonormal basis of that subspace) and the
fits are the minimum-norm ones: ``M = M P``, ``M 1 = 0``, for every method.

Nothing here runs or modifies the model: :class:`~sd_lens.models.view.BlockView` holds float32
copies (the real inputs come from :func:`~sd_lens.analyses.ffn_inputs.collect_ffn_inputs`).

Reference: the least-squares FFN approximation on Gaussian inputs (``"monte_carlo"``) of Wang et al.,
*Demystifying Singular Defects in Large Language Models* (ICML 2025); the closed form rests on Stein's
lemma (Stein, *Ann. Statist.* 1981).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Iterable, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.errors import InputError
from sd_lens.linalg import LeadingTriplet, svd_signed
from sd_lens.models.view import BlockView, ModelOrView, resolve_block

__all__ = ["FFNFit", "Method", "fit_ffn"]

Method = Literal["gaussian", "monte_carlo", "real", "reference"]
METHODS: tuple[str, ...] = ("gaussian", "monte_carlo", "real", "reference")
_GAUSSIAN_N_EVAL = 8192  # default number of held-out Gaussian samples for the closed form's R²


@dataclass(frozen=True, eq=False)
class FFNFit(LeadingTriplet):
    """A linear fit of one block's FFN (float32, CPU). See the module docstring for definitions.

    Attributes:
        method: ``"gaussian"``, ``"monte_carlo"`` or ``"real"``.
        layer: 0-based block index.
        M: ``[d_mlp, d_model]``, hidden activation ≈ ``M @ n + b_hidden``.
        F: ``[d_model, d_model]`` = ``W_outᵀ M``, FFN output ≈ ``F @ n`` + constant (column form).
        b_hidden: ``[d_mlp]``, the hidden intercept: ``E[h]`` for ``"gaussian"``, the fitted
            intercept for fits with one (``"real"`` by default), and for intercept-free fits
            (``"monte_carlo"`` by default, as in the reference) the mean training residual,
            used only to evaluate R².
        r2: R² of the FFN output on held-out inputs (NaN if ``n_eval`` was 0).
        r2_se: the sampling standard error of ``r2`` (delete-a-group jackknife over 16 groups of the held-out
            inputs): on SmolLM2 about 0.01–0.02 with 1 024 Gaussian inputs, 0.02–0.04 with 256 — heavy-tailed
            hidden units make R² noisier than the number of output coordinates suggests.
        r2_hidden: R² of the hidden activation on the same inputs.
        n_samples: number of inputs the fit used (0 for the closed form).
        n_eval: number of held-out inputs R² was computed on.
        seconds: wall time of the whole call; ``fit_seconds``: of the fit alone (without R²).
        seed: seed of the sampling / split.
        device: where the fit ran (the block's weights' device by default); its SVD runs there too.
    """

    method: str
    layer: int
    M: Float[Tensor, "d_mlp d_model"]
    F: Float[Tensor, "d_model d_model"]
    b_hidden: Float[Tensor, " d_mlp"]
    r2: float
    r2_hidden: float
    n_samples: int
    n_eval: int
    seconds: float
    fit_seconds: float
    seed: int
    device: str = "cpu"
    r2_se: float = float("nan")

    @cached_property
    def _svd(self) -> tuple[Tensor, Tensor, Tensor]:
        # on the device the fit ran on (a GPU when the weights are there), if this process has it
        dev = torch.device(self.device)
        usable = dev.type == "cpu" or (dev.type == "cuda" and torch.cuda.is_available())
        return svd_signed(self.F, dev if usable else "cpu")

    def svd(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(U, S, Vh)`` of ``F`` (cached; float64 SVD, float32 results, sign convention of
        :func:`~sd_lens.linalg.svd_signed`)."""
        return self._svd

    def predict_hidden(self, n: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_mlp"]:
        """The linear model's hidden activation ``M n + b_hidden`` for normalised inputs (rows)."""
        return n.to(torch.float32) @ self.M.T + self.b_hidden


# --------------------------------------------------------------------------------------------
# helpers


def _sample_basis(view: BlockView, device: torch.device) -> Tensor | None:
    """Orthonormal basis ``Q [d, d-1]`` of the centred subspace for LayerNorm, else ``None``.

    Columns 1.. of the Householder reflection that maps e₀ to 1/√d: exact and deterministic.
    """
    if view.norm != "layer":
        return None
    d = view.d_model
    w = -torch.full((d,), 1.0 / math.sqrt(d), dtype=torch.float64)
    w[0] += 1.0
    H = torch.eye(d, dtype=torch.float64) - 2.0 * torch.outer(w, w) / (w @ w)
    return H[:, 1:].to(device=device, dtype=torch.float32).contiguous()


def _center_rows(view: BlockView, M: Tensor) -> Tensor:
    """``M P`` for LayerNorm models (rows made orthogonal to the all-ones vector)."""
    if view.norm != "layer":
        return M
    return M - M.mean(-1, keepdim=True)


class _R2:
    """Streaming, pooled, centred R² of hidden and output, with a jackknife standard error.

    Samples are dealt round-robin into :data:`R2_GROUPS` groups; each group keeps ``Σy`` (vector), ``Σ‖y‖²``
    and ``Σ‖y − ŷ‖²`` in float64 (each batch's sums are float32 reductions, ~1e-7 relative: far below the
    sampling noise the standard error measures). R² leaving one group out, for every group, gives the
    delete-a-group jackknife estimate of R²'s sampling standard error.
    """

    def __init__(self) -> None:
        self.n = 0
        self.sums: dict[str, list[Tensor]] = {}

    def add(self, key: str, y: Tensor, y_hat: Tensor, offset: int) -> None:
        k = R2_GROUPS
        group = (torch.arange(y.shape[0], device=y.device) + offset) % k
        r = y - y_hat
        parts = tuple(
            torch.zeros((k, *t.shape[1:]), dtype=y.dtype, device=y.device).index_add_(0, group, t).double()
            for t in (y, (y * y).sum(1), (r * r).sum(1))
        )
        acc = self.sums.setdefault(key, [torch.zeros_like(t) for t in parts])
        for a, t in zip(acc, parts):
            a += t

    def value(self, key: str, n: int) -> tuple[float, float]:
        """``(R², its jackknife standard error)``; NaN where undefined."""
        s = self.sums.get(key)
        if s is None or n == 0:
            return float("nan"), float("nan")
        sy, syy, srr = (t.cpu() for t in s)
        counts = torch.tensor([len(range(g, n, R2_GROUPS)) for g in range(R2_GROUPS)], dtype=torch.float64)

        def r2(sy_: Tensor, syy_: float, srr_: float, n_: float) -> float:
            ss_tot = syy_ - float((sy_ * sy_).sum()) / n_
            if ss_tot <= 0:
                return float("nan") if srr_ > 0 else 1.0
            return 1.0 - srr_ / ss_tot

        ty, tyy, trr = sy.sum(0), syy.sum(), srr.sum()
        full = r2(ty, float(tyy), float(trr), float(n))
        groups = [g for g in range(R2_GROUPS) if counts[g] > 0]
        if len(groups) < 2:
            return full, float("nan")
        loo = torch.tensor([
            r2(ty - sy[g], float(tyy - syy[g]), float(trr - srr[g]), float(n - counts[g])) for g in groups
        ])
        m = len(groups)
        se = math.sqrt((m - 1) / m * float(((loo - loo.mean()) ** 2).sum()))
        return full, se


#: groups of the jackknife standard error of R² (samples dealt round-robin)
R2_GROUPS = 16


def _evaluate(
    view: BlockView, M: Tensor, b: Tensor, batches: Iterable[Tensor], F: Tensor | None = None
) -> tuple[float, float, float, int]:
    """(R² of output, its standard error, R² of hidden, count) of ``h ≈ M n + b`` over batches of inputs.

    With ``F = W_outᵀ M`` given, the predicted output is ``F n + W_outᵀ b`` (a ``d × d`` product per input
    instead of ``d_mlp × d``): the same map, summed in another order.
    """
    acc, count = _R2(), 0
    c = b @ view.W_out
    for n in batches:
        h = view.ffn_hidden(n)
        h_hat = n @ M.T + b
        acc.add("hidden", h, h_hat, count)
        y_hat = h_hat @ view.W_out if F is None else n @ F.T + c
        acc.add("out", h @ view.W_out, y_hat, count)
        count += n.shape[0]
    (r2, se), (r2_hidden, _) = acc.value("out", count), acc.value("hidden", count)
    return r2, se, r2_hidden, count


def _gaussian_batches(
    n: int, k: int, Q: Tensor | None, gen: torch.Generator, chunk: int, device: torch.device
) -> Iterable[Tensor]:
    done = 0
    while done < n:
        c = min(chunk, n - done)
        w = torch.randn(c, k, generator=gen, device=device)
        yield w if Q is None else w @ Q.T
        done += c


def _solve_spd(G: Tensor, C: Tensor) -> Tensor:
    """``G⁻¹ C`` for a symmetric positive definite Gram matrix (Cholesky; pinv if not SPD)."""
    L, info = torch.linalg.cholesky_ex(G)
    if int(info) == 0:
        return torch.cholesky_solve(C, L)
    return _solve_pinv(G, C)


def _solve_pinv(G: Tensor, C: Tensor) -> Tensor:
    """Minimum-norm ``G⁺ C`` for a symmetric PSD Gram matrix of float32 data.

    Eigenvalues below ``λ_max · k · eps_float32²`` are treated as zero: the data were float32,
    so directions with less relative variance than that are rounding noise.
    """
    evals, evecs = torch.linalg.eigh(G)
    k = G.shape[0]
    cutoff = float(evals.max().clamp_min(0)) * k * torch.finfo(torch.float32).eps ** 2
    inv = torch.where(evals > cutoff, 1.0 / evals.clamp_min(cutoff if cutoff > 0 else 1e-300), torch.zeros_like(evals))
    return evecs @ (inv[:, None] * (evecs.T @ C))


# --------------------------------------------------------------------------------------------
# the three fits


def _fit_gaussian(view: BlockView, *, grid_points: int, grid_half_width: float, unit_chunk: int) -> tuple[Tensor, Tensor]:
    """Closed-form (Stein) least-squares map for n ~ N(0, I) (or N(0, P) for LayerNorm).

    Every unit's scalars (its input norm ``s``, offsets, the Gaussian integrals, the coefficients) are float64;
    ``M``, a float32 result, is assembled from the float32 weights times those coefficients (one rounding each).
    """
    f64 = torch.float64
    gamma = view.ln2_scale.float()
    beta = view.ln2_bias.to(f64) if view.ln2_bias is not None else None

    def proj(W: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        """Weights acting on n (γ₂ applied, centred for LayerNorm; float32) and the constant term (float64)."""
        W = W.float()
        c = torch.zeros(W.shape[1], dtype=f64, device=W.device)
        if beta is not None:
            c = c + beta @ W.double()
        if bias is not None:
            c = c + bias.to(f64)
        Wn = gamma[:, None] * W
        if view.norm == "layer":
            Wn = Wn - Wn.mean(0, keepdim=True)
        return Wn, c

    U, cu = proj(view.W_in, view.b_in)  # [d, d_mlp]
    gated = view.W_gate is not None
    if view.W_gate is not None:
        G, cg = proj(view.W_gate, view.b_gate)
    else:
        G, cg = U, cu
    # Trapezoidal rule on [-L, L] for E[f(t)], t ~ N(0, 1): spectrally accurate for analytic f.
    t = torch.linspace(-grid_half_width, grid_half_width, grid_points, dtype=f64, device=U.device)
    w = torch.exp(-0.5 * t * t)
    w[0] *= 0.5
    w[-1] *= 0.5
    w = w / w.sum()  # normalising absorbs the step and 1/√(2π) (error below 1e-30 at L ≥ 12)
    t1, t2 = w * t, w * (t * t - 1.0)

    d_mlp = U.shape[1]
    M = torch.empty(d_mlp, U.shape[0], dtype=torch.float32, device=U.device)
    b = torch.empty(d_mlp, dtype=f64, device=U.device)
    for lo in range(0, d_mlp, unit_chunk):
        sl = slice(lo, min(lo + unit_chunk, d_mlp))
        g, bg = G[:, sl], cg[sl]
        s = torch.linalg.vector_norm(g, dim=0, dtype=f64)  # a = g·n + bg = bg + s·t, t ~ N(0, 1)
        s_safe = torch.where(s > 0, s, torch.ones_like(s))
        y = view.act(bg[:, None] + s[:, None] * t[None, :])
        # Only integrals of act itself (continuous even for relu), via 1-D Stein identities:
        # E[act'(a)] = E[act(a) t] / s,   E[act'(a) t] = E[act(a) (t² − 1)] / s.
        # Where s = 0 the unit's g is zero and the derivative terms are multiplied by zero.
        E_act, E_act_t, E_act_t2 = y @ w, y @ t1, y @ t2
        E_dact = torch.where(s > 0, E_act_t / s_safe, torch.zeros_like(s))
        if not gated:
            M[sl] = E_dact.float()[:, None] * g.T
            b[sl] = E_act
            continue
        u, cu_ = U[:, sl], cu[sl]
        E_dact_t = torch.where(s > 0, E_act_t2 / s_safe, torch.zeros_like(s))
        # u·n = ρ (a − bg) + (a part independent of a), ρ = (g·u)/s², a − bg = s t
        rho = torch.where(s > 0, (g * u).sum(0, dtype=f64) / s_safe**2, torch.zeros_like(s))
        # E[∇(act(a) (u·n + cu))] = E[act'(a)(u·n + cu)] g + E[act(a)] u
        coef_g = rho * s * E_dact_t + cu_ * E_dact
        M[sl] = coef_g.float()[:, None] * g.T + E_act.float()[:, None] * u.T
        b[sl] = rho * s * E_act_t + cu_ * E_act  # E[act(a)(u·n + cu)]
    return M, b.float()


def _fit_monte_carlo(
    view: BlockView,
    *,
    n_samples: int,
    gen: torch.Generator,
    chunk: int,
    Q: Tensor | None,
    device: torch.device,
    intercept: bool = False,
    gemm_dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Least squares of h on n ~ N(0, I) via the normal equations (intercept-free by default).

    Each chunk's ``XᵀX`` and ``XᵀY`` is one ``gemm_dtype`` matrix product (float32: at most
    ``chunk`` terms per sum, relative error ~1e-6, far below the Monte-Carlo noise); the running
    sums over chunks are float64.
    """
    k = view.d_model if Q is None else Q.shape[1]
    d_mlp = view.W_out.shape[0]
    XtX = torch.zeros(k, k, dtype=torch.float64, device=device)
    XtY = torch.zeros(k, d_mlp, dtype=torch.float64, device=device)
    sum_w = torch.zeros(k, dtype=torch.float64, device=device)
    sum_y = torch.zeros(d_mlp, dtype=torch.float64, device=device)
    for w in _gaussian_batches(n_samples, k, None, gen, chunk, device):
        n = w if Q is None else w @ Q.T
        y = view.ffn_hidden(n)
        wg, yg = w.to(gemm_dtype), y.to(gemm_dtype)
        XtX += (wg.T @ wg).double()
        XtY += (wg.T @ yg).double()
        sum_w += w.double().sum(0)
        sum_y += y.double().sum(0)
    if intercept:  # centred normal equations
        XtX = XtX - torch.outer(sum_w, sum_w) / n_samples
        XtY = XtY - torch.outer(sum_w, sum_y) / n_samples
    B = _solve_spd(XtX, XtY)  # [k, d_mlp]: h ≈ w B
    b = (sum_y - sum_w @ B) / n_samples  # the intercept, or the best constant given the slope
    M = B.T if Q is None else B.T @ Q.double().T
    return M.float(), b.float()


def _fit_real(
    view: BlockView, X: Tensor, *, chunk: int, intercept: bool = True, ridge: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Least squares (with intercept by default) of h on the rows of X (normal equations, pinv)."""
    d, d_mlp = view.d_model, view.W_out.shape[0]
    N = X.shape[0]
    mean_x = X.double().mean(0)
    if not intercept:
        mean_x = torch.zeros_like(mean_x)
    G = torch.zeros(d, d, dtype=torch.float64, device=X.device)
    C = torch.zeros(d, d_mlp, dtype=torch.float64, device=X.device)
    sum_y = torch.zeros(d_mlp, dtype=torch.float64, device=X.device)
    for lo in range(0, N, chunk):
        x = X[lo : lo + chunk]
        y = view.ffn_hidden(x).double()
        xc = x.double() - mean_x
        G += xc.T @ xc
        C += xc.T @ y
        sum_y += y.sum(0)
    if ridge > 0:  # Tikhonov, relative to the mean input variance: scale-free
        G = G + ridge * (torch.trace(G) / d) * torch.eye(d, dtype=G.dtype, device=G.device)
    B = _solve_pinv(G, C)
    M = B.T
    b = sum_y / N - M @ X.double().mean(0)  # the intercept, or the best constant given the slope
    return M.float(), b.float()


def fit_ffn(
    model_or_view: ModelOrView,
    layer: int | None = None,
    method: Method = "gaussian",
    *,
    n_samples: int = 100_000,
    inputs: Float[Tensor, "n d_model"] | None = None,
    seed: int = 0,
    holdout: float = 0.2,
    n_eval: int | None = None,
    device: str | torch.device | None = None,
    chunk_size: int = 4096,
    grid_points: int | None = None,
    intercept: bool | None = None,
    ridge: float = 0.0,
) -> FFNFit:
    """Fit the FFN of block ``layer`` by a linear map (Wang et al.'s least-squares linearisation of the FFN).

    Args:
        model_or_view: a TransformerLens model, a ``ModelView`` or a ``BlockView``.
        layer: 0-based block index (optional when a ``BlockView`` is given).
        method: ``"gaussian"`` (closed form, the default: fast and noise-free),
            ``"monte_carlo"`` (the paper's sampled fit), ``"real"`` (fit on ``inputs``) or
            ``"reference"`` (the closed form in the reference code's convention: isotropic after γ₂).
        n_samples: Gaussian samples of the Monte-Carlo fit (ignored otherwise).
        inputs: ``[N, d_model]`` real normalised FFN inputs (required for ``"real"``), e.g. from
            :func:`~sd_lens.analyses.ffn_inputs.collect_ffn_inputs`.
        seed: seeds the Gaussian samples and the real-data split (results are deterministic).
        holdout: fraction of ``inputs`` held out for R² (``"real"``); for ``"monte_carlo"`` the
            default number of fresh held-out Gaussian samples is ``round(holdout · n_samples)``.
        n_eval: number of fresh held-out Gaussian samples for R² (default: as above for
            ``"monte_carlo"``, 8192 for ``"gaussian"``; 0 skips R², which is then NaN, and makes
            the closed form take well under a second). Ignored for ``"real"``.
        device: where to compute (default: where the block's weights are, so a GPU model fits on
            its GPU and a model split over devices fits each block on its own; float64
            accumulations need a device that has float64).
        chunk_size: inputs per chunk (memory: ``chunk_size · d_mlp`` floats at a time).
        grid_points: points of the quadrature grid of the closed form (default: 1 001 for smooth activations —
            silu, gelu: the trapezoidal rule has converged to float64 rounding long before, the fit in float32 is
            the same as with 8 001 —, 4 001 for relu, whose kink makes the rule second order).
        intercept: fit an intercept (``None``: the method's default — no for ``"monte_carlo"``,
            as in the reference, yes for ``"real"``; the closed form needs none, its inputs have
            mean zero). An intercept-free fit leaks the hidden activation's mean into the slope
            by O(|mean| · √(d / n_samples)); with an intercept that noise term is gone.
        ridge: ``"real"`` only: Tikhonov regularisation ``G + ridge · (tr G / d) · I`` of the
            (centred) Gram matrix, scale-free. Default 0, plain least squares. Real inputs are
            concentrated in few directions, so with fewer than ~5·d inputs the slope along the
            rare directions is noisy and held-out R² suffers; a small ridge (1e-2) steadies it.

    Returns:
        An :class:`FFNFit` (tensors float32 on the CPU).

    Raises:
        InputError: unknown method, missing or malformed ``inputs``, too few inputs.

    Example:
        >>> import sd_lens
        >>> fit = sd_lens.fit_ffn(sd_lens.tiny_model("llama"), 0)  # closed form ("gaussian")
        >>> tuple(fit.F.shape), tuple(fit.v0.shape)  # F and its trigger direction v0
        ((64, 64), (64,))
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise InputError(f"unknown FFN fit method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 <= holdout < 1.0:
        raise InputError(f"holdout must be in [0, 1), got {holdout}")
    view = resolve_block(model_or_view, layer)
    if grid_points is None:
        grid_points = 4001 if view.act_fn == "relu" else 1001
    dev = view.W_out.device if device is None else torch.device(device)
    view_d = view.to(dev)
    Q = _sample_basis(view, dev)
    k = view.d_model if Q is None else Q.shape[1]
    gen = torch.Generator(device=dev).manual_seed(seed)
    eval_gen = torch.Generator(device=dev).manual_seed(seed + 0x5D1E75)  # held-out stream

    with torch.no_grad():
        if method == "real":
            if inputs is None:
                raise InputError('method="real" needs inputs: normalised FFN inputs [N, d_model], see collect_ffn_inputs')
            X = torch.as_tensor(inputs).detach().to(dev, torch.float32)
            if X.ndim != 2 or X.shape[1] != view.d_model:
                raise InputError(f"inputs must have shape [N, {view.d_model}], got {tuple(X.shape)}")
            if not bool(torch.isfinite(X).all()):
                raise InputError("inputs contain NaN or inf")
            n_hold = int(round(holdout * X.shape[0]))
            perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed)).to(dev)
            X_eval, X_fit = X[perm[:n_hold]], X[perm[n_hold:]]
            if X_fit.shape[0] < 2:
                raise InputError(f"too few inputs to fit: {X_fit.shape[0]} after holding out {n_hold}")
            if X_fit.shape[0] <= view.d_model:
                warnings.warn(
                    f"fit_ffn(method='real') on {X_fit.shape[0]} inputs of dimension {view.d_model}: the fit is "
                    "under-determined (it interpolates its inputs) and its held-out R² is not meaningful; "
                    "collect more tokens",
                    stacklevel=2,
                )
            M, b = _fit_real(
                view_d, X_fit, chunk=chunk_size, intercept=True if intercept is None else intercept, ridge=ridge
            )
            n_fit = X_fit.shape[0]
            fit_s = time.perf_counter() - t0
            batches: Iterable[Tensor] = (X_eval[i : i + chunk_size] for i in range(0, n_hold, chunk_size))
        else:
            if method == "monte_carlo":
                if n_samples < k:
                    raise InputError(f"n_samples={n_samples} is below the input dimension {k}")
                M, b = _fit_monte_carlo(
                    view_d, n_samples=n_samples, gen=gen, chunk=chunk_size, Q=Q, device=dev, intercept=bool(intercept)
                )
                n_fit = n_samples
            elif method == "reference":
                if view.ln2_folded:
                    warnings.warn(
                        f"block {view.layer}: the pre-FFN norm scale is folded into W_in (compatibility mode), so the "
                        "reference convention cannot be told apart and this fit equals method='gaussian'; load the "
                        "model with compatibility_mode=False to fit in the reference convention",
                        stacklevel=2,
                    )
                # the reference code's convention: z = γ₂ ⊙ n isotropic, h(z) ≈ M_z z, then M = M_z diag(γ₂)
                gamma = view_d.ln2_scale
                ref_view = replace(view_d, ln2_scale=torch.ones_like(gamma), ln2_bias=None, norm="rms")
                M_z, b = _fit_gaussian(ref_view, grid_points=grid_points, grid_half_width=12.0, unit_chunk=256)
                M = M_z * gamma[None, :]
                n_fit = 0
            else:
                M, b = _fit_gaussian(view_d, grid_points=grid_points, grid_half_width=12.0, unit_chunk=256)
                n_fit = 0
            fit_s = time.perf_counter() - t0
            if n_eval is not None:
                ne = int(n_eval)
            else:
                ne = int(round(holdout * n_samples)) if method == "monte_carlo" else _GAUSSIAN_N_EVAL
            batches = _gaussian_batches(ne, k, Q, eval_gen, chunk_size, dev)
        M = _center_rows(view, M)
        # on the device, like the fit; a float32 product (d_mlp terms per entry: ~1e-6 relative, far inside what
        # reads F). In float64 the spectra of a 1B shape took 22 % longer on the CPU (2 · d² · d_mlp flops per block)
        F = view_d.W_out.T.float() @ M
        if method == "reference":  # R² where the reference fits: isotropic z at the MLP input
            r2, r2_se, r2_hidden, count = _evaluate(ref_view, M_z, b, _gaussian_batches(ne, view.d_model, None, eval_gen, chunk_size, dev))
        else:
            r2, r2_se, r2_hidden, count = _evaluate(view_d, M, b, batches, F)
    return FFNFit(
        method=method,
        layer=view.layer,
        M=M.cpu(),
        F=F.cpu(),
        b_hidden=b.cpu(),
        r2=r2,
        r2_hidden=r2_hidden,
        n_samples=n_fit,
        n_eval=count,
        seconds=time.perf_counter() - t0,
        fit_seconds=fit_s,
        seed=seed,
        device=str(dev),
        r2_se=r2_se,
    )
