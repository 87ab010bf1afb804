"""Rotation check: does a finding survive an orthogonal change of the residual basis?

QuaRot (Ashkboos et al., 2024) and SpinQuant (Liu et al., 2024) rotate the residual stream by an orthogonal
matrix ``Q`` (a randomized Hadamard matrix, or a learnt / random orthogonal one) before quantizing: the
model computes exactly the same function, but a *channel* outlier — one coordinate far larger than the
others — is spread over every coordinate and disappears. A token's *norm* cannot change under a rotation.
So a singular defect (a high-norm token along a direction) must survive a rotation, while a massive
activation (a channel) must vanish: the test that tells "a direction" from "a channel".

**The rotation, as hooks** (:func:`rotation_hooks`, nothing folded into the weights): with row vectors
``x' = x Q``,

* what *enters* the residual stream is rotated: the embedding (``hook_embed``, and ``hook_pos_embed`` of
  models with learnt positions) and each block's sublayer outputs (``hook_attn_out``, ``hook_mlp_out``; on
  models with sandwich norms these are after the post-norm), so every residual hook point
  (``resid_pre``/``resid_mid``/``resid_post``) holds the rotated stream;
* where the model *reads* it — through its norms ``ln1``, ``ln2``, ``ln_final`` — the norm's statistic is
  computed on the rotated vector and the inverse rotation is applied to its output ``hook_normalized``
  (after the division, before the learnt gain). RMSNorm's statistic is rotation-invariant. LayerNorm first
  subtracts the mean over channels, which commutes with ``Q`` only when ``Q`` fixes the all-ones vector:
  for LayerNorm families ``Q`` is composed with the Householder reflection :func:`fixing_ones` that makes
  it so (``Q 1 = 1``), after which centring, the statistic and the normalised vector all rotate.

The hooks leave the model exactly as it was (they are removed by the engine, also on error); the logits
with them differ from the clean logits by float rounding only (:attr:`RotationRun.logits_max_error`).

**The rotations.** ``"random"``: a Haar-random orthogonal matrix (QR of a Gaussian matrix, signs fixed).
``"hadamard"``: QuaRot's randomized Hadamard matrix ``diag(s) H / sqrt(d)`` with random signs ``s``.
A Hadamard matrix of order ``d`` is built by :func:`hadamard_matrix`: Sylvester's construction when ``d``
is a power of two, else the Kronecker product of a Paley Hadamard matrix of order ``p`` (Paley I for
``p - 1`` a prime ≡ 3 mod 4, Paley II for ``p / 2 - 1`` a prime ≡ 1 mod 4) with a Sylvester matrix of
order ``d / p`` (SmolLM2's 576 = 36 x 16, Gemma-3's 640 = 20 x 32). When no such ``p`` exists the odd
part is mixed by a random orthogonal matrix instead (``H_{2^k} ⊗ R_m``), and the run says so in its
``construction``.

**What is measured** (one streamed pass over the texts without, and one with each rotation):

* per defect, at its peak block: the carriers' states (component along the defect's direction at least
  ``threshold / 2`` times the block's typical norm, the defect finder's own hysteresis), their norm with
  the rotation over their norm without (``norm_ratio``, must be 1) and the same for the component along
  the rotated direction ``u Q``; and the share of the direction's squared norm in its largest channel,
  before and after (a direction survives, its coordinates change);
* per massive activation channel (Sun et al.'s criterion, :mod:`sd_lens.analyses.activation_outliers`,
  on the same texts): at its peak block, the channel's largest ``|value|`` over the block median, in the
  rotated stream (same channel index) and the largest such ratio of *any* rotated channel; and how many
  massive entries the whole residual stream has before and after.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.analyses.activation_outliers import ActivationOutliers, activation_outliers_pass, defect_channels
from sd_lens.analyses.defects import DefectReport
from sd_lens.corpus import default_corpus
from sd_lens.errors import InputError
from sd_lens.models.metadata import model_dtype, model_name
from sd_lens.runtime.engine import Batch, Pass, make_batch, run_batch, run_passes
from sd_lens.runtime.hooks import LOGITS, act_name, require_hooks
from sd_lens.runtime.reducers import resident
from sd_lens.runtime.tokens import Tokenized, length_sorted_batches, tokenize
from sd_lens.types import HookedModel, HookFn

__all__ = [
    "KINDS",
    "ChannelRotation",
    "DefectRotation",
    "RotationCheck",
    "RotationRun",
    "fixing_ones",
    "hadamard_matrix",
    "random_orthogonal",
    "norm_tolerance",
    "randomized_hadamard",
    "rotation_check",
    "rotation_hooks",
]

KINDS = ("random", "hadamard")
#: a defect "survives" when every carrier's norm ratio is within this of 1 (float32; half precision:
#: :func:`norm_tolerance`)
NORM_TOLERANCE = 1e-3


def norm_tolerance(dtype: torch.dtype) -> float:
    """How far from 1 a carrier's norm ratio may be and the defect still "survive", for a forward in
    ``dtype``: :data:`NORM_TOLERANCE`, or four units of the dtype's rounding when that is larger — the
    rotated forward rounds every block's output differently (bfloat16: 0.0156, float16: 0.0039; tiny
    bfloat16 models of every family measure up to 0.0017)."""
    return max(NORM_TOLERANCE, 4 * torch.finfo(dtype).eps)



# ------------------------------------------------------------------------------------------------
# the matrices
# ------------------------------------------------------------------------------------------------
def random_orthogonal(d: int, seed: int = 0) -> Float[Tensor, "d d"]:
    """A Haar-random orthogonal ``d x d`` matrix (float64): QR of a Gaussian matrix, R's diagonal made positive."""
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise InputError(f"d must be a positive integer, got {d!r}")
    gen = torch.Generator().manual_seed(int(seed))
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return (q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(torch.float64)).contiguous()


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(math.isqrt(n)) + 1))


