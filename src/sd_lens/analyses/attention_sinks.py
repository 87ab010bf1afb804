"""Attention sinks and attention outliers: which keys the heads pour their attention on.

Streams the corpus through the model with one reducer per ``blocks.{l}.attn.hook_pattern``
(``[batch, head, query, key]``) that reduces the pattern on the spot to one number per
(text, head, key): nothing of size ``query x key`` outlives its batch.

Definitions (for one text of ``n`` real tokens and one head with pattern ``A[q, k]``):

* **Sink score** (Gu et al., ICLR 2025, their ``importance_scores`` in
  ``eval_sink_open_source.py``): ``α_k = Σ_{q=k}^{n-1} A[q, k] / (n - k)``, the mean attention
  that key ``k`` receives over the ``n - k`` queries that can see it. As in their code, the query at
  ``k`` itself counts: query 0 sees only key 0, so ``α_0 = (1 + Σ_{q≥1} A[q, 0]) / n``.
  A head *sinks* on key ``k`` when ``α_k > ε`` (``ε = 0.3`` by default, as in their paper).
  Their model-level metric is the fraction of (text, block, head) triples with ``α_0 > ε``, the
  **sink rate**; per block, the fraction of (text, head) pairs.
* **Attention outlier** (An et al., ICLR 2025, ``pos_attention_outliers.py`` of
  github.com/an-yongqi/systematic-outliers): in one block, average the pattern over the heads and sum
  over the queries (``attn_probs.mean(axis=1)[0].sum(axis=0)``); key ``k`` is an outlier when that
  cumulative attention is at least ``0.1 x seq_len``. Here ``seq_len`` is the text's real length
  ``n``, so the criterion reads ``score_k = Σ_q mean_h A[q, k] / n ≥ 0.1`` (``outlier_fraction``).
  The scores of one text and block sum to 1 over its keys.

Only real positions count: a batch is right-padded, and queries and keys at or beyond a row's length
are masked out; so is the strictly upper triangle (``q < k``; zero in a causal pattern anyway).
Every text has its own ``n`` (Gu et al. cut every text to exactly 64 tokens; texts shorter than
``max_tokens_per_text`` simply count fewer queries).

A noninitial key (position > 0) seen by few queries gets a large ``α`` for free (the last token's
``α`` is its own self-attention; a previous-token head alone gives ``α ≥ 2 / (n - k)``), so a
noninitial key is only called a sink when at least ``min_queries`` queries see it. An et al.'s
criterion needs no such guard (it divides by ``n``).

References: Gu et al., *When Attention Sink Emerges in Language Models: An Empirical View* (ICLR
2025, github.com/sail-sg/Attention-Sink); An et al., *Systematic Outliers in Large Language Models*
(ICLR 2025, github.com/an-yongqi/systematic-outliers). The sink keys are the high-norm tokens of Wang
et al., *Demystifying Singular Defects in Large Language Models* (ICML 2025): compare them with the
carriers of :func:`sd_lens.analyses.defects.find_defects`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sd_lens.analyses.text_run import run_text
from sd_lens.errors import InputError
from sd_lens.models.metadata import model_name
from sd_lens.runtime.engine import Batch, Pass, run_passes
from sd_lens.runtime.hooks import act_name, require_hooks
from sd_lens.runtime.tokens import Tokenized, decode_one, tokenize
from sd_lens.types import HookedModel

__all__ = [
    "AttentionSinks",
    "HeadPattern",
    "SinkHead",
    "SinkKey",
    "attention_sinks",
    "attention_sinks_pass",
    "outlier_scores",
    "sink_head_view",
    "sink_scores",
]


# --------------------------------------------------------------------------------------------
# the reduction, as pure functions of a pattern
# --------------------------------------------------------------------------------------------
def _visible(lengths: Int[Tensor, " batch"], n_pos: int, device: Any) -> Bool[Tensor, "batch query key"]:
    """True where query ``q`` may see key ``k`` in a row of ``lengths[b]`` real tokens: ``k <= q < n``."""
    pos = torch.arange(n_pos, device=device)
    real = pos[None, :] < lengths.to(device)[:, None]  # [B, T]
    causal = pos[None, :] <= pos[:, None]  # [Q, K]: k <= q
    return real[:, :, None] & causal[None]


def sink_scores(
    pattern: Float[Tensor, "batch head query key"], lengths: Int[Tensor, " batch"]
) -> Float[Tensor, "batch head key"]:
    """Gu et al.'s sink score ``α_k`` of every key, per row and head (float32, on ``pattern``'s device).

    ``α_k = Σ_{q=k}^{n-1} pattern[q, k] / (n - k)`` with ``n = lengths[b]``: the mean attention key ``k``
    receives over the queries that can see it, query ``k`` itself included (as in Gu et al.'s code,
    which divides the column sums by ``arange(T, 0, -1)``). Keys at or beyond ``n`` get 0; padded
    queries and the upper triangle are ignored whatever they hold.
    """
    if pattern.ndim != 4 or pattern.shape[-1] != pattern.shape[-2]:
        raise InputError(f"pattern must be [batch, head, query, key] with query == key, got {tuple(pattern.shape)}")
    n_pos = pattern.shape[-1]
    seen = _visible(lengths, n_pos, pattern.device)  # [B, Q, K]
    mass = (pattern.float() * seen[:, None]).sum(dim=2)  # [B, H, K]
    n_queries = seen.sum(dim=1).clamp(min=1)  # [B, K]: n - k for k < n
    return mass / n_queries[:, None, :]


def outlier_scores(
    pattern: Float[Tensor, "batch head query key"], lengths: Int[Tensor, " batch"]
) -> Float[Tensor, "batch key"]:
    """An et al.'s cumulative attention of every key over ``n``: ``Σ_q mean_h pattern[q, k] / n`` (float32).

    A key is an attention outlier when this is at least 0.1 (their ``attn_sum >= seq_len * 0.1``,
    with ``seq_len`` the row's real length). Over the real keys of a row-stochastic causal pattern
    the scores sum to 1. Keys at or beyond ``n`` get 0.
    """
    if pattern.ndim != 4 or pattern.shape[-1] != pattern.shape[-2]:
        raise InputError(f"pattern must be [batch, head, query, key] with query == key, got {tuple(pattern.shape)}")
    seen = _visible(lengths, pattern.shape[-1], pattern.device)
    mass = (pattern.float().mean(dim=1) * seen).sum(dim=1)  # [B, K]
    return mass / lengths.to(pattern.device).clamp(min=1)[:, None].float()


def _reduce(act: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """The stream reducer: (α [B, H, T], An score [B, T]), computed where the pattern is."""
    lengths = batch.lengths_on(act.device)
    return sink_scores(act, lengths), outlier_scores(act, lengths)


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SinkHead:
    """One (block, head) and its mean sink score on the initial token."""

    block: int
    head: int
    score: float
    frequency: float  # fraction of texts where α_0 > ε

    def to_dict(self) -> dict[str, Any]:
        return {"block": self.block, "head": self.head, "score": round(self.score, 4),
                "frequency": round(self.frequency, 4)}


@dataclass(frozen=True)
class SinkKey:
    """A noninitial token that some heads sink on (``α_k > ε`` with at least ``min_queries`` queries).

    Attributes:
        row: token row (``NormProbe`` order: texts in order, positions in order).
        seq, position, token: where it is and what it is.
        n_heads: how many (block, head) pairs sink on it.
        alpha: its largest ``α_k`` over those pairs; ``block``, ``head``: where.
        blocks: the blocks with at least one sinking head.
        outlier_blocks: the blocks where it is an attention outlier (An et al.).
    """

    row: int
    seq: int
    position: int
    token: str
    n_heads: int
    alpha: float
    block: int
    head: int
    blocks: list[int]
    outlier_blocks: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "row": self.row, "seq": self.seq, "position": self.position, "token": self.token,
            "n_heads": self.n_heads, "alpha": round(self.alpha, 4), "block": self.block, "head": self.head,
            "blocks": list(self.blocks), "outlier_blocks": list(self.outlier_blocks),
        }


@dataclass(frozen=True, eq=False)
class AttentionSinks:
    """Attention sinks (Gu et al., ICLR 2025) and attention outliers (An et al., ICLR 2025) of a corpus.

    The block axis of every tensor follows ``blocks`` (all blocks unless ``layers`` chose some).

    Attributes:
        blocks: the blocks measured.
        epsilon: the sink threshold ε. ``min_queries``, ``outlier_fraction``: see the module docstring.
        initial_alpha: float32 ``[n_texts, n_blocks, n_heads]``: ``α_0`` of each text.
        score: float32 ``[n_blocks, n_heads]``: ``α_0`` averaged over the texts.
        sinks: bool ``[n_blocks, n_heads]``: ``score > ε``.
        sink_frequency: float32 ``[n_blocks, n_heads]``: fraction of texts with ``α_0 > ε``.
        block_sink_rate: float32 ``[n_blocks]``: fraction of (text, head) pairs with ``α_0 > ε``.
        sink_rate: fraction of (text, block, head) triples with ``α_0 > ε`` (Gu et al.'s metric).
        top_heads: the ``top_k`` heads with the largest ``score``.
        key_alpha: float32 ``[n_tokens, n_blocks, n_heads]``: ``α_k`` of every token row as a key.
        key_queries: long ``[n_tokens]``: how many queries see each row (``n - k``).
        outlier_score: float32 ``[n_tokens, n_blocks]``: An et al.'s score of every row.
        seq_index, positions, token_ids: long ``[n_tokens]``, where each row comes from.
        sink_keys: noninitial sink keys, most sinking heads first.
        high_norm_rows: long ``[n_rows]`` (the rows asked for) or None; ``high_norm_alpha``: their
            ``key_alpha`` rows ``[n_rows, n_blocks, n_heads]``.
    """

    model: str
    blocks: list[int]
    n_heads: int
    epsilon: float
    min_queries: int
    outlier_fraction: float
    initial_alpha: Tensor
    score: Tensor
    sinks: Tensor
    sink_frequency: Tensor
    block_sink_rate: Tensor
    sink_rate: float
    top_heads: list[SinkHead]
    key_alpha: Tensor
    key_queries: Tensor
    outlier_score: Tensor
    seq_index: Tensor
    positions: Tensor
    token_ids: Tensor
    token_strings: dict[int, str]
    sink_keys: list[SinkKey]
    high_norm_rows: Tensor | None
    high_norm_alpha: Tensor | None
    seconds: float

    @property
    def n_texts(self) -> int:
        return int(self.initial_alpha.shape[0])

    @property
    def head_fraction(self) -> float:
        """Fraction of heads whose mean ``α_0`` exceeds ε (``sinks.mean()``)."""
        return float(self.sinks.float().mean())

    @property
    def outliers(self) -> Bool[Tensor, "n_tokens n_blocks"]:
        """An et al.'s attention outliers: ``outlier_score >= outlier_fraction``."""
        return self.outlier_score >= self.outlier_fraction

    def first_sink_block(self, rate: float = 0.5) -> int | None:
        """The first block whose ``block_sink_rate`` reaches ``rate`` (None if none does)."""
        hit = torch.nonzero(self.block_sink_rate >= rate).flatten()
        return self.blocks[int(hit[0])] if len(hit) else None

    def sink_blocks(self, rate: float = 0.5) -> list[int]:
        """The blocks whose ``block_sink_rate`` reaches ``rate``."""
        return [b for b, v in zip(self.blocks, self.block_sink_rate.tolist()) if v >= rate]

    def key_sink_counts(self, blocks: Sequence[int] | None = None) -> Int[Tensor, " n_tokens"]:
        """For every token row, how many (block, head) pairs sink on it (``α_k > ε``), counting only
        ``blocks`` (default all measured); 0 for the initial token and for rows seen by fewer than
        ``min_queries`` queries."""
        wanted = self.blocks if blocks is None else [int(b) for b in blocks]
        if not set(wanted) <= set(self.blocks):
            raise InputError(f"blocks {sorted(set(wanted) - set(self.blocks))} were not measured (measured: {self.blocks})")
        cols = [self.blocks.index(b) for b in wanted]
        counts = (self.key_alpha[:, cols] > self.epsilon).flatten(1).sum(dim=1)
        return counts * ((self.positions > 0) & (self.key_queries >= self.min_queries))

    def to_dict(self, max_keys: int = 20) -> dict[str, Any]:
        """Plain JSON values (floats rounded to 4 digits); the first ``max_keys`` sink keys."""
        outliers = self.outliers
        noninitial = self.positions > 0
        eligible = noninitial & (self.key_queries >= self.min_queries)
        out: dict[str, Any] = {
            "model": self.model,
            "blocks": list(self.blocks),
            "n_heads": self.n_heads,
            "n_texts": self.n_texts,
            "epsilon": self.epsilon,
            "min_queries": self.min_queries,
            "outlier_fraction": self.outlier_fraction,
            "sink_rate": round(self.sink_rate, 4),
            "head_fraction": round(self.head_fraction, 4),
            "block_sink_rate": [round(float(v), 4) for v in self.block_sink_rate],
            "score": [[round(float(v), 4) for v in row] for row in self.score],
            "sinks": self.sinks.tolist(),
            "top_heads": [h.to_dict() for h in self.top_heads],
            "initial_outlier_rate": [round(float(v), 4) for v in outliers[~noninitial].float().mean(0)],
            "noninitial_outliers_per_block": [int(v) for v in outliers[noninitial].sum(0)],
            "noninitial_sink_keys_per_block": [
                int(v) for v in ((self.key_alpha > self.epsilon).any(dim=2) & eligible[:, None]).sum(0)
            ],
            "n_sink_keys": len(self.sink_keys),
            "sink_keys": [k.to_dict() for k in self.sink_keys[:max_keys]],
            "seconds": round(self.seconds, 2),
        }
        if self.high_norm_rows is not None and self.high_norm_alpha is not None:
            out["high_norm_rows"] = [int(r) for r in self.high_norm_rows]
            out["high_norm_mean_alpha"] = [round(float(v), 4) for v in self.high_norm_alpha.mean(dim=(0, 2))] \
                if len(self.high_norm_rows) else []
        return out


# --------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------
def _blocks(model: HookedModel, layers: int | Sequence[int] | None) -> list[int]:
    n = int(model.cfg.n_layers)
    if layers is None:
        return list(range(n))
    if isinstance(layers, bool):
        raise InputError(f"layers must be a block count or a list of blocks, got {layers!r}")
    if isinstance(layers, int):
        if not 1 <= layers <= n:
            raise InputError(f"layers must be in 1..{n} (the first blocks), got {layers}")
        return list(range(layers))
    try:
        blocks = sorted({int(b) for b in layers})
    except (TypeError, ValueError):
        raise InputError(f"layers must be a block count or a list of blocks, got {layers!r}") from None
    if not blocks or not all(0 <= b < n for b in blocks):
        raise InputError(f"blocks must be in 0..{n - 1}, got {list(layers)}")
    return blocks


def attention_sinks_pass(
    model: HookedModel,
    texts_or_tokenized: Sequence[str] | Tokenized,
    *,
    max_tokens_per_text: int | None = 64,
    epsilon: float = 0.3,
    layers: int | Sequence[int] | None = None,
    high_norm_rows: Sequence[int] | Tensor | None = None,
    min_queries: int = 8,
    outlier_fraction: float = 0.1,
    top_k: int = 10,
) -> Pass:
    """The streamed pass of :func:`attention_sinks`: run it with :func:`sd_lens.runtime.run_passes`
    (alone or with other passes over the same tokens), then ``.result()`` is the :class:`AttentionSinks`.

    Args:
        model: a TransformerLens model with ``blocks.{l}.attn.hook_pattern`` (:func:`sd_lens.load_model`).
        texts_or_tokenized: strings (the model's BOS convention applies) or a :class:`Tokenized`.
        max_tokens_per_text: truncate longer texts (None: error if over the context).
        epsilon: a head sinks on key ``k`` when ``α_k > epsilon`` (Gu et al.: 0.3).
        layers: None (every block), a count (the first ``layers`` blocks) or a list of blocks.
        high_norm_rows: token rows (texts in order, positions in order, as
            :class:`~sd_lens.analyses.probe.NormProbe`) whose received attention to report.
        min_queries: a noninitial key seen by fewer queries is never a sink key.
        outlier_fraction: An et al.'s attention-outlier threshold (0.1).
        top_k: how many of the strongest initial-token sink heads to list.

    Returns:
        An :class:`AttentionSinks`. No hook stays attached; the weights are not touched.

    Raises:
        InputError: bad arguments (before any forward).
        UnsupportedArchitectureError: the model has no attention-pattern hooks.
    """
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0.0 < float(epsilon) < 1.0:
        raise InputError(f"epsilon must be a number in (0, 1), got {epsilon!r}")
    if isinstance(outlier_fraction, bool) or not isinstance(outlier_fraction, (int, float)) or not (
        0.0 < float(outlier_fraction) <= 1.0
    ):
        raise InputError(f"outlier_fraction must be a number in (0, 1], got {outlier_fraction!r}")
    for name, value in (("min_queries", min_queries), ("top_k", top_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    blocks = _blocks(model, layers)
    if isinstance(texts_or_tokenized, Tokenized):
        tok = texts_or_tokenized
    else:
        if isinstance(texts_or_tokenized, str):
            raise InputError("texts must be a list of strings, not one string")
        tok = tokenize(model, texts_or_tokenized, max_tokens_per_text=max_tokens_per_text)
    if tok.n_truncated:
        warnings.warn(
            f"{tok.n_truncated} of {len(tok.texts)} texts were cut to their first {tok.max_tokens_per_text} tokens",
            stacklevel=2,
        )
    seqs = tok.sequences
    lengths = torch.tensor([len(s) for s in seqs])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    n_tokens = int(offsets[-1])
    rows: Tensor | None = None
    if high_norm_rows is not None:
        try:
            rows = torch.as_tensor(high_norm_rows, dtype=torch.long).flatten()
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"high_norm_rows must be token row indices, got {high_norm_rows!r}") from None
        if len(rows) and not bool(((rows >= 0) & (rows < n_tokens)).all()):
            raise InputError(f"high_norm_rows must be in 0..{n_tokens - 1} (the corpus has {n_tokens} token rows)")
    names = {act_name("pattern", b): i for i, b in enumerate(blocks)}
    require_hooks(model, list(names))
    n_heads = int(model.cfg.n_heads)

    t0 = time.perf_counter()
    key_alpha = torch.zeros(n_tokens, len(blocks), n_heads)
    outlier = torch.zeros(n_tokens, len(blocks))
    reducers = {name: _reduce for name in names}
    def consume(batch: Batch, out: Mapping[str, Any]) -> None:
        for name, i in names.items():
            alpha, score = out[name]
            for r, (seq, n) in enumerate(zip(batch.index, batch.lengths.tolist())):
                start = int(offsets[seq])
                key_alpha[start : start + n, i] = alpha[r, :, :n].T
                outlier[start : start + n, i] = score[r, :n]

    def finish() -> AttentionSinks:
        seq_index = torch.repeat_interleave(torch.arange(len(seqs)), lengths)
        positions = torch.cat([torch.arange(len(s)) for s in seqs])
        token_ids = torch.cat(seqs)
        key_queries = lengths[seq_index] - positions
        initial_alpha = key_alpha[offsets[:-1]]  # [n_texts, n_blocks, n_heads]
        eps = float(epsilon)
        score = initial_alpha.mean(dim=0)
        frequency = (initial_alpha > eps).float().mean(dim=0)
        order = torch.argsort(score.flatten(), descending=True, stable=True)[: min(top_k, score.numel())]
        top = [
            SinkHead(blocks[int(j) // n_heads], int(j) % n_heads, float(score.flatten()[j]), float(frequency.flatten()[j]))
            for j in order
        ]
        strings = {int(t): decode_one(model, int(t)) for t in token_ids.unique().tolist()}
        sink_keys = _sink_keys(
            key_alpha, key_queries, outlier >= float(outlier_fraction), seq_index, positions, token_ids, strings,
            blocks, eps, min_queries,
        )
        return AttentionSinks(
            model=model_name(model),
            blocks=blocks,
            n_heads=n_heads,
            epsilon=eps,
            min_queries=int(min_queries),
            outlier_fraction=float(outlier_fraction),
            initial_alpha=initial_alpha,
            score=score,
            sinks=score > eps,
            sink_frequency=frequency,
            block_sink_rate=frequency.mean(dim=1),
            sink_rate=float(frequency.mean()),
            top_heads=top,
            key_alpha=key_alpha,
            key_queries=key_queries,
            outlier_score=outlier,
            seq_index=seq_index,
            positions=positions,
            token_ids=token_ids,
            token_strings=strings,
            sink_keys=sink_keys,
            high_norm_rows=rows,
            high_norm_alpha=None if rows is None else key_alpha[rows],
            seconds=time.perf_counter() - t0,
        )

    return Pass(seqs, reducers, consume, finish, name="attention sinks")


def attention_sinks(
    model: HookedModel,
    texts_or_tokenized: Sequence[str] | Tokenized,
    *,
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
    epsilon: float = 0.3,
    layers: int | Sequence[int] | None = None,
    high_norm_rows: Sequence[int] | Tensor | None = None,
    min_queries: int = 8,
    outlier_fraction: float = 0.1,
    top_k: int = 10,
    progress: bool = False,
) -> AttentionSinks:
    """Measure the attention sinks of every head on a corpus (one streamed pass, no cache).

    The pass is :func:`attention_sinks_pass` (which can share its forwards with other passes through
    :func:`sd_lens.runtime.run_passes`); the other arguments are documented there.

    Args:
        batch_size: texts per forward.
        progress: show a tqdm bar.

    Returns:
        An :class:`AttentionSinks`. No hook stays attached; the weights are not touched.

    Example:
        >>> import sd_lens
        >>> sinks = sd_lens.attention_sinks(sd_lens.tiny_model("llama"), ["The cat sat on the mat."])
        >>> sinks.n_heads
        4
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    p = attention_sinks_pass(
        model, texts_or_tokenized, max_tokens_per_text=max_tokens_per_text, epsilon=epsilon, layers=layers,
        high_norm_rows=high_norm_rows, min_queries=min_queries, outlier_fraction=outlier_fraction, top_k=top_k,
    )
    run_passes(model, [p], batch_size=batch_size, progress=progress and "attention sinks")
    result: AttentionSinks = p.result()
    return result


def _sink_keys(
    key_alpha: Tensor,
    key_queries: Tensor,
    outliers: Tensor,
    seq_index: Tensor,
    positions: Tensor,
    token_ids: Tensor,
    strings: dict[int, str],
    blocks: list[int],
    epsilon: float,
    min_queries: int,
) -> list[SinkKey]:
    sinking = key_alpha > epsilon  # [n_tokens, n_blocks, n_heads]
    eligible = (positions > 0) & (key_queries >= min_queries) & sinking.flatten(1).any(dim=1)
    n_heads = key_alpha.shape[2]
    keys = []
    for row in torch.nonzero(eligible).flatten().tolist():
        flat = key_alpha[row].flatten()
        best = int(flat.argmax())
        keys.append(
            SinkKey(
                row=row,
                seq=int(seq_index[row]),
                position=int(positions[row]),
                token=strings[int(token_ids[row])],
                n_heads=int(sinking[row].sum()),
                alpha=float(flat[best]),
                block=blocks[best // n_heads],
                head=best % n_heads,
                blocks=[blocks[i] for i in torch.nonzero(sinking[row].any(dim=1)).flatten().tolist()],
                outlier_blocks=[blocks[i] for i in torch.nonzero(outliers[row]).flatten().tolist()],
            )
        )
    keys.sort(key=lambda k: (-k.n_heads, -k.alpha, k.row))
    return keys


# --------------------------------------------------------------------------------------------
# one head on one text, for the report's attention view
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class HeadPattern:
    """One head's attention pattern on one text, in the form of ``sd_lens.report.views.attention_view``.

    ``attention_view(**head_pattern.view_kwargs())`` draws it (circuitsvis ``AttentionHeads``).

    Attributes:
        tokens: the token strings.
        pattern: float32 ``[1, n_tokens, n_tokens]`` (one head; queries x keys).
        block, head: which head.
        alpha: float32 ``[n_tokens]``: Gu et al.'s ``α_k`` of every key of this text for this head.
    """

    text: str
    tokens: list[str]
    pattern: Tensor
    block: int
    head: int
    alpha: Tensor
    max_tokens: int | None

    @property
    def label(self) -> str:
        return f"L{self.block}H{self.head}"

    def view_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``sd_lens.report.views.attention_view``."""
        return {
            "tokens": self.tokens,
            "pattern": self.pattern,
            "layer": self.block,
            "head_labels": [self.label],
            "title": f"Attention of head {self.label} (sink score on the first token: α₀ = {float(self.alpha[0]):.2f})",
            "max_tokens": self.max_tokens,
        }


def sink_head_view(
    model: HookedModel, text: str, block: int, head: int, max_tokens: int | None = 64
) -> HeadPattern:
    """The attention pattern of head ``head`` of block ``block`` on ``text`` (one hooked forward).

    Args:
        model: a TransformerLens model.
        text: any text (the model's BOS convention applies).
        block, head: the head, e.g. one of :attr:`AttentionSinks.top_heads`.
        max_tokens: keep the first ``max_tokens`` tokens (None: all).

    Returns:
        A :class:`HeadPattern`; ``attention_view(**hp.view_kwargs())`` is the report's view.

    Raises:
        InputError: a block or head that does not exist, an empty text.
    """
    n_heads = int(model.cfg.n_heads)
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < n_heads:
        raise InputError(f"head must be in 0..{n_heads - 1}, got {head!r}")
    if isinstance(block, bool) or not isinstance(block, int):
        raise InputError(f"block must be an integer, got {block!r}")
    run = run_text(model, text, [block], max_tokens=max_tokens)
    pattern = run.patterns[block][head : head + 1].float()
    n = pattern.shape[-1]
    alpha = sink_scores(pattern[None], torch.tensor([n]))[0, 0]
    return HeadPattern(text, run.tokens, pattern, block, head, alpha, max_tokens)
