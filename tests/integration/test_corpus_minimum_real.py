"""SmolLM2's two defects (explosion blocks 2 and 11) are found on any corpus of real prose that meets
the documented minimum of ``sd_lens.analyses.corpus_check`` — without a corpus warning — and a corpus
below it is warned (issue 24, item 3). Real model: SmolLM2-135M (about 30 s on two cores; whole lines
of other prose, 400 of them, are tests/integration/test_corpus_invariance.py's)."""

from __future__ import annotations

import pytest

from sd_lens.analyses.corpus_check import MIN_MEDIAN_TOKENS, corpus_summary
from sd_lens.analyses.defects import find_defects
from sd_lens.analyses.probe import probe_norms
from sd_lens.corpus import _prose_lines, default_corpus

pytestmark = pytest.mark.real_model


def _other_prose(n: int) -> list[str]:
    used = set(default_corpus())
    return [line for line in _prose_lines() if line not in used][:n]


def _word_chunks(lines: list[str], words: int) -> list[str]:
    """The lines' words cut into texts of ``words`` words (short texts of real prose)."""
    flat = " ".join(lines).split()
    return [" ".join(flat[i : i + words]) for i in range(0, len(flat) - words + 1, words)]


CORPORA = {
    "the default corpus": lambda: default_corpus(),
    "paragraphs of 4 lines (truncated to 64 tokens)": lambda: [
        " ".join(ls) for ls in zip(*[iter(_other_prose(96))] * 4)
    ],
    "6-word pieces of prose, at the minimum": lambda: _word_chunks(_other_prose(60), 6)[:150],
}


@pytest.mark.parametrize("name", list(CORPORA))
def test_the_bundled_defects_on_prose_at_or_above_the_minimum(smollm2, name):
    texts = CORPORA[name]()
    probe = probe_norms(smollm2, texts, max_tokens_per_text=64)
    summary = corpus_summary(probe, max_tokens_per_text=64, n_truncated=probe.n_truncated)
    assert summary.tokens_median >= MIN_MEDIAN_TOKENS and summary.warnings == [], summary.warnings
    report = find_defects(smollm2, probe)
    assert [d.explosion_layer for d in report] == [2, 11], (name, summary.describe())


def test_one_word_lines_are_warned(smollm2):
    words = [w for w in " ".join(_other_prose(60)).split() if w.isalpha()][:300]
    probe = probe_norms(smollm2, words)
    [warning] = corpus_summary(probe).warnings
    assert "the texts are short" in warning and "median of" in warning
