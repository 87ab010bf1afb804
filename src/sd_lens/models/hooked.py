"""TransformerLens 2.x/3.x: Hugging Face models as ``HookedTransformer`` s.

TransformerLens 4 wraps a Hugging Face model in a ``TransformerBridge``; TransformerLens 2.x has
no bridge, only ``HookedTransformer``, whose forward is TransformerLens's own re-implementation of
the architecture, fed with weights converted from the Hugging Face model. sd_lens reads both
through the same hook names (``blocks.{l}.hook_resid_post``, ``blocks.{l}.ln2.hook_normalized``, ...)
and the same weight attributes (``W_V``, ``W_in``, ``ln1_post.w``, ...), so every analysis runs on
either. :func:`backend` says which one this installation builds; :func:`hooked_from_hf` builds a
``HookedTransformer`` from a Hugging Face model with the library's own config and weight
conversion, processed like a bridge in compatibility mode (norm scales folded, writing weights and
unembedding centred) or, with ``compatibility_mode=False``, unprocessed.

Differences from the bridge (see docs/models.md, "TransformerLens versions"):

* TransformerLens 2.18 knows the Gemma-3 configurations only by name (``google/gemma-3-270m``...);
  for any other Gemma-3 checkpoint (tiny test models among them) sd_lens maps the Hugging Face
  config itself, field by field as TransformerLens writes the 270M one (checked in the tests).
* Its Llama conversion ignores ``rope_theta``; sd_lens sets ``rotary_base`` from the config
  (SmolLM2 uses 100 000, not the default 10 000), also from a config written by transformers 5
  (``rope_parameters``), which transformers 4 reads with the default theta.
* The context is capped at :data:`MAX_CTX` tokens: a ``HookedTransformer`` allocates an
  ``n_ctx`` x ``n_ctx`` causal mask per block (8 192 would cost 2 GB for SmolLM2).
"""

from __future__ import annotations

import importlib.metadata
import json
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch

from sd_lens.errors import UnsupportedArchitectureError

__all__ = ["MAX_CTX", "backend", "hooked_from_hf", "hooked_config_dict", "tl_version"]

#: the longest context a ``HookedTransformer`` built here accepts (its causal mask is n_ctx x n_ctx per block)
MAX_CTX = 2048


def tl_version() -> tuple[int, ...]:
    """The installed TransformerLens release, e.g. ``(2, 18, 0)`` (from its metadata: nothing imported)."""
    raw = importlib.metadata.version("transformer-lens")
    return tuple(int(p) for p in raw.split("+")[0].split(".")[:3] if p.isdigit())