def _jacobsthal(q: int) -> Tensor:
    """``Q[i, j] = χ(j - i)``, χ the Legendre symbol mod the prime ``q``."""
    squares = {(k * k) % q for k in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in squares else -1.0 for a in range(1, q)], dtype=torch.float64)
    idx = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q
    return chi[idx]


def _paley(p: int) -> Tensor | None:
    """A Hadamard matrix of order ``p`` by Paley's constructions, or None when neither applies."""
    if p >= 4 and _is_prime(p - 1) and (p - 1) % 4 == 3:  # Paley I
        q = p - 1
        s = torch.zeros(p, p, dtype=torch.float64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, _jacobsthal(q)
        return torch.eye(p, dtype=torch.float64) + s
    if p >= 12 and p % 2 == 0 and _is_prime(p // 2 - 1) and (p // 2 - 1) % 4 == 1:  # Paley II
        q = p // 2 - 1
        c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
        c[0, 1:], c[1:, 0], c[1:, 1:] = 1.0, 1.0, _jacobsthal(q)
        one = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        zero = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        return torch.kron(c, one) + torch.kron(torch.eye(q + 1, dtype=torch.float64), zero)
    return None


def _sylvester(n: int) -> Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hadamard_matrix(n: int, seed: int = 0) -> tuple[Float[Tensor, "n n"], str]:
    """An ``n x n`` matrix ``H`` with ``H Hᵀ = n I`` and the construction used, in words.

    Sylvester's construction for a power of two; otherwise a Paley matrix of order ``p`` (the largest
    ``p = n / 2^k`` that has one) Kronecker a Sylvester matrix. When no such ``p`` exists (e.g. ``n`` odd)
    the odd part ``m`` is mixed by a random orthogonal matrix instead (``H_{2^k} ⊗ (sqrt(m) R_m)``: still
    ``H Hᵀ = n I``, no longer ±1 entries), and the construction says so.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    two = n & -n  # the largest power of two dividing n
    if two == n:
        return _sylvester(n), f"Sylvester H_{n}"
    k = two
    while k >= 1:
        p = n // k
        h = _paley(p)
        if h is not None:
            return torch.kron(h, _sylvester(k)), f"Paley H_{p} ⊗ Sylvester H_{k}"
        k //= 2
    m = n // two
    r = random_orthogonal(m, seed) * math.sqrt(m)
    return torch.kron(_sylvester(two), r), (
        f"no Hadamard matrix of order {n} from Sylvester/Paley: Sylvester H_{two} ⊗ a random orthogonal "
        f"{m} x {m} block (not ±1 entries)"
    )


def randomized_hadamard(d: int, seed: int = 0) -> tuple[Float[Tensor, "d d"], str]:
    """QuaRot's randomized Hadamard rotation ``diag(s) H / sqrt(d)`` (random signs ``s``), float64, and its construction."""
    h, how = hadamard_matrix(d, seed)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    signs = torch.randint(0, 2, (d,), generator=gen).to(torch.float64) * 2 - 1
    return signs[:, None] * h / math.sqrt(d), how


def fixing_ones(q: Float[Tensor, "d d"]) -> Float[Tensor, "d d"]:
    """``q`` composed with a Householder reflection so that the result fixes the all-ones vector.

    Returns ``q S`` with ``S`` the reflection swapping ``1/sqrt(d)`` and ``qᵀ 1/sqrt(d)``: orthogonal,
    and ``(q S) 1 = 1`` (so ``1ᵀ (q S) = 1ᵀ`` too). Then LayerNorm's mean-centring commutes with it.
    """
    q = q.to(torch.float64)
    d = q.shape[0]
    e = torch.full((d,), d ** -0.5, dtype=torch.float64)
    f = q.T @ e
    v = e - f
    if float(v.norm()) < 1e-12:  # q already fixes it
        return q
    v = v / v.norm()
    return q - 2.0 * torch.outer(q @ v, v)


# ------------------------------------------------------------------------------------------------
# the hooks
# ------------------------------------------------------------------------------------------------
def _layer_norm(model: HookedModel) -> bool:
    return str(getattr(model.cfg, "normalization_type", "RMS")) not in ("RMS", "RMSPre")


def _times(matrix: Tensor, rows_from: int = 0) -> HookFn:
    """``act @ matrix``, in float64 (a massive state of norm 10^4 rotated in float32 moves the logits by 10^-3)."""
    m = resident(matrix.to(torch.float64))

    def hook(act: Tensor, hook: Any) -> Tensor:
        q = m(act.device)
        if rows_from == 0:
            return (act.double() @ q).to(act.dtype)
        return torch.cat([act[:rows_from], (act[rows_from:].double() @ q).to(act.dtype)], dim=0)

    return hook


def rotation_hooks(model: HookedModel, q: Float[Tensor, "d d"], *, rows_from: int = 0) -> list[tuple[str, HookFn]]:
    """``fwd_hooks`` running ``model`` in the residual basis ``x' = x q`` (see the module docstring).

    ``q`` must be orthogonal, and fix the all-ones vector on a LayerNorm model (:func:`fixing_ones`).
    ``rows_from``: rotate batch rows from this index on only (a doubled batch: clean rows, then rotated).
    """
    d = int(model.cfg.d_model)
    if tuple(q.shape) != (d, d):
        raise InputError(f"the rotation must be {d} x {d} (d_model), got {tuple(q.shape)}")
    q64 = q.to(torch.float64)
    if float((q64 @ q64.T - torch.eye(d, dtype=torch.float64)).abs().max()) > 1e-6:
        raise InputError("the rotation is not orthogonal")
    if _layer_norm(model) and float((q64.sum(1) - 1.0).abs().max()) > 1e-6:
        raise InputError("a LayerNorm model needs a rotation that fixes the all-ones vector (use fixing_ones)")
    fwd, inv = _times(q, rows_from), _times(q.T.contiguous(), rows_from)
    names = ["hook_embed"] + (["hook_pos_embed"] if str(getattr(model.cfg, "positional_embedding_type", "")) == "standard" else [])
    hooks = [(n, fwd) for n in names]
    for layer in range(int(model.cfg.n_layers)):
        hooks += [(act_name("attn_out", layer), fwd), (act_name("mlp_out", layer), fwd)]
        hooks += [(act_name("normalized", layer, "ln1"), inv), (act_name("normalized", layer, "ln2"), inv)]
    hooks.append(("ln_final.hook_normalized", inv))
    require_hooks(model, [n for n, _ in hooks], reading=False)
    return hooks


def _rotation(kind: str, d: int, seed: int, layer_norm: bool) -> tuple[Tensor, str]:
    if kind == "random":
        q, how = random_orthogonal(d, seed), f"Haar-random orthogonal {d} x {d}"
    else:
        q, how = randomized_hadamard(d, seed)
        how = f"randomized Hadamard diag(s) H / sqrt(d), H = {how}"
    if layer_norm:
        q, how = fixing_ones(q), how + ", composed with the reflection fixing the all-ones vector (LayerNorm)"
    return q, how


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------
def _r(x: float, n: int = 6) -> float | None:
    return round(float(x), n) if math.isfinite(x) else None


@dataclass(frozen=True)
class DefectRotation:
    """One defect under one rotation, at its peak block: carriers' norm and component ratios (rotated over
    clean; both 1 when the defect survives) and its direction's largest-channel share before and after."""

    label: str
    block: int
    n_states: int
    norm_ratio: float
    norm_ratio_max_dev: float
    component_ratio: float
    top_channel_share_before: float
    top_channel_share_after: float
    tolerance: float = NORM_TOLERANCE

    @property
    def survives(self) -> bool:
        """Every carrier's norm ratio within ``tolerance`` of 1 (:func:`norm_tolerance` of the forward's dtype)."""
        return self.n_states > 0 and self.norm_ratio_max_dev <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "block": self.block, "n_states": self.n_states,
            "norm_ratio": _r(self.norm_ratio), "norm_ratio_max_dev": _r(self.norm_ratio_max_dev, 9),
            "component_ratio": _r(self.component_ratio),
            "top_channel_share_before": _r(self.top_channel_share_before, 4),
            "top_channel_share_after": _r(self.top_channel_share_after, 4),
            "survives": self.survives, "tolerance": self.tolerance,
        }


@dataclass(frozen=True)
class ChannelRotation:
    """One massive channel under one rotation, at its peak block: largest ``|value|`` over the block median
    before, of the same channel index after, and of the largest rotated channel (``after_any``);
    ``massive_after``: how many massive entries (any channel) the rotated stream has at that block."""

    channel: int
    block: int
    before: float
    after: float
    after_any: float
    massive_after: int

    @property
    def vanishes(self) -> bool:
        return self.massive_after == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel, "block": self.block, "max_over_median_before": _r(self.before, 2),
            "max_over_median_after": _r(self.after, 2), "max_over_median_after_any": _r(self.after_any, 2),
            "massive_after": self.massive_after,
            "vanishes": self.vanishes,
        }


