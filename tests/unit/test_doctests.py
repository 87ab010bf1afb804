"""Every ``>>>`` example in the sources runs, on tiny models, and the main functions have one.

The examples are the API's first lines of use (three lines: import, call, look at the result), so a
notebook user can copy them; this test keeps them true. Examples that need a real model say so in
:data:`REAL_MODEL` and run in the integration tier's pages instead.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import sd_lens

#: the functions a notebook starts from: each must carry a runnable example
MAIN = (
    "probe_norms", "find_defects", "run_analysis", "activation_outliers", "weight_outliers", "attention_sinks",
    "fit_ffn", "carrier_mask", "defects_summary",
)
#: modules whose examples load a real model (not run in the unit tier), with the reason
REAL_MODEL = {"sd_lens.analyses.norm_table": "loads SmolLM2-135M (the integration tier runs it as a page)"}


def example_tests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder()
    out = []
    for info in pkgutil.walk_packages(sd_lens.__path__, "sd_lens."):
        if info.name in REAL_MODEL or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        out += [t for t in finder.find(module) if t.examples]
    return sorted(out, key=lambda t: t.name)


EXAMPLES = example_tests()


@pytest.mark.parametrize("test", EXAMPLES, ids=[t.name for t in EXAMPLES])
def test_the_example_runs(test: doctest.DocTest):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    runner.run(test, out=out.append)
    assert runner.failures == 0, "".join(out)


def test_the_main_functions_have_an_example():
    missing = [name for name in MAIN if ">>>" not in (getattr(sd_lens, name).__doc__ or "")]
    assert not missing, f"give these a three-line example on a tiny model: {missing}"
    names = {t.name.rsplit(".", 1)[-1] for t in EXAMPLES}
    assert set(MAIN) <= names
