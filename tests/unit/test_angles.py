"""``acute_angle_deg``: the angle between two lines, accurate at every angle (property tests)."""
from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sd_lens.linalg import acute_angle_deg

_seeds = st.integers(0, 2**31 - 1)
_dims = st.integers(2, 700)


def _vec(seed: int, d: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@settings(max_examples=60, deadline=None)
@given(seed=_seeds, d=_dims, scale=st.floats(1e-6, 1e6))
def test_one_direction_is_exactly_zero_degrees_whatever_its_sign_and_scale(seed, d, scale):
    v = _vec(seed, d)
    # the arccos form gave 8.5e-7 deg for a vector and itself (a cosine rounded to 1 - 1e-16)
    assert float(acute_angle_deg(v, v)) == 0.0
    assert float(acute_angle_deg(v, -scale * v)) < 1e-5  # the scaled copy is rounded in float32


@settings(max_examples=60, deadline=None)
@given(seed=_seeds, d=_dims)
def test_symmetric_acute_and_equal_to_the_cosine_where_that_is_well_conditioned(seed, d):
    a, b = _vec(seed, d, torch.float64), _vec(seed + 1, d, torch.float64)
    ab, ba = float(acute_angle_deg(a, b)), float(acute_angle_deg(b, a))
    assert ab == ba and 0.0 <= ab <= 90.0
    cos = abs(float(a @ b)) / float(a.norm() * b.norm())
    if cos < 0.99:
        assert abs(ab - math.degrees(math.acos(cos))) < 1e-9


@settings(max_examples=40, deadline=None)
@given(seed=_seeds, d=st.integers(3, 300), eps=st.floats(1e-7, 1e-2))
def test_small_angles_are_resolved(seed, d, eps):
    """A rotation by ``eps`` radians reads as ``eps``, also where arccos cannot tell it from 0."""
    a = _vec(seed, d, torch.float64)
    a = a / a.norm()
    q = _vec(seed + 7, d, torch.float64)
    q = q - (q @ a) * a
    q = q / q.norm()
    b = math.cos(eps) * a + math.sin(eps) * q
    assert abs(float(acute_angle_deg(a, b)) - math.degrees(eps)) < 1e-6 * math.degrees(eps) + 1e-12


def test_orthogonal_batched_and_zero_vectors():
    e = torch.eye(4)
    assert torch.equal(acute_angle_deg(e, e[0]), torch.tensor([0.0, 90.0, 90.0, 90.0], dtype=torch.float64))
    assert math.isnan(float(acute_angle_deg(torch.zeros(4), e[1])))
