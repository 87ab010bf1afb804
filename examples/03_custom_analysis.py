"""A new analysis in thirty lines: the mean norm of each block's attention output per token.

The pattern every sd_lens analysis follows (docs/contributing.md): tokenise with the runtime's
policy, name the hook points, give each a *reducer* that shrinks one batch's activation to what
is kept, let :func:`sd_lens.runtime.stream` run the batches, fold the values into a frozen result.

Run:  .venv/bin/python examples/03_custom_analysis.py
(a tiny random-init Llama built in memory: no download, a few seconds)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.models.metadata import model_name
from sd_lens.runtime import act_name, stream, tokenize
from sd_lens.runtime.reducers import token_norms
from sd_lens.types import HookedModel


@dataclass(frozen=True)
class AttentionOutNorms:
    """Mean ‖attn_out‖ of each block over every token of a corpus.

    Attributes:
        model: the model's name.
        n_tokens: how many tokens were averaged over.
        mean_norm: float32 ``[n_layers]``: the mean norm of ``blocks.{l}.hook_attn_out`` per token.
    """

    model: str
    n_tokens: int
    mean_norm: Float[Tensor, " n_layers"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n_tokens": self.n_tokens,
            "mean_norm": [round(float(x), 4) for x in self.mean_norm],
        }


def attention_out_norms(
    model: HookedModel, texts: Sequence[str], *, batch_size: int = 16, max_tokens_per_text: int | None = 64
) -> AttentionOutNorms:
    """Mean norm of each block's attention output per token, streamed over ``texts``."""
    tok = tokenize(model, texts, max_tokens_per_text=max_tokens_per_text)
    n_layers = int(model.cfg.n_layers)
    names = [act_name("attn_out", layer) for layer in range(n_layers)]
    total = torch.zeros(n_layers, dtype=torch.float64)
    for batch, out in stream(model, tok.sequences, {name: token_norms for name in names}, batch_size=batch_size):
        for layer, name in enumerate(names):
            total[layer] += float(out[name][batch.mask.cpu()].double().sum())  # real tokens only, not pads
    return AttentionOutNorms(model_name(model), tok.n_tokens, (total / tok.n_tokens).float())


if __name__ == "__main__":
    from sd_lens.corpus import default_corpus
    from sd_lens.models.tiny import tiny_model

    model = tiny_model("llama")  # 2 blocks, d_model 64, character tokenizer
    result = attention_out_norms(model, default_corpus(n_lines=8))
    print(json.dumps(result.to_dict(), indent=1))
