"""Outlier tokens (PrefixQuant's rule) and the prefix intervention: tiny models of every family, a planted
outlier token recovered exactly, the rule against a brute-force cache, properties of eta, no double BOS."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sd_lens.analyses.outlier_interventions import perplexity
from sd_lens.analyses.outlier_tokens import (
    arrange_context,
    find_outlier_tokens,
    lower_median,
    outlier_tokens,
)
from sd_lens.cli import build_parser
from sd_lens.errors import InputError
from sd_lens.models.tiny import tiny_model
from sd_lens.pipeline import AnalysisConfig, run_analysis
from sd_lens.runtime import act_name
from sd_lens.runtime.tokens import bos_token_id, prepends_bos, tokenize

TEXTS = ["the quick fox", "a q b q c", "no such letter here", "equal and quiet", "hello world", "qqq"]
PLANTED = "q"


def planted_hooks(model, token: str = PLANTED, factor: float = 1000.0):
    """Forward hooks planting PrefixQuant's mechanism: the *first* occurrence of ``token`` in a sequence gets its
    down-projection input multiplied by ``factor`` at the last block (a later occurrence does not: a prefix that
    holds the token takes the outlier out of the text). The token is found by its embedding at ``hook_embed``."""
    ids = model.to_tokens(token, prepend_bos=False)
    _, cache = model.run_with_cache(ids)
    ref = cache["hook_embed"][0, 0].clone()
    state: dict[str, torch.Tensor] = {}

    def mark(act, hook):
        state["mask"] = (act - ref.to(act.dtype)).abs().amax(-1) < 1e-6

    def plant(act, hook):
        mask = state["mask"]
        first = mask & (mask.long().cumsum(1) == 1)
        return act * (1 + (factor - 1) * first[..., None].to(act.dtype))

    return int(ids[0, 0]), [("hook_embed", mark), (act_name("mlp_post", model.cfg.n_layers - 1), plant)]


def _first_positions(model, texts, token_id):
    seqs = tokenize(model, texts).sequences
    out = {}
    for i, s in enumerate(seqs):
        hits = (s == token_id).nonzero().flatten().tolist()
        if hits:
            out[i] = hits[0]
    return out


# ------------------------------------------------------------------------------------------------
# every family
# ------------------------------------------------------------------------------------------------
def test_rule_matches_run_with_cache_on_every_family(tiny, unchanged):
    """Small eta so that there are hits: the result is exactly the rule applied to each text's cache."""
    eta = 1.2
    with unchanged(tiny):
        r = outlier_tokens(tiny, TEXTS, eta=eta, prefixes=False, batch_size=4)
    expected = set()
    for i, s in enumerate(tokenize(tiny, TEXTS).sequences):
        _, cache = tiny.run_with_cache(s[None])
        for b in range(tiny.cfg.n_layers):
            m = cache[act_name("mlp_post", b)][0].abs().amax(-1)
            ratio = m / m.median()  # torch.median: the lower median, as PrefixQuant
            expected |= {(i, int(p), b) for p in torch.nonzero(ratio > eta).flatten()}
    got = {(o.seq, o.position, b) for o in r.outliers for b in o.blocks}
    assert got == expected and got
    assert sum(r.n_by_block) == len(got) and sum(r.per_sequence) == len(r)
    assert all(min(o.ratios) > eta for o in r.outliers)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["n_outliers"] == len(r) and d["baseline"] is None and d["trials"] == []


def test_planted_outlier_token_is_recovered_exactly_and_the_prefix_removes_it(tiny, unchanged):
    token_id, hooks = planted_hooks(tiny)
    first = _first_positions(tiny, TEXTS, token_id)
    clean = outlier_tokens(tiny, TEXTS, prefixes=False)
    assert len(clean) == 0  # the random tiny models have no outlier token at eta = 64
    with tiny.hooks(fwd_hooks=hooks), unchanged(tiny, check_output=False):
        r = outlier_tokens(tiny, TEXTS)
    last = tiny.cfg.n_layers - 1
    assert {(o.seq, o.position) for o in r.outliers} == set(first.items())
    assert all(o.blocks == (last,) and o.token == PLANTED and o.token_id == token_id for o in r.outliers)
    assert all(o.ratio > 64 for o in r.outliers)
    assert r.tokens() == [(PLANTED, token_id, len(first))]
    # the prefix intervention: the planted token as a prefix takes every later outlier out of the text
    later = sum(p > 0 for p in first.values())
    assert r.baseline is not None and r.baseline.later_outliers == later
    trials = {t.name: t for t in r.trials}
    assert trials["most frequent"].prefix == (token_id,)
    assert trials["most frequent"].later_outliers == 0 and trials["PrefixQuant"].later_outliers == 0
    assert trials["'.'"].later_outliers == later  # an unrelated prefix leaves them
    assert r.best is not None and r.best.later_outliers == 0
    # every trial scores the same text tokens as the baseline
    assert {t.perplexity.n_tokens for t in r.trials} == {r.baseline.perplexity.n_tokens}


