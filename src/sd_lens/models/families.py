"""The built-in model families: one registration each. Add a family here (or from your own code).

Each :class:`~sd_lens.models.registry.Family` states the block layout of some Hugging Face
architectures; :func:`sd_lens.model_view` then reads their blocks with the generic builder.
"""

from __future__ import annotations

from sd_lens.models.registry import Family, one_plus_weight, register_family
from sd_lens.types import HookedModel

# Llama, and the architectures with the same block: RMSNorm, SwiGLU, grouped-query attention.
LLAMA = register_family(
    Family(
        name="llama",
        architectures=("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"),
        norm="rms",
        gated=True,
    )
)

# Gemma-3: RMSNorm scaled by 1 + w, GeGLU, and sandwich norms on the attention and FFN outputs.
GEMMA3 = register_family(
    Family(
        name="gemma3",
        architectures=("Gemma3ForCausalLM",),
        norm="rms",
        gated=True,
        post_norms=True,
        effective_scale=one_plus_weight,
    )
)

# GPT-2: LayerNorm, GELU MLP, biases everywhere.
GPT2 = register_family(Family(name="gpt2", architectures=("GPT2LMHeadModel",), norm="layer", gated=False))


def _neox_parallel(model: HookedModel) -> bool:
    """Pythia runs attention and FFN in parallel; a GPT-NeoX config may say otherwise."""
    parallel = bool(getattr(model.cfg, "parallel_attn_mlp", False))
    hf_config = getattr(getattr(model, "original_model", None), "config", None)
    return bool(getattr(hf_config, "use_parallel_residual", parallel)) if hf_config is not None else parallel


# GPT-NeoX / Pythia: LayerNorm, GELU MLP, usually parallel attention and FFN.
NEOX = register_family(
    Family(name="neox", architectures=("GPTNeoXForCausalLM",), norm="layer", gated=False, parallel=_neox_parallel)
)
