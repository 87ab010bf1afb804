"""Metrics of a model on text that the experiments and the applications share: perplexity, and the KL
of an edited model's next-token distributions from the clean model's.

**Perplexity** (:func:`perplexity`): ``exp`` of the mean next-token negative log-likelihood over
every predicted token (position ``t`` predicts ``t + 1``; ``n - 1`` predictions per text of ``n``
tokens), as ``eval_ppl`` (their texts are 4096-token windows of WikiText / C4 / PG-19; here the
texts of a corpus, each truncated to ``max_tokens_per_text``). With interventions it also gives
``KL(clean || intervened)`` of the next-token distributions, averaged over the same tokens: each
batch runs once, doubled — the clean copy in the first half, the intervened copy in the second (the
hooks see only the second half) — and is reduced to per-token numbers at ``unembed.hook_out``, so
no logits outlive their batch. An experiment with several edits of the same texts takes them all at
once (:func:`edited_perplexities`): rows ``[clean | edit 1 | ... | edit k]`` per forward, so the clean copy
runs once for all of them instead of once per edit.

**Held-out texts.** :func:`held_out_corpus` gives the default: the prose lines of
:func:`sd_lens.corpus.default_corpus` that follow its first ``skip`` lines in the same order
(``default_corpus(skip + n)[skip:]``), disjoint from ``default_corpus(skip)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from sd_lens.corpus import DEFAULT_N_LINES, default_corpus
from sd_lens.errors import InputError, NonFiniteActivationError
from sd_lens.runtime.engine import Batch, make_batch, real_mask, run_batch, with_real_mask
from sd_lens.runtime.hooks import LOGITS, require_hooks
from sd_lens.runtime.tokens import Tokenized, length_sorted_batches, tokenize
from sd_lens.types import HookedModel, HookFn

__all__ = ["LOGITS_HOOK", "Perplexity", "edited_perplexities", "held_out_corpus", "kl_sum", "nll_sum", "perplexity"]

#: the hook whose output is the logits (TransformerLens's unembedding; :data:`sd_lens.runtime.hooks.LOGITS`)
LOGITS_HOOK = LOGITS


def held_out_corpus(n_lines: int = DEFAULT_N_LINES, skip: int = DEFAULT_N_LINES) -> list[str]:
    """``n_lines`` prose lines of the default corpus's source that ``default_corpus(skip)`` does not hold.

    ``default_corpus(skip + n_lines)[skip:]``: the same deterministic order, the lines after the first
    ``skip`` (disjoint from ``default_corpus(skip)``, the corpus every analysis uses by default).
    """
    for name, v in (("n_lines", n_lines), ("skip", skip)):
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if name == "n_lines" else 0):
            raise InputError(f"{name} must be a {'positive' if name == 'n_lines' else 'non-negative'} integer, got {v!r}")
    return default_corpus(skip + n_lines)[skip:]



def _tokens(model: HookedModel, texts: Sequence[str] | Tokenized, max_tokens_per_text: int | None) -> Tokenized:
    return texts if isinstance(texts, Tokenized) else tokenize(model, texts, max_tokens_per_text=max_tokens_per_text)


@dataclass(frozen=True, eq=False)
class Perplexity:
    """Next-token perplexity of a model on texts (with interventions, when given).

    ``mean_nll`` (nats per predicted token) and ``perplexity = exp(mean_nll)`` over ``n_tokens``
    predictions (``n - 1`` per text of ``n`` tokens). With interventions and ``kl=True``:
    ``clean_mean_nll`` of the same forward's clean half and ``kl``, the mean over the same tokens of
    ``KL(p_clean || p_intervened)`` in nats. ``tokens_per_s``: tokens forwarded per second
    (``n_input_tokens / seconds``; a doubled batch counts its tokens once).
    """

    mean_nll: float
    perplexity: float
    n_tokens: int
    n_texts: int
    n_input_tokens: int
    kl: float | None
    clean_mean_nll: float | None
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.n_input_tokens / self.seconds if self.seconds > 0 else math.inf

    @property
    def clean_perplexity(self) -> float | None:
        return None if self.clean_mean_nll is None else _exp(self.clean_mean_nll)

    def to_dict(self) -> dict[str, Any]:
        def r(x: float | None, d: int = 4) -> float | None:
            return None if x is None or not math.isfinite(x) else round(x, d)

        return {
            "mean_nll": r(self.mean_nll),
            "perplexity": r(self.perplexity, 3),
            "n_tokens": self.n_tokens,
            "n_texts": self.n_texts,
            "kl": r(self.kl),
            "clean_mean_nll": r(self.clean_mean_nll),
            "seconds": round(self.seconds, 3),
            "tokens_per_s": round(self.tokens_per_s, 1),
        }


def _exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else math.inf


#: elements of a logits chunk the reducers work on at once (bounds their temporaries)
_CHUNK = 1 << 22


def _row_chunks(n_rows: int, per_row: int) -> Iterator[slice]:
    step = max(1, _CHUNK // max(per_row, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def nll_sum(logits: Tensor, tokens: Tensor, mask: Tensor) -> tuple[float, int]:
    """Sum of next-token NLLs over real predictions of ``logits`` [B, T, V] (logsumexp - target logit)."""
    total, count = 0.0, 0
    valid = mask[:, 1:]
    targets = tokens[:, 1:]
    for sl in _row_chunks(logits.shape[0], logits.shape[1] * logits.shape[2]):
        lg = logits[sl, :-1]
        nll = torch.logsumexp(lg.float(), dim=-1) - lg.gather(-1, targets[sl, :, None]).squeeze(-1).float()
        v = valid[sl]
        nll = nll[v]
        if not torch.isfinite(nll).all():
            raise NonFiniteActivationError("non-finite logits: the model overflowed or is NaN")
        total += float(nll.double().sum())
        count += int(v.sum())
    return total, count


def kl_sum(clean: Tensor, inter: Tensor, mask: Tensor) -> float:
    """Sum over real predicting positions of KL(softmax(clean) || softmax(inter)) per token."""
    total = 0.0
    valid = mask[:, 1:]
    for sl in _row_chunks(clean.shape[0], clean.shape[1] * clean.shape[2]):
        lp = torch.log_softmax(clean[sl, :-1].float(), dim=-1)
        lq = torch.log_softmax(inter[sl, :-1].float(), dim=-1)
        kl = (lp.exp() * (lp - lq)).sum(-1)[valid[sl]]
        total += float(kl.double().sum())
    return total


def _rows(fn: HookFn, lo: int, hi: int) -> HookFn:
    """``fn`` applied to rows ``lo:hi`` only (one copy in a batch of copies), :func:`real_mask` narrowed to them."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        real = real_mask()
        with with_real_mask(None if real is None else real[lo:hi]):
            edited = fn(act[lo:hi], hook)
        return torch.cat([act[:lo], edited, act[hi:]], dim=0)

    return hook