def test_defect_carriers_come_from_the_report(tiny):
    token_id, hooks = planted_hooks(tiny)
    episode = SimpleNamespace(token_id=token_id, initial=False)
    report = SimpleNamespace(
        n_layers=tiny.cfg.n_layers,
        all=[SimpleNamespace(label="D0", initial_token=True, episodes=[]),
             SimpleNamespace(label="m1", initial_token=False, episodes=[episode])],
    )
    with tiny.hooks(fwd_hooks=hooks):
        r = outlier_tokens(tiny, TEXTS, defects=report, prefixes=False)  # type: ignore[arg-type]
    assert r.defects_checked and len(r)
    for o in r.outliers:
        assert o.defects == (("D0",) if o.position == 0 else ("m1",))
    assert r.carriers == len(r)
    with tiny.hooks(fwd_hooks=hooks):
        unchecked = outlier_tokens(tiny, TEXTS, prefixes=False)
    assert not unchecked.defects_checked and all(o.defects == () for o in unchecked.outliers)


# ------------------------------------------------------------------------------------------------
# no double BOS
# ------------------------------------------------------------------------------------------------
def test_arrange_context_never_doubles_bos():
    assert arrange_context((5, 7, 1), bos=1, text_has_bos=True) == (5, 7, 1)  # the prefix's BOS replaces the text's
    assert arrange_context((1,), bos=1, text_has_bos=True) == (1,)
    assert arrange_context((5,), bos=1, text_has_bos=True) == (1, 5)  # the model's convention kept: BOS first
    assert arrange_context((5,), bos=1, text_has_bos=False) == (5,)
    assert arrange_context((), bos=1, text_has_bos=True) == (1,)
    assert arrange_context((5, 1), bos=None, text_has_bos=False) == (5, 1)
    with pytest.raises(InputError):
        arrange_context((5,), bos=None, text_has_bos=True)


def test_no_trial_holds_two_bos(tiny):
    token_id, hooks = planted_hooks(tiny)
    bos = bos_token_id(tiny)
    with tiny.hooks(fwd_hooks=hooks):
        r = outlier_tokens(tiny, TEXTS)
    assert r.baseline is not None
    for t in [r.baseline, *r.trials]:
        assert t.context.count(bos) <= 1, t
        if bos in t.prefix:
            assert t.context == t.prefix
    if prepends_bos(tiny):
        assert "BOS" in r.skipped and all(t.context[0] == bos or bos in t.prefix for t in r.trials)
        assert {t.name: t.prefix for t in r.trials}["PrefixQuant"][-1] == bos
    else:  # GPT-NeoX's tokenizer puts no BOS first: BOS alone is a candidate
        assert {t.name: t.context for t in r.trials}["BOS"] == (bos,)


def test_perplexity_score_from_scores_only_the_later_targets():
    model = tiny_model("llama")
    tok = tokenize(model, TEXTS)
    full = perplexity(model, tok, kl=False)
    assert perplexity(model, tok, kl=False, score_from=1).mean_nll == pytest.approx(full.mean_nll, rel=1e-6)
    later = perplexity(model, tok, kl=False, score_from=3)
    assert later.n_tokens == full.n_tokens - sum(min(len(s) - 1, 2) for s in tok.sequences)
    with pytest.raises(InputError):
        perplexity(model, tok, score_from=-1)


# ------------------------------------------------------------------------------------------------
# the rule: properties of eta
# ------------------------------------------------------------------------------------------------
_maxima = st.lists(
    st.lists(st.floats(0.0625, 1e4, allow_nan=False, width=32), min_size=2, max_size=12), min_size=1, max_size=4
)


