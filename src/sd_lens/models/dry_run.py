"""A dry run: what each stage of :func:`sd_lens.run_analysis` would hold in memory, by arithmetic.

:func:`dry_run` takes a model's shape — a name of :data:`~sd_lens.models.synthetic.SHAPES`
(``"70b"``), a :class:`~sd_lens.models.synthetic.ModelShape`, a ``transformers`` model (a meta-device
one from :func:`~sd_lens.synthetic_model` allocates nothing) or a TransformerLens model — and walks the
stages of the analysis, adding up the **dominant allocations** each one keeps on the weights' device
while it runs: the weights themselves (resident in every stage), then the stage's own tensors. Nothing
runs and nothing is allocated. A stage whose total is over ``budget_gb`` fails the run
(:class:`~sd_lens.errors.InputError` naming it), before any model is loaded.

Each item says how it was obtained:

* ``computed`` — the size follows from shapes the code fixes: the weights (the parameters of the
  model when given, else the shape's count), the float32 copies of a :class:`~sd_lens.models.view.ModelView`
  (all blocks when they fit in 2 GiB, else the last 4 read), the closed-form FFN fit's float64
  ``W_in``/``W_gate`` copies and its ``d_mlp × d_model`` float64 map, the per-head ``n_heads × d × d``
  attention matrices of the blocks whose ``L`` is kept (the explosion and decay blocks), the norm
  probe's three float32 norms per token and block, the activation outliers' running maxima and median
  samples (read from :func:`~sd_lens.analyses.activation_outliers.activation_outliers_pass`'s defaults),
  the float32 copy that ``dtype_check`` / ``forward_dtype`` need (:func:`sd_lens.runtime.precision.extra_bytes`'s rule),
  the defect finder's traced carrier streams (one per text, capped at ``TRACE_BUDGET_BYTES``).
* ``estimated`` — what a forward holds at once: one block's intermediate tensors for one batch
  (``batch × tokens × (3 d_mlp + 4 d_model)`` in the forward's dtype) and the eager attention's scores
  and pattern (``2 × batch × heads × tokens²`` float32; none from ``LEAN_FROM`` positions on, where blocks
  run fused attention); the logits of a perplexity forward; a dense
  general eigenproblem's workspace (``4 d² `` float64). Allocator slack, fragmentation, CUDA context
  (~0.5 GB) and the library's own caches are not counted: keep the budget ~10 % under the card.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from sd_lens.errors import InputError
from sd_lens.models.synthetic import ModelShape, resolve_shape

__all__ = ["DryRun", "MemoryItem", "StageMemory", "dry_run", "shape_of"]

GB = 1e9
_GATED = {"llama", "mistral", "qwen2", "gemma3"}


@dataclass(frozen=True)
class MemoryItem:
    """One allocation: what it is, its bytes, and whether the size is ``computed`` or ``estimated``."""

    what: str
    bytes: int
    how: Literal["computed", "estimated"]


@dataclass(frozen=True)
class StageMemory:
    """A stage's dominant allocations on the weights' device; ``total`` includes the resident weights."""

    stage: str
    items: tuple[MemoryItem, ...]
    weights: int

    @property
    def own(self) -> int:
        return sum(i.bytes for i in self.items)

    @property
    def total(self) -> int:
        return self.weights + self.own


@dataclass(frozen=True)
class DryRun:
    """The stages of one analysis with their memory, against a budget (see :func:`dry_run`)."""

    shape: ModelShape
    family: str
    dtype: str
    n_tokens: int
    budget: int
    n_devices: int
    stages: tuple[StageMemory, ...] = field(default=())

    @property
    def peak(self) -> StageMemory:
        return max(self.stages, key=lambda s: s.total)

    @property
    def over(self) -> list[StageMemory]:
        """The stages over the budget."""
        return [s for s in self.stages if s.total > self.budget]

    @property
    def fits(self) -> bool:
        return not self.over

    def table(self) -> str:
        """A Markdown table: each stage's own allocations, its total with the weights, the largest item."""
        rows = ["| stage | own (GB) | with weights (GB) | largest item |", "|---|---:|---:|---|"]
        for s in self.stages:
            top = max(s.items, key=lambda i: i.bytes, default=None)
            item = f"{top.what} ({top.bytes / GB:.2f} GB, {top.how})" if top else "—"
            rows.append(f"| {s.stage} | {s.own / GB:.2f} | {s.total / GB:.2f} | {item} |")
        return "\n".join(rows)