@dataclass(frozen=True)
class RotationRun:
    """One rotation: how it was built, the logits' error, the defects and the channels under it."""

    kind: str
    construction: str
    logits_max_error: float
    logits_max_abs: float
    massive_before: int
    massive_after: int
    defects: tuple[DefectRotation, ...]
    channels: tuple[ChannelRotation, ...]

    @property
    def defects_survive(self) -> bool:
        return all(d.survives for d in self.defects)

    @property
    def channels_vanish(self) -> bool:
        return self.massive_after == 0 and all(c.vanishes for c in self.channels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "construction": self.construction,
            "logits_max_error": float(f"{self.logits_max_error:.3g}"), "logits_max_abs": _r(self.logits_max_abs, 3),
            "massive_entries_before": self.massive_before, "massive_entries_after": self.massive_after,
            "defects_survive": self.defects_survive, "channels_vanish": self.channels_vanish,
            "defects": [d.to_dict() for d in self.defects], "channels": [c.to_dict() for c in self.channels],
        }


@dataclass(frozen=True, eq=False)
class RotationCheck:
    """The rotation check of a model on texts (see the module docstring): one :class:`RotationRun` per rotation.

    ``restored``: the model has exactly the hooks it had before (the rotation left nothing behind).
    """

    model: str
    n_texts: int
    n_tokens: int
    seed: int
    runs: tuple[RotationRun, ...]
    restored: bool
    seconds: float = field(default=0.0)

    def run(self, kind: str) -> RotationRun:
        for r in self.runs:
            if r.kind == kind:
                return r
        raise InputError(f"no {kind!r} rotation in this check; it has {[r.kind for r in self.runs]}")

    @property
    def separates(self) -> bool:
        """Every defect survives and every massive channel vanishes, under every rotation."""
        return all(r.defects_survive and r.channels_vanish for r in self.runs)

    def summary(self) -> str:
        lines = []
        for r in self.runs:
            ds = ", ".join(f"{d.label} x{d.norm_ratio:.6f}" for d in r.defects) or "no defect"
            cs = ", ".join(f"c{c.channel}@{c.block} {c.before:,.0f} -> {c.after:,.1f}" for c in r.channels) or "no channel"
            lines.append(
                f"{r.kind}: logits max error {r.logits_max_error:.2g}; massive entries {r.massive_before} -> "
                f"{r.massive_after}; defect norms {ds}; channel max/median {cs}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "n_texts": self.n_texts, "n_tokens": self.n_tokens, "seed": self.seed,
            "restored": self.restored, "separates": self.separates, "runs": [r.to_dict() for r in self.runs],
            "seconds": round(self.seconds, 3),
        }


