"""A lean attention path for long texts: the same numbers without ``[batch, heads, T, T]`` tensors.

A ``TransformerBridge`` rebuilds attention step by step so that ``hook_attn_scores`` and
``hook_pattern`` can fire: per block it materialises the scores, a masked copy, the softmax and the
pattern, each ``[batch, heads, T, T]`` float32 — 2.3 GB per tensor for SmolLM2's 9 heads at 8 000
tokens, several of them alive at once (and a ``JointQKVAttentionBridge`` keeps its last pattern on the
module). Nothing in sd_lens reads them unless an analysis asks for the pattern.

So :func:`~sd_lens.runtime.engine.forward` runs the attention of every block whose
``hook_attn_scores`` and ``hook_pattern`` carry no hook through
:func:`torch.nn.functional.scaled_dot_product_attention` instead (causal, or with the model's own
mask where it matters: padding or a sliding window shorter than the text; GQA by expanding the
key/value heads, which is linear in T). Every other hook point of the block still fires where it
did (``hook_in``, ``hook_q``/``k``/``v``, ``hook_rot_q``/``k``, the norms, ``hook_z``, ``hook_out``);
an analysis that attaches a hook to a block's pattern or scores (attention sinks, the per-text
attention views) gets the eager attention in that block, unchanged.

* ``"auto"`` (default): lean from :data:`LEAN_FROM` positions on — below it the eager path is as
  fast and the numbers are bit-identical to what sd_lens always computed;
* ``"eager"``: never (``with attention_path("eager"): ...``);
* ``"lean"``: at every length (for tests and comparisons).

The lean output equals the eager one within float32 rounding (``tests/unit/test_lean_attention.py``
checks every tiny family). Where it applies: rotary attention (``PositionEmbeddingsAttentionBridge``:
Llama, Mistral, Qwen2, SmolLM2, Gemma-3 with its sliding window and q/k norms) and fused-QKV attention
(``JointQKVAttentionBridge``: GPT-2; ``JointQKVPositionEmbeddingsAttentionBridge``: GPT-NeoX). Where it
does not (:func:`lean_support` says why, and that block stays eager): a ``HookedTransformer`` (its
attention is TransformerLens's own, with no seam to replace), and bridge attention with features the
fused kernel cannot express or that sd_lens has not checked — logit soft-capping, learned attention
sinks, gated queries, split-QKV inputs, per-head results, clipped QKV, a key multiplier, q/k norms
applied before the head split or after RoPE, Cohere/GLM-style rotary layouts, Llama-4 query scaling,
upcast attention, dropout while training. (A KV cache with earlier positions in it, which sd_lens
never uses, gets the eager computation inside the lean forward.)
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LEAN_FROM", "AttentionPath", "attention_path", "lean_attention", "lean_blocks", "lean_support"]

#: the lean path runs (in ``"auto"``) from this many positions per row on
LEAN_FROM = 256

AttentionPath = Literal["auto", "eager", "lean"]

_PATH: ContextVar[AttentionPath] = ContextVar("sd_lens_attention_path", default="auto")


@contextmanager
def attention_path(path: AttentionPath) -> Iterator[None]:
    """Choose the attention path of every sd_lens forward inside the block (this thread/context only).

    ``"auto"``: lean from :data:`LEAN_FROM` positions on; ``"eager"``: the model's own attention always;
    ``"lean"``: lean at every length. Blocks with a hook on their pattern or scores are always eager.
    """
    if path not in ("auto", "eager", "lean"):
        raise ValueError(f"attention path must be 'auto', 'eager' or 'lean', got {path!r}")
    token = _PATH.set(path)
    try:
        yield
    finally:
        _PATH.reset(token)


def _hooked(hook_point: Any) -> bool:
    return hook_point is not None and bool(
        getattr(hook_point, "_forward_hooks", None) or getattr(hook_point, "_forward_pre_hooks", None)
    )


def _bridge_classes() -> tuple[Any, Any, Any] | None:
    try:
        from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import JointQKVAttentionBridge
        from transformer_lens.model_bridge.generalized_components.joint_qkv_position_embeddings_attention import (
            JointQKVPositionEmbeddingsAttentionBridge,
        )
        from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
            PositionEmbeddingsAttentionBridge,
        )
    except ImportError:  # pragma: no cover - TransformerLens without the bridge
        return None
    return PositionEmbeddingsAttentionBridge, JointQKVAttentionBridge, JointQKVPositionEmbeddingsAttentionBridge


def lean_support(attn: Any) -> str | None:
    """None when the lean path can replace this attention module's computation, else the reason it cannot."""
    classes = _bridge_classes()
    if classes is None:
        return "TransformerLens has no bridge attention classes"
    rotary, joint, joint_rotary = classes
    cfg = getattr(attn, "config", None)
    hf = attn._modules.get("_original_component") if hasattr(attn, "_modules") else None
    if hf is None:
        return "not a TransformerBridge attention module (a HookedTransformer's attention has no seam to replace)"

    def flag(name: str) -> bool:
        return bool(getattr(cfg, name, False))

    if flag("use_attn_result"):
        return "per-head results (use_attn_result) are computed from the pattern"
    if flag("use_split_qkv_input") or flag("use_attn_in"):
        return "split-QKV inputs (use_split_qkv_input / use_attn_in)"
    if attn.training and float(getattr(hf, "attention_dropout", 0.0) or 0.0) > 0:
        return "attention dropout while training"
    kind: Any = type(attn)
    if kind.forward is rotary.forward and isinstance(attn, rotary):
        if flag("gated_q_proj") or attn._modules.get("gate") is not None:
            return "gated attention"
        if getattr(hf, "key_multiplier", None) is not None:
            return "a key multiplier"
        if getattr(getattr(hf, "config", None), "clip_qkv", None) is not None:
            return "clipped QKV"
        if getattr(hf, "attn_logit_softcapping", None) is not None:
            return "attention logit soft-capping"
        if getattr(hf, "sinks", None) is not None:
            return "learned attention sinks"
        if "q_norm" in attn.submodules and (attn._qk_norm_phase != "post_reshape" or flag("qk_norm_after_rope")):
            return "q/k norms before the head split or after RoPE"
        if flag("rotary_interleaved_cos_sin") or flag("rotary_adjacent_pairs"):
            return "an adjacent-pairs rotary layout"
        rope = getattr(getattr(hf, "config", None), "rope_parameters", None)
        if isinstance(rope, dict) and rope.get("llama_4_scaling_beta") is not None:
            return "Llama-4 query scaling"
        return None
    if kind._reconstruct_attention in (joint._reconstruct_attention, joint_rotary._reconstruct_attention) and isinstance(
        attn, joint
    ):
        if getattr(attn, "_reorder_and_upcast_attn", False):
            return "upcast attention (reorder_and_upcast_attn)"
        return None
    return f"{kind.__name__} has no lean implementation"


