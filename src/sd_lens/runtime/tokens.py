"""One tokenisation policy and one decoder.

* :func:`encode` — one text to token ids with the model's BOS convention (``model.to_tokens``);
* :func:`tokenize` — many texts, validated and truncated to ``max_tokens_per_text``;
* :func:`pad` / :func:`attention_mask` — right padding, and the mask of real positions. Right
  padding is exact for causal models: no real token attends to a pad, and padded positions are
  never read back;
* :func:`decode_one` / :func:`decode` — token ids to strings, one token at a time
  (``tokenizer.decode([id])``; ``"<id>"`` for a model without a tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from sd_lens.corpus import validate_texts
from sd_lens.errors import InputError
from sd_lens.types import HookedModel

__all__ = [
    "Tokenized",
    "as_sequences",
    "attention_mask",
    "bos_token_id",
    "context_length",
    "decode",
    "decode_one",
    "encode",
    "length_sorted_batches",
    "model_device",
    "pad",
    "prepends_bos",
    "tokenize",
]


@dataclass(frozen=True)
class Tokenized:
    """Token ids of each text (no padding), in the order of the texts."""

    sequences: list[Int[Tensor, " pos"]]
    texts: list[str]
    #: how many texts were cut to ``max_tokens_per_text``, and that limit
    n_truncated: int = 0
    max_tokens_per_text: int | None = None

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)

    def batches(self, batch_size: int) -> Iterator[tuple[list[int], Int[Tensor, "batch pos"], Int[Tensor, " batch"]]]:
        """Yield (text indices, right-padded tokens [B, T], lengths [B]) sorted by length."""
        for idx in length_sorted_batches(self.sequences, batch_size):
            tokens, lengths = pad([self.sequences[i] for i in idx])
            yield idx, tokens, lengths


def length_sorted_batches(
    sequences: Sequence[Int[Tensor, " pos"]], batch_size: int, *, longest_first: bool = False
) -> list[list[int]]:
    """Indices of ``sequences`` grouped into batches of similar length (stable sort)."""
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    sign = -1 if longest_first else 1
    order = sorted(range(len(sequences)), key=lambda i: sign * len(sequences[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def model_device(model: HookedModel) -> Any:
    """The device a model's inputs go to (``model.cfg.device``; CPU when unset)."""
    return getattr(model.cfg, "device", None) or "cpu"


def pad(seqs: Sequence[Int[Tensor, " pos"]], pad_id: int = 0) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
    """Right-pad 1-D token tensors: (tokens [B, T], lengths [B])."""
    lengths = torch.tensor([len(s) for s in seqs])
    out = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lengths


def attention_mask(lengths: Int[Tensor, " batch"], n_pos: int) -> Bool[Tensor, "batch pos"]:
    """True at the real (non-pad) positions of right-padded rows."""
    return torch.arange(n_pos)[None, :] < lengths[:, None]


def context_length(model: HookedModel) -> int:
    return int(getattr(model.cfg, "n_ctx", 2048) or 2048)


def encode(model: HookedModel, text: str, *, prepend_bos: bool | None = None) -> Int[Tensor, " pos"]:
    """Token ids of one text on the CPU, with the model's BOS convention (``prepend_bos=None``), untruncated."""
    return model.to_tokens(text, prepend_bos=prepend_bos, truncate=False, move_to_device=False)[0].cpu()


def bos_token_id(model: HookedModel) -> int | None:
    """The id of the model's BOS token (what ``prepend_bos=True`` puts first), None when it has none."""
    tokenizer = getattr(model, "tokenizer", None)
    bos = None if tokenizer is None else getattr(tokenizer, "bos_token_id", None)
    return None if bos is None else int(bos)


def prepends_bos(model: HookedModel) -> bool:
    """Whether the model's tokenisation policy (:func:`encode` with ``prepend_bos=None``) puts BOS first."""
    bos = bos_token_id(model)
    if bos is None:
        return False
    with_default = encode(model, "a", prepend_bos=None)
    without = encode(model, "a", prepend_bos=False)
    return len(with_default) == len(without) + 1 and int(with_default[0]) == bos


def count_tokens_in_file_tokenizer(tokenizer_json: Any, text: str) -> int:
    """Tokens of ``text`` (no special tokens) by a model's ``tokenizer.json`` alone, without loading the model:
    the CLI's check of ``--trigger-text`` before the load (the exact check runs on the model's own
    tokenisation afterwards). Raises what the ``tokenizers`` library raises on a bad file."""
    from tokenizers import Tokenizer

    return len(Tokenizer.from_file(str(tokenizer_json)).encode(text, add_special_tokens=False).ids)


def tokenize(
    model: HookedModel,
    texts: Sequence[str],
    *,
    max_tokens_per_text: int | None = 64,
    prepend_bos: bool | None = None,
) -> Tokenized:
    """Tokenise each text with the model's BOS convention (``prepend_bos=None``), truncating to
    ``max_tokens_per_text`` (the result counts the texts cut: ``n_truncated``).

    Raises:
        InputError: empty input, or (with ``max_tokens_per_text=None``) a text longer than the
            model's context.
    """
    texts = validate_texts(texts)
    n_ctx = context_length(model)
    seqs = []
    n_truncated = 0
    for i, text in enumerate(texts):
        ids = encode(model, text, prepend_bos=prepend_bos)
        if max_tokens_per_text is not None:
            n_truncated += len(ids) > max_tokens_per_text
            ids = ids[:max_tokens_per_text]
        elif len(ids) > n_ctx:
            raise InputError(
                f"text {i} has {len(ids)} tokens but the model's context holds {n_ctx}; "
                "split it or pass max_tokens_per_text to truncate"
            )
        if len(ids) == 0:
            raise InputError(f"text {i} produced no tokens")
        seqs.append(ids)
    return Tokenized(seqs, texts, n_truncated, max_tokens_per_text)


def as_sequences(model: HookedModel, texts_or_tokens: Any) -> list[Int[Tensor, " pos"]]:
    """1-D token tensors (no padding) from a text, texts, a ``[batch, pos]`` tensor or id lists.

    Strings are encoded with :func:`encode` (empty strings are skipped); a tensor's rows are
    taken as they are (every position real).
    """
    if isinstance(texts_or_tokens, str):
        texts_or_tokens = [texts_or_tokens]
    if isinstance(texts_or_tokens, Tensor):
        t = texts_or_tokens
        if t.ndim == 1:
            t = t[None]
        if t.ndim != 2:
            raise InputError(f"token tensor must be [batch, pos], got shape {tuple(t.shape)}")
        return [row.long() for row in t]
    seqs: list[Tensor] = []
    for item in texts_or_tokens:
        if isinstance(item, str):
            if item:
                seqs.append(encode(model, item))
        else:
            seqs.append(torch.as_tensor(item, dtype=torch.long).reshape(-1))
    return [s for s in seqs if s.numel() > 0]


def decode_one(model: HookedModel, token_id: int) -> str:
    """The string of one token (``"<id>"`` when the model has no tokenizer)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return f"<{int(token_id)}>"
    return str(tokenizer.decode([int(token_id)]))


def decode(model: HookedModel, token_ids: Iterable[int] | Int[Tensor, " pos"]) -> list[str]:
    """The string of each token, decoded one at a time (see :func:`decode_one`)."""
    ids = token_ids.tolist() if isinstance(token_ids, Tensor) else list(token_ids)
    return [decode_one(model, int(t)) for t in ids]