def shape_of(model_or_shape: Any, family: str = "llama") -> tuple[ModelShape, str, int | None]:
    """(shape, family, exact parameter count or None) of a shape name, a ModelShape, a ``transformers``
    model or a TransformerLens model."""
    if isinstance(model_or_shape, (str, ModelShape)):
        return resolve_shape(model_or_shape), family, None
    n_params = sum(p.numel() for p in model_or_shape.parameters()) if hasattr(model_or_shape, "parameters") else None
    tl = getattr(model_or_shape, "cfg", None)
    if tl is not None and hasattr(tl, "d_model"):
        heads = int(tl.n_heads)
        shape = ModelShape(
            d_model=int(tl.d_model), d_mlp=int(tl.d_mlp), n_layers=int(tl.n_layers), n_heads=heads,
            n_kv_heads=int(getattr(tl, "n_key_value_heads", None) or heads), vocab_size=int(tl.d_vocab),
        )
        from sd_lens.models.registry import get_family

        return shape, get_family(model_or_shape).name, n_params
    cfg = getattr(model_or_shape, "config", None)
    if cfg is not None and (hasattr(cfg, "num_hidden_layers") or hasattr(cfg, "n_layer")):
        get = lambda *names: next(getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None)  # noqa: E731
        d = int(get("hidden_size", "n_embd"))
        heads = int(get("num_attention_heads", "n_head"))
        shape = ModelShape(
            d_model=d, d_mlp=int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d),
            n_layers=int(get("num_hidden_layers", "n_layer")), n_heads=heads,
            n_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads), vocab_size=int(cfg.vocab_size),
        )
        arch = type(model_or_shape).__name__.lower()
        fam = next((f for f in ("gemma3", "qwen2", "mistral", "llama", "gpt2", "neox") if f in arch), family)
        return shape, "neox" if "gptneox" in arch else fam, n_params
    raise InputError(f"dry_run needs a shape name, a ModelShape or a model, got {type(model_or_shape).__name__}")


def _default(func: Any, name: str) -> Any:
    return inspect.signature(func).parameters[name].default