def lean_blocks(model: Any, n_positions: int) -> list[int]:
    """The blocks whose attention a forward of ``n_positions`` per row would run lean, now (with the hooks
    attached at this moment and the :func:`attention_path` in force)."""
    path = _PATH.get()
    if path == "eager" or (path == "auto" and n_positions < LEAN_FROM):
        return []
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return []
    out = []
    for i, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if attn is None or _hooked(getattr(attn, "hook_attn_scores", None)) or _hooked(getattr(attn, "hook_pattern", None)):
            continue
        if lean_support(attn) is None:
            out.append(i)
    return out


@contextmanager
def lean_attention(model: Any, n_positions: int, *, masked: bool = False) -> Iterator[list[int]]:
    """Run the attention of :func:`lean_blocks` lean inside the block; yields their indices.

    Called by :func:`~sd_lens.runtime.engine.forward` after the forward's hooks are attached.
    ``masked``: the caller passes a padding mask (then the model's mask goes to the kernel). The
    replacement is an instance attribute of each module, removed on exit, also on error.
    """
    blocks = lean_blocks(model, n_positions)
    with ExitStack() as stack:
        for i in blocks:
            stack.enter_context(_patched(model.blocks[i].attn, masked))
        yield blocks


@contextmanager
def _patched(attn: Any, masked: bool) -> Iterator[None]:
    classes = _bridge_classes()
    assert classes is not None
    rotary = classes[0]
    if isinstance(attn, rotary):
        name, fn = "forward", _rotary_forward(attn, masked)
    else:
        name, fn = "_reconstruct_attention", _joint_reconstruct(attn, masked)
    # object.__setattr__: a bridge component forwards attribute writes to the wrapped HF module
    object.__setattr__(attn, name, fn)
    try:
        yield
    finally:
        if vars(attn).get(name) is fn:
            object.__delattr__(attn, name)


