"""The test suite's own rules (issue #20): the unit tier loads no real model, and the analysis JSONs are
compared with stated tolerances that can fail."""

from __future__ import annotations

import pytest

from sd_lens.models import loading
from tolerances import TOLERANCES, Tolerance, compare_json, kind_of


def test_a_unit_test_cannot_load_a_bundled_model():
    """tests/conftest.py replaces the bundled models' weight files in the unit tier by a failure."""
    for name, spec in loading.BUNDLED.items():
        with pytest.raises((pytest.fail.Exception, loading.MissingDependencyError), match="tests/integration|pip"):
            spec.gguf_path()


def test_kinds_of_keys():
    assert kind_of("spread_deg") == kind_of("angles_deg") == "angle"
    assert kind_of("typical_norm") == kind_of("norm_after") == kind_of("peak_ratio") == "norm"
    assert kind_of("eigenvalue") == kind_of("ffn_r2") == "other"


def test_floats_within_tolerance_pass_and_beyond_fail():
    norm = TOLERANCES["norm"]
    x = 5265.924
    close = x * (1 + norm.rtol / 2)
    far = x * (1 + 3 * norm.rtol) + norm.atol
    assert not compare_json({"typical_norm": [x]}, {"typical_norm": [close]}).problems
    found = compare_json({"typical_norm": [x]}, {"typical_norm": [far]})
    assert len(found.problems) == 1 and "typical_norm[0]" in found.problems[0]
    assert found.worst["norm"][0] > 1.0


def test_integers_strings_and_structure_are_exact():
    assert compare_json({"layer": 2}, {"layer": 3}).problems
    assert compare_json({"carrier": "<s>"}, {"carrier": "<S>"}).problems
    assert compare_json({"defects": [1, 2]}, {"defects": [1]}).problems
    assert compare_json({"a": 1}, {"a": 1, "b": 2}).problems
    assert not compare_json({"timings_s": {"total": 1.0}}, {"timings_s": {"total": 9.0}}).problems


def test_angles_are_absolute_and_tolerances_can_be_widened():
    assert compare_json({"x_deg": 89.0}, {"x_deg": 89.1}).problems
    assert not compare_json({"x_deg": 89.0}, {"x_deg": 89.1}, {"angle": Tolerance(0.0, 0.5)}).problems