def dry_run(
    model_or_shape: Any = "70b",
    *,
    family: str = "llama",
    dtype: str | torch.dtype = "bfloat16",
    n_texts: int = 48,
    max_tokens_per_text: int = 64,
    batch_size: int = 16,
    n_kept_blocks: int = 3,
    dtype_check: bool = True,
    forward_dtype: str | None = None,
    channels: bool = False,
    local_checks: bool = False,
    interventions: bool = False,
    budget_gb: float = 80.0,
    n_devices: int = 1,
    check: bool = True,
) -> DryRun:
    """Each stage's dominant memory for an analysis of ``model_or_shape`` (see the module docstring).

    Args:
        model_or_shape: ``"70b"`` (or another name of ``SHAPES``), a ``ModelShape``, a ``transformers``
            or TransformerLens model (only its config and parameter count are read).
        family: the family when a shape is given (gated FFN or not).
        dtype: the weights' dtype. n_texts, max_tokens_per_text, batch_size: the corpus and batching of
            ``run_analysis``. n_kept_blocks: blocks whose ``L`` is kept (explosion + decay blocks).
        dtype_check, forward_dtype, channels, local_checks, interventions: ``run_analysis``'s options.
        budget_gb: the memory of one device (GB, 1e9 bytes). check: raise when a stage is over it.
        n_devices: devices the blocks are split over (``device_map``): each holds ``1/n_devices`` of the
            weights (and of a cast copy); a stage's own tensors are counted whole on one device, since each
            block's work stays on that block's device.

    Raises:
        InputError: ``check`` and a stage over the budget (the message names each one and its total).
    """
    from sd_lens.analyses.activation_outliers import activation_outliers_pass
    from sd_lens.analyses.state_directions import TRACE_BUDGET_BYTES
    from sd_lens.models.view import CACHE_ALL_BYTES, CACHED_BLOCKS_BIG
    from sd_lens.runtime.attention import LEAN_FROM
    from sd_lens.runtime.precision import parse_dtype

    shape, fam, exact_params = shape_of(model_or_shape, family)
    gated = fam in _GATED
    w = torch.empty((), dtype=parse_dtype(dtype)).element_size()
    fwd = torch.empty((), dtype=parse_dtype(forward_dtype or dtype)).element_size()
    d, f, L, H, V = shape.d_model, shape.d_mlp, shape.n_layers, shape.n_heads, shape.vocab_size
    T, B = max_tokens_per_text + 1, batch_size
    N = n_texts * T
    params = exact_params if exact_params is not None else shape.n_params(gated=gated)
    if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
        raise InputError(f"n_devices={n_devices!r}: give a positive integer")
    weights = params * w // n_devices
    block_params = shape.n_params(gated=gated) - 2 * V * d
    C, E = "computed", "estimated"

    def item(what: str, n: float, how: str = C) -> MemoryItem:
        return MemoryItem(what, int(n), how)  # type: ignore[arg-type]

    forward = item(f"one block's activations for a batch of {B} × {T} tokens", B * T * (3 * f + 4 * d) * fwd, E)
    # from LEAN_FROM positions on, blocks without a pattern hook run fused attention: no T² scores kept
    scores = item("eager attention scores and pattern", 2 * B * H * T * T * 4 if T < LEAN_FROM else 0, E)
    cast = []
    if forward_dtype is not None and fwd > w:
        cast = [item(f"the weights cast to {forward_dtype} (growth)", params * (fwd - w) / n_devices)]
    view_blocks = L if 4 * block_params <= CACHE_ALL_BYTES else CACHED_BLOCKS_BIG
    per_block_f32 = (2 * d * d + (3 if gated else 2) * d * f) * 4  # W_V, W_O (heads expanded), FFN
    view = item(f"float32 view of {view_blocks} block(s) (W_V, W_O expanded to {H} heads, FFN)",
                view_blocks * per_block_f32)
    stages: list[StageMemory] = []

    def stage(name: str, *items: MemoryItem) -> None:
        stages.append(StageMemory(name, tuple(items), weights))

    stage("probe", forward, scores, *cast, item("norms: 3 float32 per token and block", N * L * 3 * 4))
    stage("defects", forward, scores, *cast, item("cluster ids per token and block (int64)", N * L * 8),
          item("carriers' residual streams kept for tracing (float32, at most TRACE_BUDGET_BYTES)",
               min(TRACE_BUDGET_BYTES, n_texts * (L + 1) * d * 4)))
    if dtype_check and w < 4 and forward_dtype is None:
        stage("dtype_check", item("the weights cast to float32 (growth)", params * (4 - w) / n_devices),
              item("float32 forward activations", B * T * (3 * f + 4 * d) * 4, E), scores)
    fit = item(f"Gaussian FFN fit: float64 W_in{', W_gate' if gated else ''} and the {f} × {d} map",
               ((2 if gated else 1) * d * f + f * d) * 8)
    per_head = item(f"per-head attention matrices of a kept block ({H} × {d} × {d} float32)", H * d * d * 4)
    kept = item(f"A, F, L of {n_kept_blocks} kept block(s) (float32)", n_kept_blocks * 3 * d * d * 4)
    vectors = item("leading triplets of L and F per block", L * 6 * d * 4)
    stage("spectra", *cast, view, fit, per_head, kept, vectors)
    stage("decay_checks", *cast, view, kept, item("dense general eigenproblem workspace (float64)", 4 * d * d * 8, E))
    if channels:
        k = _default(activation_outliers_pass, "top_k")
        n_sample = _default(activation_outliers_pass, "median_tokens")
        tracks = L * (d + f) * (k * (3 * 8 + 2 * 4) + n_sample * 4)
        stage("outliers_and_sinks", forward, scores, *cast,
              item(f"running top-{k} maxima and {n_sample}-token median samples, 2 sites × {L} blocks", tracks),
              item("a batch's real tokens in float32 at the widest site, with their maxima", 3 * B * T * f * 4, E))
        stage("attribution", forward, scores, *cast, item("per-block attention/FFN components of the carriers",
                                                         n_texts * L * 3 * d * 4))
        stage("life_cycle", forward, *cast, view, item("down-projection inputs of the carriers", n_texts * L * f * 4))
    if local_checks:
        stage("local_checks", *cast, view, item("local Jacobians of a carrier's FFN (float64)", 2 * d * d * 8, E),
              forward)
    if interventions:
        stage("interventions", forward, scores, *cast,
              item(f"logits and log-probabilities, clean and intervened rows ({V} wide, float32)",
                   2 * 2 * B * T * V * 4, E))
    run = DryRun(shape=shape, family=fam, dtype=str(parse_dtype(dtype)).removeprefix("torch."), n_tokens=N,
                 budget=int(budget_gb * GB), n_devices=n_devices, stages=tuple(stages))
    if check and run.over:
        worst = ", ".join(f"{s.stage} {s.total / GB:.1f} GB" for s in run.over)
        raise InputError(
            f"the analysis of this {fam} model ({params / 1e9:.1f}B parameters, {run.dtype}) needs more than "
            f"{budget_gb:g} GB per device in: {worst} (weights {weights / GB:.1f} GB per device). Split it over more devices "
            "(device_map), use a smaller corpus or batch, or skip the float32 check (dtype_check=False)"
        )
    return run