@lru_cache(maxsize=1)
def backend() -> Literal["bridge", "hooked"]:
    """``"bridge"`` where TransformerLens has ``TransformerBridge.boot_transformers`` (4.x, 3.x), else ``"hooked"``."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return "hooked"
    return "bridge" if hasattr(TransformerBridge, "boot_transformers") else "hooked"


def _rope_theta(hf_config: Any, layer_type: str = "full_attention") -> float | None:
    """The rotary base of ``hf_config``, from ``rope_parameters`` (transformers 5) when present.

    A config written by transformers 5 keeps theta only in ``rope_parameters``; transformers 4
    reads it with ``rope_theta`` left at its default, so ``rope_parameters`` wins.
    """
    params = getattr(hf_config, "rope_parameters", None)
    if isinstance(params, dict):
        if isinstance(params.get(layer_type), dict):  # per attention type (Gemma-3)
            params = params[layer_type]
        if params.get("rope_theta") is not None:
            return float(params["rope_theta"])
    if layer_type == "sliding_attention" and getattr(hf_config, "rope_local_base_freq", None) is not None:
        return float(hf_config.rope_local_base_freq)
    theta = getattr(hf_config, "rope_theta", None)
    return float(theta) if theta is not None else None


def _gemma3_config_dict(c: Any) -> dict[str, Any]:
    """A HookedTransformerConfig dict for a Gemma-3 text config (TransformerLens 2.18 hard-codes them by name)."""
    layer_types = list(getattr(c, "layer_types", None) or [])
    if len(layer_types) != c.num_hidden_layers:
        raise UnsupportedArchitectureError(
            f"the Gemma-3 config has {len(layer_types)} layer_types for {c.num_hidden_layers} layers"
        )
    return {
        "d_model": c.hidden_size,
        "d_head": c.head_dim,
        "n_heads": c.num_attention_heads,
        "d_mlp": c.intermediate_size,
        "n_layers": c.num_hidden_layers,
        "n_ctx": c.max_position_embeddings,
        "eps": c.rms_norm_eps,
        "d_vocab": c.vocab_size,
        "act_fn": c.hidden_activation,
        "initializer_range": c.initializer_range,
        "normalization_type": "RMS",
        "rotary_base": _rope_theta(c, "full_attention"),
        "rotary_base_local": _rope_theta(c, "sliding_attention"),
        "positional_embedding_type": "rotary",
        "use_attn_scale": True,
        "attn_scale": float(c.query_pre_attn_scalar) ** 0.5,
        "n_key_value_heads": c.num_key_value_heads,
        "gated_mlp": True,
        "final_rms": True,
        "use_normalization_before_and_after": True,
        "use_qk_norm": True,
        "window_size": c.sliding_window,
        "use_local_attn": True,
        "attn_types": ["local" if t == "sliding_attention" else "global" for t in layer_types],
    }


def hooked_config_dict(hf_config: Any, architecture: str) -> dict[str, Any]:
    """TransformerLens's ``HookedTransformerConfig`` fields for a Hugging Face config (before processing).

    TransformerLens's own ``convert_hf_model_config`` (it reads the config from a directory), except
    for Gemma-3, which it knows only by name; ``rotary_base`` set from the config where its conversion
    leaves the default.
    """
    if architecture == "Gemma3ForCausalLM":
        cfg = _gemma3_config_dict(hf_config)
    else:
        from transformer_lens import loading_from_pretrained as loading

        with tempfile.TemporaryDirectory(prefix="sd_lens-config-") as tmp:
            config = hf_config.to_dict()
            config["architectures"] = [architecture]
            if "n_positions" in config:  # TransformerLens reads GPT-2's legacy n_ctx, which new configs omit
                config.setdefault("n_ctx", config["n_positions"])
            with open(Path(tmp) / "config.json", "w", encoding="utf-8") as f:
                json.dump(config, f)
            try:
                cfg = dict(loading.convert_hf_model_config(tmp))
            except NotImplementedError as exc:
                from sd_lens.models.registry import registered_architectures

                raise UnsupportedArchitectureError(
                    f"TransformerLens {'.'.join(map(str, tl_version()))} has no conversion for {architecture} ({exc}); "
                    f"sd_lens supports {', '.join(registered_architectures())}"
                ) from exc
        if cfg.get("positional_embedding_type") == "rotary":
            theta = _rope_theta(hf_config)
            if theta is not None:
                cfg["rotary_base"] = theta
    cfg["n_ctx"] = min(int(cfg["n_ctx"]), MAX_CTX)
    cfg["original_architecture"] = architecture
    return cfg


def hooked_from_hf(
    hf_model: Any,
    tokenizer: Any,
    *,
    name: str = "model",
    device: Any = "cpu",
    dtype: torch.dtype = torch.float32,
    compatibility_mode: bool = True,
) -> Any:
    """Build a TransformerLens ``HookedTransformer`` from a loaded Hugging Face causal LM.

    The weights go through TransformerLens's own conversion for the architecture
    (``convert_llama_weights``, ``convert_gemma_weights``, ...). ``compatibility_mode=True``
    processes them like ``HookedTransformer.from_pretrained`` and a bridge's
    ``enable_compatibility_mode()`` (norm scales folded into the following weights, writing
    weights and unembedding centred, value biases folded); ``False`` keeps them as converted
    (``from_pretrained_no_processing``).
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    hf_model = hf_model.to(device).eval()
    architecture = type(hf_model).__name__
    cfg_dict = hooked_config_dict(hf_model.config, architecture)
    if compatibility_mode:
        cfg_dict["normalization_type"] = {"LN": "LNPre", "RMS": "RMSPre"}.get(
            cfg_dict["normalization_type"], cfg_dict["normalization_type"]
        )
    cfg_dict.update(
        model_name=name, init_weights=False, device=str(device), n_devices=1, dtype=dtype,
        default_prepend_bos=True, from_checkpoint=False, d_vocab=hf_model.config.vocab_size,
    )
    cfg_dict.pop("tokenizer_name", None)
    cfg = HookedTransformerConfig.from_dict(cfg_dict)
    with tempfile.TemporaryDirectory(prefix="sd_lens-hf-") as tmp:
        # an existing path: TransformerLens takes it as a local model and converts `hf_model`'s weights
        with open(Path(tmp) / "config.json", "w", encoding="utf-8") as f:
            f.write("{}")
        with torch.no_grad():
            state_dict = loading.get_pretrained_state_dict(tmp, cfg, hf_model, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg, tokenizer, move_to_device=False, default_padding_side="right")
        model.load_and_process_state_dict(
            state_dict,
            fold_ln=compatibility_mode,
            # TransformerLens centres writing weights of LayerNorm models only (and logs that it skips the rest)
            center_writing_weights=compatibility_mode and cfg.normalization_type in ("LN", "LNPre"),
            center_unembed=compatibility_mode,
            fold_value_biases=compatibility_mode,
        )
    torch.nn.Module.to(model, device)  # HookedTransformer.to prints "Moving model to device"
    model.eval()
    model.sd_lens_name = name  # the label analyses report as `model`
    return model
