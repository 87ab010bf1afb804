"""Tiny random-init models of every supported family, built from a config (no download).

For unit tests and for trying the API in seconds. The tokenizer is character level.
"""

from __future__ import annotations

import string
from typing import Any

import torch

from sd_lens.models.loading import model_from_hf
from sd_lens.types import HookedModel

FAMILIES = ("llama", "gemma3", "gpt2", "neox")


def char_tokenizer(model_max_length: int = 256) -> Any:
    """A character-level fast tokenizer with a BOS token, built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    chars = list(string.printable)
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        name_or_path="sd_lens-char-tokenizer",
        add_bos_token=True,
    )
    return fast


def tiny_hf_config(family: str, *, n_layers: int = 2, d_model: int = 64, vocab_size: int = 104) -> Any:
    """A Hugging Face config for a tiny model of ``family`` (one of :data:`FAMILIES`)."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "llama":
        return tf.LlamaConfig(
            hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            tie_word_embeddings=True, **common,
        )
    if family == "gemma3":
        return tf.Gemma3TextConfig(
            hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
            num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
            sliding_window=64, query_pre_attn_scalar=16, **common,
        )
    if family == "gpt2":
        return tf.GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=256, **common)
    if family == "neox":
        return tf.GPTNeoXConfig(
            hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=n_layers,
            num_attention_heads=4, max_position_embeddings=256, use_parallel_residual=True,
            rotary_pct=0.25, **common,
        )
    raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")


def tiny_hf_model(family: str = "llama", *, seed: int = 0, n_layers: int = 2, d_model: int = 64,
                  randomize_norms: bool = True) -> Any:
    """The random-init Hugging Face model (float32, eager attention, eval mode) behind :func:`tiny_model`."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_hf_config(family, n_layers=n_layers, d_model=d_model)
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").to(torch.float32)
    if randomize_norms:
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if "norm" in name or ".ln_" in name or "layernorm" in name.lower():
                    p.add_(0.3 * torch.randn_like(p))
    return hf.eval()


def tiny_model(family: str = "llama", *, seed: int = 0, n_layers: int = 2, d_model: int = 64,
               randomize_norms: bool = True, compatibility_mode: bool = True,
               dtype: torch.dtype = torch.float32) -> HookedModel:
    """A random-init TransformerLens model of ``family``; norm scales randomised so folding is tested.

    A ``TransformerBridge`` (TransformerLens 4) or a ``HookedTransformer`` converted from the same
    Hugging Face model (TransformerLens 2.x): see :func:`sd_lens.models.loading.model_from_hf`.
    """
    hf = tiny_hf_model(family, seed=seed, n_layers=n_layers, d_model=d_model, randomize_norms=randomize_norms)
    return model_from_hf(
        hf.to(dtype), char_tokenizer(), name=f"tiny-{family}", dtype=dtype, compatibility_mode=compatibility_mode
    )
