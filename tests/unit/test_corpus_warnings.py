"""Findings say when the input cannot carry them (issue 24, item 3): the corpus summary (texts,
tokens per text, truncations) is in the JSON and the report, and ``corpus_warnings`` says, with the
measured value, when texts are too short or too uniform for the defect finder's block medians."""

from __future__ import annotations

import json
import statistics
import warnings

import pytest

import sd_lens
from conftest import planted_bos_model
from sd_lens.analyses.corpus_check import MIN_MEDIAN_TOKENS, corpus_summary
from sd_lens.cli import main
from sd_lens.pipeline import run_analysis

PROSE = [
    "The cat sat on the mat because it was warm.",
    "A second sentence, somewhat longer than the first one was.",
    "Numbers 1 2 3 and symbols are text too, in a sentence.",
    "Rivers run to the sea, and the sea is never full of them.",
] * 3


@pytest.fixture(scope="module")
def planted():
    return planted_bos_model()


def _run(model, texts, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_analysis(model, texts, **options)
    return result, [str(w.message) for w in caught if str(w.message).startswith("corpus: ")]


def test_prose_gets_a_summary_and_no_warning(planted):
    result, said = _run(planted, PROSE, max_tokens_per_text=40)
    data = result.to_dict()
    lengths = [len(s) for s in result.probe.sequences]
    corpus = data["corpus"]
    assert corpus["n_texts"] == len(PROSE) and corpus["n_tokens"] == sum(lengths) == result.probe.n_tokens
    assert corpus["tokens_per_text"] == {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)}
    assert corpus["n_truncated"] == sum(len(planted.to_tokens(t)[0]) > 40 for t in PROSE) > 0
    assert corpus["max_tokens_per_text"] == 40
    assert corpus["initial_token_share"] == pytest.approx(len(PROSE) / sum(lengths), abs=1e-4)
    assert data["corpus_warnings"] == [] and said == []
    assert len(result.defects) == 1  # the planted initial-token defect


def test_one_token_per_text_warns_instead_of_a_silent_no_defect(planted):
    result, said = _run(planted, PROSE, max_tokens_per_text=1)
    data = result.to_dict()
    assert len(result.defects) == 0  # what it reported silently before
    assert data["corpus"]["tokens_per_text"] == {"min": 1, "median": 1, "max": 1}
    assert data["corpus"]["n_truncated"] == len(PROSE)
    assert len(data["corpus_warnings"]) == 1 and "single token" in data["corpus_warnings"][0]
    assert "max_tokens_per_text=1" in data["corpus_warnings"][0]
    assert said == [f"corpus: {data['corpus_warnings'][0]}"]


def test_one_character_lines_warn_with_the_median(planted):
    lines = list("abcdefghijklmnopqrstuvwxyzabcdefghijklmn")  # 40 one-character lines
    result, said = _run(planted, lines)
    [warning] = result.to_dict()["corpus_warnings"]
    assert "median of 2 tokens per text" in warning and "initial tokens are 50%" in warning
    assert f"at least {MIN_MEDIAN_TOKENS} tokens" in warning and said == [f"corpus: {warning}"]


def test_one_word_lines_warn(planted):
    words = "river mountain cloud window garden pencil music yellow quiet ocean".split() * 20
    [warning] = _run(planted, words)[0].to_dict()["corpus_warnings"]
    assert "the texts are short" in warning


def test_uniform_text_warns_with_the_share(planted):
    [warning] = _run(planted, ["aaaa aaaa aaaa aaaa aaaa aaaa"] * 5)[0].to_dict()["corpus_warnings"]
    assert "uniform" in warning and "'a'" in warning and "83%" in warning


def test_the_summary_of_a_probe_directly(planted):
    probe = sd_lens.probe_norms(planted, PROSE[:2], max_tokens_per_text=None)
    summary = corpus_summary(probe)
    assert summary.n_texts == 2 and summary.warnings == [] and summary.top_token is not None
    assert "2 text(s)" in summary.describe() and "median" in summary.describe()


def test_cli_warns_and_the_report_says_it(planted, tmp_path, monkeypatch):
    monkeypatch.setattr(sd_lens, "load_model", lambda *a, **k: planted)
    (tmp_path / "t.txt").write_text("\n".join(PROSE) + "\n")
    argv = ["--text-file", str(tmp_path / "t.txt"), "--max-tokens-per-text", "1", "--no-dtype-check"]
    with pytest.warns(UserWarning, match="corpus: every text is a single token"):  # on stderr, outside pytest
        assert main(["analyze", *argv, "--json", str(tmp_path / "a.json")]) == 0
    data = json.loads((tmp_path / "a.json").read_text())
    assert "single token" in data["corpus_warnings"][0]
    with pytest.warns(UserWarning, match="corpus: "):
        assert main(["report", *argv, "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Caution: every text is a single token" in html and "1\u20131 tokens per text, median 1" in html