# ------------------------------------------------------------------------------------------------
# the analysis
# ------------------------------------------------------------------------------------------------
def _states_pass(seqs: Sequence[Tensor], dirs: Mapping[int, Tensor]) -> tuple[Pass, dict[int, list[Tensor]]]:
    """Per block of ``dirs`` (``{block: [k, d] directions}``): each text's norms and components ``[T, 1 + k]``."""
    keep: dict[int, list[Tensor]] = {b: [torch.empty(0)] * len(seqs) for b in dirs}
    mats = {b: resident(u.float().T.contiguous()) for b, u in dirs.items()}

    def reducer(block: int) -> Any:
        def reduce(act: Tensor, batch: Batch) -> Tensor:
            a = act.float()
            return torch.cat([torch.linalg.vector_norm(a, dim=-1)[..., None], a @ mats[block](a.device)], dim=-1)

        return reduce

    names = {b: act_name("resid_post", b) for b in dirs}

    def consume(batch: Batch, out: Mapping[str, Any]) -> None:
        for b, name in names.items():
            for row, i in enumerate(batch.index):
                keep[b][i] = out[name][row, : int(batch.lengths[row])]

    return Pass(seqs, {n: reducer(b) for b, n in names.items()}, consume, lambda: keep, name="rotation states"), keep


