"""Component attribution of each singular defect, and a causal lever chosen from it.

**Attribution.** A block adds two vectors to the residual stream: its attention output and its
FFN output, each *after* the block's own output norm where the family has one (Gemma-3's
post-attention and post-FFN norms). For every major defect, a few carrier prefixes are re-run and,
at the last token of each, the value each sublayer adds is projected on the defect direction
``d.direction``::

    resid_post[l] @ u = resid_pre[l] @ u + attn[l] + ffn[l]       (exactly, for every block)

``attn``, ``ffn`` and ``total = attn + ffn`` are means over the carriers. Which hooks carry the
added values is *checked* on every run, not assumed:

* ``split="hooks"``: ``blocks.l.hook_attn_out`` and ``blocks.l.hook_mlp_out``. On Gemma-3 (a
  ``TransformerBridge`` in compatibility mode) these are the outputs of the post-attention and
  post-FFN norms (``hook_attn_out`` is bit-identical to ``ln1_post.hook_out``), so
  ``resid_pre + attn_out + mlp_out`` is ``resid_post`` to float precision (measured: 0 on every
  block of Gemma-3-270M and SmolLM2-135M; 3e-9 relative through ``resid_mid``).
* ``split="differences"``: ``resid_mid - resid_pre`` and ``resid_post - resid_mid`` — exact by
  construction for sequential blocks, whatever the hooks mean.
* ``split="auto"`` (default): the hooks when they close (``resid_pre + attn + ffn == resid_post``
  within ``rtol`` of the residual's norm, and ``resid_pre + attn == resid_mid`` where a block
  has ``resid_mid``); else the differences.

Parallel blocks (GPT-NeoX/Pythia, GPT-J: attention and FFN read the same ``resid_pre`` and both
outputs are added at once) have no ``resid_mid``; there the split is the one the hooks give,
``resid_post - resid_pre = attn_out + mlp_out``, which is exact as checked (no difference of
residual hooks can separate the two; an architecture whose hooks do not close is refused).

The **explosion set** of a defect is the smallest set of blocks, up to the block where its mean
component peaks, whose added components (``total``) reach ``fraction`` of that peak component:
blocks taken by decreasing ``total``. A one-block explosion (SmolLM2) is one block; a build-up over
several blocks (Gemma-3) is the set of blocks that build it — the layer-wise picture of Sun et al.

The **lever** chosen from this attribution (a causal check) lives in
:mod:`sd_lens.analyses.causal.lever`.

References: Wang et al., *Demystifying Singular Defects in Large Language Models* (ICML 2025)
(explosion and decay layers, observation (ii)); Sun et al., *Massive Activations in Large Language
Models* (2024) (massive activations appear abruptly in a few early layers; interventions on them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sd_lens.analyses.defects import Defect, DefectReport, carrier_order
from sd_lens.analyses.probe import NormProbe
from sd_lens.analyses.residual_identity import closure as identity_closure
from sd_lens.errors import InputError, UnsupportedArchitectureError
from sd_lens.interventions import project_out, remove_matched
from sd_lens.linalg import unit
from sd_lens.models.metadata import model_dtype
from sd_lens.runtime.engine import stream
from sd_lens.runtime.hooks import act_name, require_hooks
from sd_lens.runtime.reducers import last_token
from sd_lens.types import HookedModel

__all__ = [
    "ComponentAttribution",
    "DefectAttribution",
    "SublayerComponents",
    "component_attribution",
    "explosion_set",
    "remove_along",
    "remove_matched",
    "sublayer_components",
]

Split = Literal["auto", "hooks", "differences"]
Sublayer = Literal["attn", "ffn"]


# ------------------------------------------------------------------------------------------------
# attribution
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class DefectAttribution:
    """What each block's attention and FFN add along one defect's direction (means over carriers).

    ``attn[l]``, ``ffn[l]``: the component along ``direction`` of the value the sublayer adds to the
    residual at block ``l`` (after any post-norm); ``total = attn + ffn`` is the block's update of
    the component, ``component[l]`` the component at ``resid_post`` of block ``l`` and ``start`` the
    one of the embedding (``resid_pre`` of block 0), so ``component = start + cumsum(total)``.
    ``peak_layer``: where ``component`` peaks within the defect's blocks (``first_layer`` to
    ``last_layer``, its high-norm states). ``explosion_set``: the smallest set of blocks (by decreasing ``total``, up to ``peak_layer``)
    whose totals reach ``fraction`` x ``peak_component``; ``reached`` is the fraction they reach.
    """

    defect: int
    label: str
    direction: Tensor
    initial_token: bool
    first_layer: int
    last_layer: int
    carriers: list[Tensor] = field(repr=False)
    start: float
    attn: Tensor
    ffn: Tensor
    total: Tensor
    component: Tensor
    peak_layer: int
    peak_component: float
    explosion_set: list[int]
    fraction: float
    reached: float
    closure_error: float

    @property
    def n_carriers(self) -> int:
        return len(self.carriers)

    def dominant(self, layer: int) -> Sublayer:
        """The sublayer that adds more along the direction at block ``layer``."""
        return "attn" if float(self.attn[layer]) > float(self.ffn[layer]) else "ffn"

    def to_dict(self) -> dict[str, Any]:
        return {
            "defect": self.defect,
            "label": self.label,
            "initial_token": self.initial_token,
            "n_carriers": self.n_carriers,
            "first_layer": self.first_layer,
            "last_layer": self.last_layer,
            "start": round(self.start, 3),
            "attn": [round(float(x), 3) for x in self.attn],
            "ffn": [round(float(x), 3) for x in self.ffn],
            "total": [round(float(x), 3) for x in self.total],
            "component": [round(float(x), 3) for x in self.component],
            "peak_layer": self.peak_layer,
            "peak_component": round(self.peak_component, 3),
            "explosion_set": list(self.explosion_set),
            "dominant": {str(layer): self.dominant(layer) for layer in self.explosion_set},
            "fraction": self.fraction,
            "reached": round(self.reached, 4),
            "closure_error": float(f"{self.closure_error:.3g}"),
        }


@dataclass(frozen=True, eq=False)
class ComponentAttribution:
    """Per-block attention / FFN attribution of every major defect (iterate for the defects).

    ``split`` says which values were used (``"hooks"``: ``hook_attn_out`` / ``hook_mlp_out``;
    ``"differences"``: differences of residual hooks); ``parallel`` whether the blocks run attention
    and FFN in parallel; ``closure_error`` the largest ``|resid_pre + attn + ffn - resid_post|``
    over carriers and blocks, relative to the residual's norm there.
    """

    model: str
    n_layers: int
    split: str
    parallel: bool
    fraction: float
    closure_error: float
    defects: list[DefectAttribution]

    def __len__(self) -> int:
        return len(self.defects)

    def __iter__(self):
        return iter(self.defects)

    def __getitem__(self, i: int) -> DefectAttribution:
        return self.defects[i]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n_layers": self.n_layers,
            "split": self.split,
            "parallel": self.parallel,
            "fraction": self.fraction,
            "closure_error": float(f"{self.closure_error:.3g}"),
            "defects": [d.to_dict() for d in self.defects],
        }


def explosion_set(
    total: Float[Tensor, " n_layers"], peak_layer: int, peak_component: float, fraction: float
) -> tuple[list[int], float]:
    """Smallest set of blocks ``<= peak_layer`` whose ``total`` reach ``fraction * peak_component``.

    Blocks are taken by decreasing positive ``total`` (which gives the smallest set); returns the
    sorted blocks and the fraction of the peak they reach (below ``fraction`` when every adding
    block together does not reach it, e.g. when the embedding already carries most of the peak).
    """
    if peak_component <= 0:
        return [], 0.0
    upto = total[: peak_layer + 1].double()
    chosen: list[int] = []
    acc = 0.0
    for layer in torch.argsort(upto, descending=True, stable=True).tolist():
        if float(upto[layer]) <= 0 or acc >= fraction * peak_component:
            break
        chosen.append(int(layer))
        acc += float(upto[layer])
    return sorted(chosen), acc / peak_component


def carrier_prefixes(probe: NormProbe, d: Defect, max_carriers: int = 8) -> list[Int[Tensor, " pos"]]:
    """Token prefixes ending at the defect's carriers, the order of :func:`find_defects`'s tracing.

    A defect of the initial token is traced on the initial token alone (its state is the same in
    every text). Otherwise: one occurrence of each carrier token, most frequent first, then more
    occurrences, distinct prefixes only, at most ``max_carriers``.
    """
    order = carrier_order(probe, d)
    if d.initial_token and order and order[0].initial:
        return [probe.sequences[order[0].seq][:1]]
    order = [e for e in order if not e.initial]
    out: list[Tensor] = []
    seen: set[tuple[int, ...]] = set()
    for e in order:
        prefix = probe.sequences[e.seq][: e.position + 1]
        key = tuple(prefix.tolist())
        if key not in seen:
            seen.add(key)
            out.append(prefix)
        if len(out) >= max_carriers:
            break
    return out


def _is_parallel(model: HookedModel) -> bool:
    return act_name("resid_mid", 0) not in model.hook_dict


@dataclass(frozen=True, eq=False)
class SublayerComponents:
    """Per carrier: what each block's attention and FFN add along each of some directions.

    ``attn``, ``ffn``, ``post``: ``[k, n_layers, n_dirs]`` (``post`` is the component at each block's
    ``resid_post``), ``start``: ``[k, n_dirs]`` (the embedding's component). ``split``: which values
    were used; ``closure_error``: the largest ``|resid_pre + attn + ffn - resid_post|`` (whole
    vectors) over carriers and blocks, relative to the residual's norm there; ``scale``:
    ``[k, n_layers]`` that norm (the larger of ``resid_pre`` and ``resid_post``, at least 1).
    """

    attn: Tensor
    ffn: Tensor
    post: Tensor
    start: Tensor
    scale: Tensor
    split: str
    parallel: bool
    closure_error: float


def sublayer_components(
    model: HookedModel,
    prefixes: list[Int[Tensor, " pos"]],
    directions: Float[Tensor, "n_dirs d_model"],
    *,
    split: Split = "auto",
    rtol: float = 1e-4,
    batch_size: int = 16,
) -> SublayerComponents:
    """Re-run ``prefixes`` and split each block's update of their last token along ``directions``.

    See the module docstring for ``split``; the values are checked to add up to the residual
    update (whole vectors, not only along the directions) on every block and carrier.
    """
    if split not in ("auto", "hooks", "differences"):
        raise InputError(f"split must be 'auto', 'hooks' or 'differences', got {split!r}")
    if not (math.isfinite(rtol) and rtol > 0):
        raise InputError(f"rtol must be a positive number, got {rtol}")
    n_layers, d_model = int(model.cfg.n_layers), int(model.cfg.d_model)
    if directions.ndim != 2 or directions.shape[1] != d_model:
        raise InputError(f"directions must be [n, d_model={d_model}], got {tuple(directions.shape)}")
    parallel = _is_parallel(model)
    if parallel and split == "differences":
        raise InputError("split='differences' needs resid_mid: this model's blocks are parallel")
    kinds = ["resid_pre", "attn_out", "mlp_out", "resid_post"] + ([] if parallel else ["resid_mid"])
    names = {k: [act_name(k, layer) for layer in range(n_layers)] for k in kinds}
    require_hooks(model, [n for ns in names.values() for n in ns])
    acts = {k: torch.zeros(len(prefixes), n_layers, d_model, dtype=torch.float64) for k in kinds}
    reducers = {n: last_token for ns in names.values() for n in ns}
    for batch, values in stream(model, prefixes, reducers, batch_size=batch_size):
        for k in kinds:
            acts[k][batch.index] = torch.stack([values[n].double() for n in names[k]], dim=1)
    eps = torch.finfo(getattr(torch, model_dtype(model))).eps  # the residual stream's additions round so

    pre, post = acts["resid_pre"], acts["resid_post"]
    a_hook, f_hook = acts["attn_out"], acts["mlp_out"]
    # the residual identity (sd_lens.analyses.residual_identity) on the carriers: the hooks close when every
    # block's error is within rtol plus what rounding the additions in the model's dtype allows
    check = identity_closure(pre, a_hook, f_hook, post, None if parallel else acts["resid_mid"], eps=eps)
    scale = check.scale

    def rel(x: Tensor) -> float:
        if not len(prefixes):
            return 0.0
        return float((x.norm(dim=-1) / scale).amax())

    err, excess = check.error(), check.excess()
    hooks_close = excess <= rtol
    if split == "hooks" or (split == "auto" and (hooks_close or parallel)):
        if not hooks_close:
            raise UnsupportedArchitectureError(
                f"hook_attn_out + hook_mlp_out do not add up to the residual update (relative error {err:.3g} "
                f"> rtol={rtol:g})" + ("; the blocks are parallel, so no exact split exists" if parallel else "")
                + ("" if parallel else ": use split='differences'")
            )
        used, attn_v, ffn_v, closure = "hooks", a_hook, f_hook, err
    else:
        mid = acts["resid_mid"]
        used, attn_v, ffn_v = "differences", mid - pre, post - mid
        closure = rel(pre + attn_v + ffn_v - post)
    u = unit(directions.detach().double().cpu()).T  # [d_model, n_dirs]
    return SublayerComponents(
        attn=(attn_v @ u).float(), ffn=(ffn_v @ u).float(), post=(post @ u).float(), start=(pre[:, 0] @ u).float(),
        scale=scale.float(), split=used, parallel=parallel, closure_error=closure,
    )


def component_attribution(
    model: HookedModel,
    report: DefectReport,
    probe: NormProbe,
    *,
    max_carriers: int = 8,
    fraction: float = 0.8,
    split: Split = "auto",
    rtol: float = 1e-4,
    batch_size: int = 16,
) -> ComponentAttribution:
    """What each block's attention and FFN add along each major defect's direction.

    Args:
        model: the model ``report`` and ``probe`` come from.
        report: :func:`~sd_lens.analyses.defects.find_defects` of ``probe`` (its major defects).
        probe: the :class:`~sd_lens.analyses.probe.NormProbe` (for the carrier prefixes).
        max_carriers: carrier prefixes re-run per defect (one for an initial-token defect).
        fraction: the explosion set reaches this fraction of the peak component.
        split: ``"auto"``, ``"hooks"`` or ``"differences"`` (see the module docstring).
        rtol: the hooks close when ``|resid_pre + attn + ffn - resid_post|`` is within ``rtol`` of
            the residual's norm at every block and carrier, plus what the rounding of those additions in
            the model's dtype allows (``eps · (|resid_pre| + |attn| + |ffn|)``; it matters in bfloat16 and
            float16, not in float32).
        batch_size: prefixes per forward.

    Raises:
        InputError: bad arguments (before any forward).
        UnsupportedArchitectureError: ``split="hooks"`` and the hooks do not close, or parallel
            blocks whose hooks do not close (no exact split exists from the residual hooks).
    """
    if max_carriers < 1:
        raise InputError(f"max_carriers must be at least 1, got {max_carriers}")
    if not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    if report.n_layers != probe.n_layers or report.n_layers != int(model.cfg.n_layers):
        raise InputError(
            f"the report covers {report.n_layers} blocks, the probe {probe.n_layers} and the model "
            f"{model.cfg.n_layers}: attribute a report of the whole model"
        )
    n_layers = report.n_layers
    plans = [carrier_prefixes(probe, d, max_carriers) for d in report]
    prefixes: list[Tensor] = []
    index: dict[tuple[int, ...], int] = {}
    rows: list[list[int]] = []
    for plan in plans:
        mine = []
        for p in plan:
            key = tuple(p.tolist())
            if key not in index:
                index[key] = len(prefixes)
                prefixes.append(p)
            mine.append(index[key])
        rows.append(mine)
    dirs = torch.stack([d.direction for d in report]) if len(report) else torch.zeros(0, int(model.cfg.d_model))
    parts = sublayer_components(model, prefixes, dirs, split=split, rtol=rtol, batch_size=batch_size)

    out = []
    for j, (d, mine) in enumerate(zip(report, rows)):
        a = parts.attn[mine, :, j].double().mean(0)
        f = parts.ffn[mine, :, j].double().mean(0)
        comp = parts.post[mine, :, j].double().mean(0)
        start = float(parts.start[mine, j].double().mean())
        total = a + f
        c_err = float(((start + total.cumsum(0) - comp).abs() / parts.scale[mine].double().amax(0)).amax())
        peak = d.first_layer + int(comp[d.first_layer : d.last_layer + 1].argmax())
        blocks, reached = explosion_set(total, peak, float(comp[peak]), fraction)
        out.append(
            DefectAttribution(
                defect=d.index, label=d.label, direction=unit(d.direction.float()), initial_token=d.initial_token,
                first_layer=d.first_layer, last_layer=d.last_layer, carriers=[prefixes[i] for i in mine],
                start=start, attn=a.float(), ffn=f.float(), total=total.float(), component=comp.float(),
                peak_layer=peak, peak_component=float(comp[peak]), explosion_set=blocks, fraction=fraction,
                reached=reached, closure_error=max(parts.closure_error, c_err),
            )
        )
    return ComponentAttribution(
        model=report.model, n_layers=n_layers, split=parts.split, parallel=parts.parallel, fraction=fraction,
        closure_error=max([parts.closure_error] + [d.closure_error for d in out]), defects=out,
    )


# ------------------------------------------------------------------------------------------------
# interventions on the sublayer outputs
# ------------------------------------------------------------------------------------------------
#: :func:`sd_lens.interventions.project_out` (with its ``removed`` list): the name the lever's
#: docs and earlier code use
remove_along = project_out