def _sdpa(
    attn: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, masked: bool, scale: float, window: int | None
) -> Tensor:
    """Attention of ``q`` ``[B, H, Tq, d]`` over ``k``/``v`` (heads already expanded), as the eager path
    masks it: the model's 4-D mask is authoritative; plain causal when it adds nothing."""
    q_len, kv_len = q.shape[-2], k.shape[-2]
    if q_len != kv_len and mask is None:  # cached positions: the eager path's rectangular causal mask
        return _eager_like(attn, q, k, v, None, scale)
    plain = q_len == kv_len and (mask is None or (not masked and (not window or kv_len <= int(window))))
    if plain:
        if not (attn.is_causal and not attn.is_cross_attention):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    assert mask is not None
    if mask.ndim < 4:  # a 2-D padding mask: causal plus padding, as _apply_reconstruct_attention_mask does
        return _eager_like(attn, q, k, v, mask, scale)
    mask = mask[..., :kv_len]
    if mask.shape[-2] != q_len:
        mask = mask[..., -q_len:, :]
    if mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    # a query that sees no key: the eager path (compatibility mode) zeroes its pattern, the kernel gives NaN
    return torch.nan_to_num(out, nan=0.0)


def _eager_like(attn: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    scores = attn._apply_reconstruct_attention_mask(scores, mask, k.shape[-2], q.shape[-2])
    weights = attn._scrub_compatibility_pattern_nans(attn._masked_softmax(scores, dtype=torch.float32).to(q.dtype))
    return torch.matmul(weights, v)


def _rotary_forward(attn: Any, masked: bool) -> Callable[..., Any]:
    """``PositionEmbeddingsAttentionBridge.forward`` for the cases :func:`lean_support` admits, with the
    scores/softmax/pattern replaced by one fused kernel (every other step and hook as in the original)."""
    eager = type(attn).forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        rope_missing = kwargs.get("position_embeddings") is None and not attn.rope_optional and (
            getattr(attn.config, "positional_embedding_type", None) == "rotary"
        )
        if rope_missing:  # the original warns about a missing RoPE: let it
            return eager(attn, *args, **kwargs)
        hf: Any = attn.original_component
        if "hidden_states" in kwargs:
            hidden = kwargs.pop("hidden_states")
        elif args and isinstance(args[0], Tensor):
            hidden, args = args[0], args[1:]
        else:
            raise ValueError("Could not find hidden_states in args or kwargs")
        position_embeddings = kwargs.pop("position_embeddings", None)
        mask = kwargs.pop("attention_mask", None)
        hidden = attn.hook_in(hidden)
        input_shape = hidden.shape[:-1]
        head_dim = hf.head_dim
        shape = (*input_shape, -1, head_dim)
        q = attn.q(hidden).view(shape).transpose(1, 2)
        k = attn.k(hidden).view(shape).transpose(1, 2)
        v = attn.v(hidden).view(shape).transpose(1, 2)
        if "q_norm" in attn.submodules:  # post-reshape q/k norms (Gemma-3), before RoPE
            if attn._qk_norm_per_head:
                q = attn.hook_q_normed(attn.q_norm(q.transpose(1, 2)).transpose(1, 2))
                if "k_norm" in attn.submodules:
                    k = attn.hook_k_normed(attn.k_norm(k.transpose(1, 2)).transpose(1, 2))
            else:
                q = attn.hook_q_normed(attn.q_norm(q))
                if "k_norm" in attn.submodules:
                    k = attn.hook_k_normed(attn.k_norm(k))
        if position_embeddings is not None:
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

            cos, sin = attn._apply_position_embedding_hooks(position_embeddings)
            rotary_dim = cos.shape[-1]
            if rotary_dim * 2 == head_dim:
                from transformer_lens.utilities.hf_utils import get_rotary_pct_from_config

                if get_rotary_pct_from_config(attn.config) == 1.0:  # GPT-OSS: un-duplicated half-width cos/sin
                    cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
                    rotary_dim = head_dim
            if rotary_dim < head_dim:  # partial rotary
                q_rot, k_rot = apply_rotary_pos_emb(q[..., :rotary_dim], k[..., :rotary_dim], cos, sin)
                q = torch.cat([q_rot, q[..., rotary_dim:]], dim=-1)
                k = torch.cat([k_rot, k[..., rotary_dim:]], dim=-1)
            else:
                q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if hasattr(attn, "hook_rot_q"):
            q = attn.hook_rot_q(q)
        if hasattr(attn, "hook_rot_k"):
            k = attn.hook_rot_k(k)
        k, v = attn._update_kv_cache(k, v, **kwargs)  # as the original: a cache (if any) gets this step's K/V
        groups = getattr(hf, "num_key_value_groups", 1)
        if groups > 1:  # GQA: each key/value head serves `groups` query heads (linear in T)
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scale = getattr(hf, "scaling", head_dim**-0.5)
        out = _sdpa(attn, q, k, v, mask, masked, scale, getattr(hf, "sliding_window", None))
        out = out.transpose(1, 2).contiguous().reshape(*input_shape, -1)
        out = attn._pre_output_projection(out)
        o_weight = getattr(getattr(attn.o, "original_component", None), "weight", None)
        if isinstance(o_weight, Tensor) and o_weight.dtype.is_floating_point and out.dtype != o_weight.dtype:
            out = out.to(dtype=o_weight.dtype)
        return attn.hook_out(attn.o(out)), None

    return forward


def _joint_reconstruct(attn: Any, masked: bool) -> Callable[..., Any]:
    """``_reconstruct_attention`` of the fused-QKV bridges (GPT-2, GPT-NeoX) with one fused kernel."""
    classes = _bridge_classes()
    assert classes is not None
    joint_rotary = classes[2]
    rotary = isinstance(attn, joint_rotary)
    def reconstruct(q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> tuple[Tensor, None]:
        n_heads = attn.config.n_heads
        n_kv = getattr(attn.config, "n_key_value_heads", None) or n_heads
        q, k, v, batch_size, seq_len, head_dim = attn._reshape_qkv_to_heads(q, k, v, n_heads, n_kv)
        scale = head_dim**-0.5
        if rotary:
            pe = kwargs.get("position_embeddings")
            if pe is not None and isinstance(pe, tuple):
                cos, sin = attn._apply_position_embedding_hooks(pe)
                q, k = attn._apply_rotary_pos_emb(q, k, cos, sin)
        elif getattr(attn.config, "scale_attn_by_inverse_layer_idx", False) and attn._layer_idx is not None:
            scale /= float(attn._layer_idx + 1)
        k, v = attn._update_kv_cache(k, v, **kwargs)
        if n_kv != n_heads:
            k, v = k.repeat_interleave(n_heads // n_kv, dim=1), v.repeat_interleave(n_heads // n_kv, dim=1)
        out = _sdpa(attn, q, k, v, kwargs.get("attention_mask"), masked, scale, None)
        out = attn._reshape_attn_output(out, batch_size, seq_len, n_heads, head_dim)
        return attn._apply_output_projection(out), None

    return reconstruct