def _logits_error(model: HookedModel, tok: Tokenized, q: Tensor, batch_size: int) -> tuple[float, float]:
    """Max |logits(rotated) - logits(clean)| and max |logits| over real positions (doubled batches)."""
    err = top = 0.0
    for idx in length_sorted_batches(tok.sequences, batch_size):
        seqs = [tok.sequences[i] for i in idx]
        n = len(seqs)
        batch = make_batch(model, seqs + seqs, idx + idx)

        def reduce(act: Tensor, b: Batch) -> Tensor:
            m = b.mask[:n]
            diff = (act[n:].float() - act[:n].float()).abs().amax(-1)[m]
            return torch.stack([diff.max(), act[:n].float().abs().amax(-1)[m].max()])

        out = run_batch(model, batch, {LOGITS: reduce}, fwd_hooks=rotation_hooks(model, q, rows_from=n))
        err, top = max(err, float(out[LOGITS][0])), max(top, float(out[LOGITS][1]))
    return err, top


def _hook_count(model: HookedModel) -> int:
    return sum(len(getattr(hp, "fwd_hooks", ())) for hp in model.hook_dict.values())


def _peak(out: ActivationOutliers, channel: int) -> tuple[int, float]:
    best = max(
        ((b, float(out.max_abs["resid_post"][b, channel]) / max(float(out.block_median["resid_post"][b]), 1e-30))
         for b in out.blocks_of(channel)),
        key=lambda t: t[1],
    )
    return best


