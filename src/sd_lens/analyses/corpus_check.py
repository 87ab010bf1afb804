"""Can this corpus carry the findings? Its size, and warnings when it is too short or too uniform.

The defect finder (:mod:`sd_lens.analyses.defects`) judges every state against its block's
*median* norm over the corpus: that median must be the norm of ordinary tokens, so high-norm states
must be a small minority. Every text contributes one initial token, the carrier of the initial
defect in most models, so when texts are short the initial tokens become a large share of the
corpus and the median moves towards their norm: with ``max_tokens_per_text=1`` every token is an
initial one and nothing can stand out; with one-word lines the initial tokens are a third or half of
the corpus and defects are lost. When one token makes up most of the other positions, the median is
that token's norm, not that of varied text.

The documented minimum (warned below it, with the measured value):

* a median of at least :data:`MIN_MEDIAN_TOKENS` tokens per text (BOS included), so that initial
  tokens are at most about one in eight;
* no single non-initial token making up more than :data:`MAX_TOP_TOKEN_SHARE` of the non-initial
  tokens.

The default corpus (prose lines over 40 characters) meets both by a wide margin.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sd_lens.analyses.probe import NormProbe

__all__ = ["MAX_TOP_TOKEN_SHARE", "MIN_MEDIAN_TOKENS", "CorpusSummary", "corpus_summary"]

#: below this median of tokens per text (BOS included) the corpus is warned as too short
MIN_MEDIAN_TOKENS = 8
#: above this share of the non-initial tokens, one token makes the corpus too uniform
MAX_TOP_TOKEN_SHARE = 0.5


@dataclass(frozen=True)
class CorpusSummary:
    """What the probed corpus holds, and why it may not carry the findings (``warnings``).

    Attributes:
        n_texts, n_tokens: texts, and tokens in all (BOS included).
        tokens_min, tokens_median, tokens_max: tokens per text (BOS included, after truncation).
        n_truncated: texts cut to ``max_tokens_per_text`` (None: no limit; unknown counts are 0).
        initial_share: the initial tokens' share of all tokens (``n_texts / n_tokens``).
        top_token, top_token_share: the most frequent non-initial token and its share of the
            non-initial tokens (None and 0 when there is none).
        warnings: one sentence per reason the corpus may not carry the findings, with the measured value.
    """

    n_texts: int
    n_tokens: int
    tokens_min: int
    tokens_median: float
    tokens_max: int
    n_truncated: int
    max_tokens_per_text: int | None
    initial_share: float
    top_token: str | None
    top_token_share: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The keys added to the JSON's ``corpus`` (besides ``n_texts`` and ``n_tokens``)."""
        return {
            "n_texts": self.n_texts,
            "n_tokens": self.n_tokens,
            "tokens_per_text": {"min": self.tokens_min, "median": self.tokens_median, "max": self.tokens_max},
            "n_truncated": self.n_truncated,
            "max_tokens_per_text": self.max_tokens_per_text,
            "initial_token_share": round(self.initial_share, 4),
            "top_token": None if self.top_token is None else {"token": self.top_token,
                                                              "share": round(self.top_token_share, 4)},
        }

    def describe(self) -> str:
        """One sentence: texts, tokens, tokens per text and truncations."""
        cut = ""
        if self.max_tokens_per_text is not None:
            cut = f"; {self.n_truncated} cut to their first {self.max_tokens_per_text} tokens"
        return (
            f"{self.n_texts} text(s), {self.n_tokens:,} tokens in all (BOS included; {self.tokens_min}\u2013"
            f"{self.tokens_max} tokens per text, median {self.tokens_median:g}{cut})"
        )


def corpus_summary(probe: NormProbe, *, max_tokens_per_text: int | None = None, n_truncated: int = 0) -> CorpusSummary:
    """The :class:`CorpusSummary` of a probe, warnings included (see the module docstring)."""
    lengths = [len(s) for s in probe.sequences]
    n_texts, n_tokens = len(lengths), sum(lengths)
    median = float(statistics.median(lengths))
    initial_share = n_texts / n_tokens
    later = Counter(int(t) for s in probe.sequences for t in s[1:].tolist())
    n_later = sum(later.values())
    top_token, top_share = None, 0.0
    if n_later:
        top_id, top_count = later.most_common(1)[0]
        top_token, top_share = probe.token_string(top_id), top_count / n_later
    warnings = []
    if n_later == 0:
        warnings.append(
            f"every text is a single token (median {median:g} token per text"
            + (f"; {n_truncated} cut to max_tokens_per_text={max_tokens_per_text}" if n_truncated else "")
            + "): every state is an initial token's, so no state can stand out against the block's median and "
            "'no defect' means nothing here; give texts of several words (at least "
            f"{MIN_MEDIAN_TOKENS} tokens each)"
        )
    elif median < MIN_MEDIAN_TOKENS:
        warnings.append(
            f"the texts are short: a median of {median:g} tokens per text (BOS included"
            + (f"; {n_truncated} cut to max_tokens_per_text={max_tokens_per_text}" if n_truncated else "")
            + f"), so initial tokens are {100 * initial_share:.0f}% of the {n_tokens} tokens whose median norm "
            "per block is the finder's reference: defects, the initial token's above all, may be missed or "
            f"misjudged; give texts of at least {MIN_MEDIAN_TOKENS} tokens (whole sentences or paragraphs)"
        )
    if n_later and top_share > MAX_TOP_TOKEN_SHARE:
        warnings.append(
            f"the texts are uniform: the token {top_token!r} is {100 * top_share:.0f}% of the {n_later} non-initial "
            "tokens, so the block medians are its norms rather than those of varied text; give varied prose"
        )
    return CorpusSummary(
        n_texts=n_texts, n_tokens=n_tokens, tokens_min=min(lengths), tokens_median=median, tokens_max=max(lengths),
        n_truncated=n_truncated, max_tokens_per_text=max_tokens_per_text, initial_share=initial_share,
        top_token=top_token, top_token_share=top_share, warnings=warnings,
    )
