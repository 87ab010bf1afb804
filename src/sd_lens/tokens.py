"""Tokenising texts into right-padded batches, and running the model with temporary hooks."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from sd_lens.corpus import validate_texts
from sd_lens.errors import InputError


@dataclass
class Tokenized:
    """Token ids of each text (no padding), in the order of the texts."""

    sequences: list[Tensor]
    texts: list[str]

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)

    def batches(self, batch_size: int) -> Iterator[tuple[list[int], Tensor, Tensor]]:
        """Yield (text indices, right-padded tokens [B, T], lengths [B]) sorted by length.

        Right padding is exact for causal models: no real token attends to a pad.
        """
        order = sorted(range(len(self.sequences)), key=lambda i: len(self.sequences[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield idx, *pad([self.sequences[i] for i in idx])


def model_device(model: Any) -> Any:
    """The device a model's inputs go to (``model.cfg.device``; CPU when unset)."""
    return getattr(model.cfg, "device", None) or "cpu"


def pad(seqs: Sequence[Tensor], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(s) for s in seqs])
    out = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lengths


def context_length(model: Any) -> int:
    return int(getattr(model.cfg, "n_ctx", 2048) or 2048)


def tokenize(
    model: Any,
    texts: Sequence[str],
    *,
    max_tokens_per_text: int | None = 64,
    prepend_bos: bool | None = None,
) -> Tokenized:
    """Tokenise each text with the model's BOS convention (``prepend_bos=None``), truncating to
    ``max_tokens_per_text``.

    Raises:
        InputError: empty input, or (with ``max_tokens_per_text=None``) a text longer than the
            model's context.
    """
    texts = validate_texts(texts)
    n_ctx = context_length(model)
    seqs = []
    for i, text in enumerate(texts):
        ids = model.to_tokens(text, prepend_bos=prepend_bos, truncate=False)[0].cpu()
        if max_tokens_per_text is not None:
            ids = ids[:max_tokens_per_text]
        elif len(ids) > n_ctx:
            raise InputError(
                f"text {i} has {len(ids)} tokens but the model's context holds {n_ctx}; "
                "split it or pass max_tokens_per_text to truncate"
            )
        if len(ids) == 0:
            raise InputError(f"text {i} produced no tokens")
        seqs.append(ids)
    return Tokenized(seqs, texts)


@contextmanager
def temporary_hooks(model: Any, fwd_hooks: list[tuple[Any, Callable]]) -> Iterator[Any]:
    """Attach hooks for the duration of the block only; hooks that were there before stay."""
    with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
        yield model


def run_hooked(model: Any, tokens: Tensor, fwd_hooks: list[tuple[Any, Callable]], stop_at_layer: int | None) -> None:
    """One forward with temporary hooks, stopping before block ``stop_at_layer`` (no unembedding)."""
    device = model_device(model)
    with temporary_hooks(model, fwd_hooks):
        model(tokens.to(device), return_type=None, stop_at_layer=stop_at_layer)
