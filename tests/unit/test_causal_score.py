"""CausalScore: the inert label, the order of ``ranked`` and the JSON form."""

from __future__ import annotations

import doctest

import sd_lens.analyses.causal_score as causal_score
from sd_lens.analyses.causal_score import INERT_KL, CausalScore, ranked


def test_docstring_example_runs() -> None:
    failed, attempted = doctest.testmod(causal_score, verbose=False)
    assert attempted >= 1 and failed == 0


def test_inert_is_below_the_threshold_only() -> None:
    assert CausalScore("a", ppl_ratio=1.0, kl=INERT_KL * 0.99).inert
    assert not CausalScore("a", ppl_ratio=1.0, kl=INERT_KL).inert
    assert CausalScore("a", ppl_ratio=5.0, kl=0.5, inert_kl=1.0).label == "massive but inert"
    assert CausalScore("a", ppl_ratio=5.0, kl=0.5).label == "causal"


def test_ranked_orders_by_kl_then_ratio_then_name() -> None:
    s = [CausalScore("b", 2.0, 0.3), CausalScore("a", 2.0, 0.3), CausalScore("c", 9.0, 0.3), CausalScore("d", 1.0, 4.0)]
    assert [x.name for x in ranked(s)] == ["d", "c", "a", "b"]


def test_to_dict_rounds_and_keeps_none() -> None:
    d = CausalScore("D1", ppl_ratio=2.0e5 + 0.1234567, kl=12.8234567).to_dict()
    assert d == {"name": "D1", "ppl_ratio": 200000.123457, "kl": 12.823457, "control_ppl_ratio": None,
                 "control_kl": None, "inert": False, "inert_kl": INERT_KL}