def perplexity(
    model: HookedModel,
    texts: Sequence[str] | Tokenized | None = None,
    fwd_hooks: Sequence[tuple[str, HookFn]] | None = None,
    *,
    kl: bool = True,
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
    score_from: int = 0,
) -> Perplexity:
    """Perplexity of ``model`` on ``texts`` (default: :func:`held_out_corpus`) under ``fwd_hooks``.

    Streams batches through :func:`sd_lens.runtime.run_batch` with one reducer on the logits
    (``unembed.hook_out``) that keeps per-batch sums only. With ``fwd_hooks`` and ``kl=True`` each
    batch runs once doubled (clean rows, then the same rows intervened: the hooks see the second half
    only) and the result also holds the clean NLL and ``KL(clean || intervened)`` per token; with
    ``kl=False`` it is one forward of the intervened model per batch.

    ``score_from``: only the predictions of tokens at positions ``>= score_from`` count (a context put
    before each text, e.g. a prefix, is read but not scored; 0 and 1 score every prediction).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(score_from, int) or isinstance(score_from, bool) or score_from < 0:
        raise InputError(f"score_from must be a non-negative integer, got {score_from!r}")
    hooks = list(fwd_hooks or ())
    require_hooks(model, [LOGITS_HOOK] + [n for n, _ in hooks])
    tok = _tokens(model, held_out_corpus() if texts is None else texts, max_tokens_per_text)
    if all(len(s) < max(2, score_from + 1) for s in tok.sequences):
        raise InputError("every text has fewer than 2 tokens: there is nothing to predict")
    doubled = bool(hooks) and kl
    nll = clean_nll = kl_total = 0.0
    n_tok = n_in = 0
    t0 = time.perf_counter()
    for idx in length_sorted_batches(tok.sequences, batch_size):
        seqs = [tok.sequences[i] for i in idx]
        n = len(seqs)
        batch = make_batch(model, seqs + seqs if doubled else seqs, idx + idx if doubled else idx)

        def reduce(act: Tensor, b: Batch) -> tuple[float, float, float, int]:
            scored = b.mask
            if score_from > 1:  # the targets before score_from are context, not scored
                scored = scored & (torch.arange(scored.shape[1], device=scored.device) >= score_from)[None, :]
            if not doubled:
                s, c = nll_sum(act, b.tokens, scored)
                return s, 0.0, 0.0, c
            s_clean, c = nll_sum(act[:n], b.tokens[:n], scored[:n])
            s_int, _ = nll_sum(act[n:], b.tokens[n:], scored[n:])
            return s_int, s_clean, kl_sum(act[:n], act[n:], scored[:n]), c

        run_hooks = [(name, _rows(fn, n, 2 * n)) for name, fn in hooks] if doubled else hooks
        out = run_batch(model, batch, {LOGITS_HOOK: reduce}, fwd_hooks=run_hooks)
        s, sc, k, c = out[LOGITS_HOOK]
        nll += s
        clean_nll += sc
        kl_total += k
        n_tok += c
        n_in += int(batch.lengths[:n].sum())
    seconds = time.perf_counter() - t0
    mean = nll / n_tok
    return Perplexity(
        mean_nll=mean, perplexity=_exp(mean), n_tokens=n_tok, n_texts=len(tok.sequences), n_input_tokens=n_in,
        kl=kl_total / n_tok if doubled else (0.0 if not hooks else None),
        clean_mean_nll=clean_nll / n_tok if doubled else (mean if not hooks else None),
        seconds=seconds,
    )


def edited_perplexities(
    model: HookedModel,
    texts: Sequence[str] | Tokenized,
    edits: Sequence[Sequence[tuple[str, HookFn]]],
    *,
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
) -> tuple[Perplexity, list[Perplexity]]:
    """``perplexity(model, texts)`` and, for every edit (a list of forward hooks),
    ``perplexity(model, texts, edit)`` with its KL to the clean model — in shared forwards.

    Each forward holds one clean copy of some texts and one copy per edit (rows ``[clean | edit 1 | ... |
    edit k]``; each edit's hooks see only its rows), about ``2 * batch_size`` rows as a doubled batch of
    :func:`perplexity` holds: ``k + 1`` copies of the texts run instead of ``2k`` (and ``k + 1`` with the clean
    perplexity measured alone). The numbers are :func:`perplexity`'s up to the last digits that another batch
    composition moves. Every edit's ``clean_mean_nll`` is the clean copy's, and the seconds are the shared
    forwards' (each edit's ``seconds`` and ``n_input_tokens`` are the whole call's).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    edits = [list(e) for e in edits]
    require_hooks(model, [LOGITS_HOOK] + [n for e in edits for n, _ in e])
    tok = _tokens(model, texts, max_tokens_per_text)
    if all(len(s) < 2 for s in tok.sequences):
        raise InputError("every text has fewer than 2 tokens: there is nothing to predict")
    k = len(edits)
    cap = 2 * batch_size - 1  # edits per forward: more would hold more rows than a doubled batch
    if k > cap:
        parts = [edited_perplexities(model, tok, edits[i : i + cap], batch_size=batch_size) for i in range(0, k, cap)]
        return parts[0][0], [p for _, runs in parts for p in runs]
    per = max(1, (2 * batch_size) // (k + 1))  # texts per forward: k + 1 copies of each
    clean = 0.0
    nll = [0.0] * k
    kl = [0.0] * k
    n_tok = n_in = 0
    t0 = time.perf_counter()
    for idx in length_sorted_batches(tok.sequences, per):
        seqs = [tok.sequences[i] for i in idx]
        n = len(seqs)
        batch = make_batch(model, seqs * (k + 1), idx * (k + 1))
        hooks = [(name, _rows(fn, (e + 1) * n, (e + 2) * n)) for e, edit in enumerate(edits) for name, fn in edit]

        def reduce(act: Tensor, b: Batch) -> list[float]:
            s_clean, c = nll_sum(act[:n], b.tokens[:n], b.mask[:n])
            out = [s_clean, float(c)]
            for e in range(k):
                lo, hi = (e + 1) * n, (e + 2) * n
                out.append(nll_sum(act[lo:hi], b.tokens[lo:hi], b.mask[lo:hi])[0])
                out.append(kl_sum(act[:n], act[lo:hi], b.mask[:n]))
            return out

        vals = run_batch(model, batch, {LOGITS_HOOK: reduce}, fwd_hooks=hooks)[LOGITS_HOOK]
        clean += vals[0]
        n_tok += int(vals[1])
        for e in range(k):
            nll[e] += vals[2 + 2 * e]
            kl[e] += vals[3 + 2 * e]
        n_in += int(batch.lengths[:n].sum())
    seconds = time.perf_counter() - t0
    clean_mean = clean / n_tok

    def result(mean: float, kl_mean: float) -> Perplexity:
        return Perplexity(
            mean_nll=mean, perplexity=_exp(mean), n_tokens=n_tok, n_texts=len(tok.sequences), n_input_tokens=n_in,
            kl=kl_mean, clean_mean_nll=clean_mean, seconds=seconds,
        )

    return result(clean_mean, 0.0), [result(x / n_tok, y / n_tok) for x, y in zip(nll, kl)]