def rotation_check(
    model: HookedModel,
    report: DefectReport,
    texts: Sequence[str] | None = None,
    *,
    kinds: Sequence[str] = KINDS,
    seed: int = 0,
    relative: float = 1000.0,
    absolute: float | None = 100.0,
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
) -> RotationCheck:
    """Run ``model`` on ``texts`` without and with each rotation of ``kinds``; see the module docstring.

    Args:
        model: a TransformerLens model.
        report: its defects (:func:`~sd_lens.analyses.defects.find_defects`); the carriers are found on
            ``texts`` with the report's threshold and typical norms.
        texts: default :func:`~sd_lens.corpus.default_corpus`.
        kinds: a subset of :data:`KINDS`.
        seed: seeds the rotations.
        relative, absolute: Sun et al.'s massive criterion (1000 x the block median and above 100).

    Raises:
        InputError: bad arguments (before any forward).
    """
    t0 = time.perf_counter()
    kinds = tuple(kinds)
    if not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise InputError(f"kinds must be distinct names from {KINDS}, got {kinds!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    d = int(model.cfg.d_model)
    tolerance = norm_tolerance(getattr(torch, model_dtype(model)))
    hooks_before = _hook_count(model)
    tok = tokenize(model, default_corpus() if texts is None else list(texts), max_tokens_per_text=max_tokens_per_text)
    by_block: dict[int, list[int]] = {}
    for k, defect in enumerate(report):
        by_block.setdefault(defect.peak_layer, []).append(k)
    units = {k: (defect.direction.float() / defect.direction.float().norm()).double() for k, defect in enumerate(report)}

    def measure(q: Tensor | None) -> tuple[ActivationOutliers, dict[int, list[Tensor]]]:
        dirs = {b: torch.stack([units[k] if q is None else units[k] @ q for k in ks]) for b, ks in by_block.items()}
        hooks = [] if q is None else rotation_hooks(model, q)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*edited hook_scale/hook_normalized.*")
            warnings.filterwarnings("ignore", message=".*texts were cut to their first.*")  # said by tokenize
            out_pass = activation_outliers_pass(model, tok, relative=relative, absolute=absolute, sites=("resid_post",))
            passes = [out_pass]
            keep: dict[int, list[Tensor]] = {}
            if dirs:
                st, keep = _states_pass(tok.sequences, dirs)
                passes.append(st)
            run_passes(model, passes, batch_size=batch_size, fwd_hooks=hooks)
        return out_pass.result(), keep

    clean_out, clean_states = measure(None)
    channels = clean_out.channels("resid_post")
    runs = []
    for kind in kinds:
        q, how = _rotation(kind, d, seed, _layer_norm(model))
        rot_out, rot_states = measure(q)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*edited hook_scale/hook_normalized.*")
            err, top = _logits_error(model, tok, q, batch_size)
        defects: dict[int, DefectRotation] = {}
        for b, ks in by_block.items():
            for j, k in enumerate(ks):
                defect = report[k]
                low = report.threshold / 2 * float(report.typical_norm[b])
                c0 = torch.cat(clean_states[b])
                c1 = torch.cat(rot_states[b])
                carriers = c0[:, 1 + j].abs() >= low
                ratio = c1[carriers, 0].double() / c0[carriers, 0].double()
                comp = c1[carriers, 1 + j].double() / c0[carriers, 1 + j].double()
                n = int(carriers.sum())
                defects[k] = DefectRotation(
                    label=defect.label, block=b, n_states=n,
                    norm_ratio=float(ratio.mean()) if n else math.nan,
                    norm_ratio_max_dev=float((ratio - 1).abs().max()) if n else math.nan,
                    component_ratio=float(comp.mean()) if n else math.nan,
                    top_channel_share_before=defect_channels(units[k].float(), 1)[0][1],
                    top_channel_share_after=defect_channels((units[k] @ q).float(), 1)[0][1],
                    tolerance=tolerance,
                )
        chans = []
        for c in channels:
            b, before = _peak(clean_out, c)
            med = max(float(rot_out.block_median["resid_post"][b]), 1e-30)
            chans.append(ChannelRotation(
                channel=c, block=b, before=before, after=float(rot_out.max_abs["resid_post"][b, c]) / med,
                after_any=float(rot_out.max_abs["resid_post"][b].max()) / med,
                massive_after=sum(1 for e in rot_out.entries if e.block == b),
            ))
        runs.append(RotationRun(
            kind=kind, construction=how, logits_max_error=err, logits_max_abs=top,
            massive_before=len(clean_out.entries), massive_after=len(rot_out.entries),
            defects=tuple(defects[k] for k in sorted(defects)), channels=tuple(chans),
        ))
    return RotationCheck(
        model=model_name(model), n_texts=len(tok.sequences), n_tokens=tok.n_tokens, seed=seed, runs=tuple(runs),
        restored=_hook_count(model) == hooks_before, seconds=time.perf_counter() - t0,
    )
