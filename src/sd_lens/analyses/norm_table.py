"""Per-block norms of the first tokens of a text: the quickest look at a model's singular defects.

`first_token_norms` runs one forward pass (:func:`sd_lens.analyses.text_run.run_text`) that keeps
only ‖x‖ of the residual stream after every block (``blocks.{l}.hook_resid_post``), in float32,
for the first ``n_tokens`` tokens. Because attention is causal, the first tokens' states do not depend on what follows,
so only those tokens are fed to the model.

Reference: Wang et al., *Demystifying Singular Defects in Large Language Models* (ICML 2025), Fig. 1
(the norms of the first tokens of "The quick brown fox jumps over the lazy dog." at every layer).

Example:
    >>> import sd_lens
    >>> from sd_lens.analyses.norm_table import first_token_norms
    >>> model = sd_lens.load_model("smollm2-135m-instruct")
    >>> print(first_token_norms(model, "The quick brown fox jumps over the lazy dog.").format())
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.analyses.text_run import run_text
from sd_lens.errors import InputError
from sd_lens.models.metadata import model_name
from sd_lens.types import HookedModel

__all__ = ["NormTable", "first_token_norms"]


@dataclass(frozen=True, eq=False)
class NormTable:
    """Norms of the residual stream after every block, for the first tokens of a text.

    Attributes:
        model: the model's label.
        text: the text the tokens come from.
        tokens: the token strings, one per column (the first is the initial/BOS token when the
            model prepends one).
        norms: float32 tensor ``[n_layers, n_tokens]``; ``norms[l, t]`` is ‖x‖ of token ``t``
            after block ``l`` (``blocks.{l}.hook_resid_post``).
    """

    model: str
    text: str
    tokens: list[str]
    norms: Float[Tensor, "n_layers n_tokens"]

    @property
    def n_layers(self) -> int:
        return int(self.norms.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.norms.shape[1])

    def high(self, factor: float = 4.0) -> torch.Tensor:
        """Boolean ``[n_layers, n_tokens]``: the norm exceeds ``factor`` × the median of its block row."""
        median = torch.quantile(self.norms, 0.5, dim=1, keepdim=True)
        return self.norms > factor * median

    def format(self, factor: float = 4.0, max_token_width: int = 14) -> str:
        """A fixed-width table: one row per block, one column per token.

        Token headers are ``repr`` of the token string (so spaces, newlines and special tokens are
        visible), shortened to ``max_token_width`` characters. A value is followed by ``*`` when it
        exceeds ``factor`` × the median of its row (its block's typical norm over these tokens).
        """
        if max_token_width < 4:
            raise InputError(f"max_token_width must be at least 4, got {max_token_width}")
        heads = [_short(repr(tok), max_token_width) for tok in self.tokens]
        high = self.high(factor)
        cells = [
            [f"{v:.1f}" + ("*" if high[row, col] else " ") for col, v in enumerate(self.norms[row].tolist())]
            for row in range(self.n_layers)
        ]
        width = max([len(h) for h in heads] + [len(c) for r in cells for c in r]) + 1
        lines = [
            f"Residual-stream norm after each block (resid_post), model {self.model}",
            f"text: {_short(repr(self.text), 100)}",
            f"* = more than {factor:g}x the median of its block row",
            "",
            "block" + "".join(h.rjust(width) for h in heads),
        ]
        lines += [f"{row:5d}" + "".join(c.rjust(width) for c in cells[row]) for row in range(self.n_layers)]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _short(s: str, width: int) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"


def first_token_norms(model: HookedModel, text: str, n_tokens: int = 8) -> NormTable:
    """‖resid_post‖ of the first ``n_tokens`` tokens of ``text`` after every block, in float32.

    Args:
        model: a TransformerLens model (see :func:`sd_lens.load_model`).
        text: the input; the model's BOS token is prepended when the model does so by default.
        n_tokens: how many tokens (BOS included) to report; fewer when the text is shorter.

    Returns:
        A :class:`NormTable` with ``norms`` of shape ``[n_layers, min(n_tokens, len(tokens))]``.

    Raises:
        InputError: ``text`` is empty or not a string, or ``n_tokens`` < 1.
        NonFiniteActivationError: the model produced NaN or inf activations.

    The hooks only reduce each activation to its norms, and are removed when the call returns,
    also when it raises.
    """
    if not isinstance(text, str) or not text:
        raise InputError(f"first_token_norms needs a non-empty text, got {text!r}")
    if not isinstance(n_tokens, int) or isinstance(n_tokens, bool) or n_tokens < 1:
        raise InputError(f"n_tokens must be a positive integer, got {n_tokens!r}")
    run = run_text(model, text, max_tokens=n_tokens)
    return NormTable(model=model_name(model), text=text, tokens=run.tokens, norms=run.norms.T.contiguous())