def _as_tensors(rows: list[list[float]], n_layers: int = 2) -> list[torch.Tensor]:
    return [torch.tensor([r, r[::-1]][:n_layers], dtype=torch.float32) for r in rows]


@settings(max_examples=60, deadline=None)
@given(_maxima, st.floats(1.0, 100.0), st.floats(1.0, 100.0), st.floats(0.01, 100.0))
def test_eta_monotone_scale_free_and_the_lower_median(rows, eta1, eta2, scale):
    maxima = _as_tensors(rows)
    lo, hi = sorted((eta1, eta2))

    def hits(ms, eta):
        found, _ = find_outlier_tokens(ms, eta)
        return {(i, p, b) for i, h in enumerate(found) for p, b, _, _ in h}

    assert hits(maxima, hi) <= hits(maxima, lo)  # a larger eta finds a subset
    scaled = [m * scale for m in maxima]
    found, best = find_outlier_tokens(maxima, lo)
    found_s, best_s = find_outlier_tokens(scaled, lo)
    for a, b in zip(found, found_s):  # a common scale changes nothing but rounding at the threshold
        assert {(p, bl) for p, bl, r, _ in a if abs(r - lo) > 1e-3 * lo} <= {(p, bl) for p, bl, _, _ in b}
    torch.testing.assert_close(best, best_s, rtol=1e-4, atol=0)
    for m, h in zip(maxima, found):  # brute force: torch.median is the lower median
        for b in range(m.shape[0]):
            med = float(m[b].median())
            assert med == lower_median(m[b])
            assert {p for p, bl, _, _ in h if bl == b} == {p for p in range(m.shape[1]) if float(m[b, p]) / med > lo}


def test_bad_arguments_raise_before_any_forward():
    model = tiny_model("llama")

    def boom(*a, **k):
        raise AssertionError("the model ran")

    model.forward = boom
    for kwargs in ({"eta": 0}, {"eta": float("nan")}, {"eta": True}, {"batch_size": 0}):
        with pytest.raises(InputError):
            outlier_tokens(model, TEXTS, **kwargs)
    with pytest.raises(InputError):
        outlier_tokens(model, TEXTS, defects=SimpleNamespace(n_layers=99, all=[]))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# pipeline, CLI and JSON
# ------------------------------------------------------------------------------------------------
def test_config_flags_and_validation():
    args = build_parser().parse_args(["analyze", "--outlier-tokens", "--outlier-eta", "8"])
    assert args.outlier_tokens is True and args.outlier_eta == 8.0
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(InputError, match="outlier_eta"):
            AnalysisConfig(outlier_eta=bad)


def test_run_analysis_writes_the_outlier_tokens_key_and_report_section(tmp_path, unchanged):
    from sd_lens.report import write_report

    model = tiny_model("llama", seed=1, n_layers=2)
    token_id, hooks = planted_hooks(model)
    with model.hooks(fwd_hooks=hooks), unchanged(model, check_output=False):
        result = run_analysis(model, TEXTS * 2, outlier_tokens=True, seed=0)
    d = json.loads(result.to_json())
    assert d["outlier_tokens"]["eta"] == 64.0 and d["outlier_tokens"]["n_outliers"] == len(result.outlier_tokens)
    assert {o["token_id"] for o in d["outlier_tokens"]["outliers"]} == {token_id}
    assert d["outlier_tokens"]["defects_checked"] is True and d["outlier_tokens"]["trials"]
    html = write_report(model, result, tmp_path / "out").read_text(encoding="utf-8")
    assert ">Outlier tokens and prefixes<" in html and "PrefixQuant" in html
    assert "outlier_tokens" not in json.loads(run_analysis(model, TEXTS * 2, seed=0).to_json())


def test_cli_analyze_flags_key_and_summary_line(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from sd_lens.cli import main
    from sd_lens.models.tiny import char_tokenizer, tiny_hf_config

    torch.manual_seed(0)
    path = tmp_path / "tiny"
    AutoModelForCausalLM.from_config(tiny_hf_config("llama"), attn_implementation="eager").save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    out = tmp_path / "a.json"
    assert main(["analyze", "--model", str(path), "--outlier-tokens", "--outlier-eta", "1.5", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["outlier_tokens"]["eta"] == 1.5 and data["outlier_tokens"]["n_outliers"] > 0
    assert "outlier tokens (max|h| over the median > 1.5" in capsys.readouterr().out
