"""Comparing analysis results with stated tolerances (issue #20).

Float32 results differ in their last digits between machines, thread counts and batch sizes (summation
order), so a refactor guard that compares them exactly is not a property of the code: it fails on another
CPU. :func:`compare_json` compares two analysis JSONs (``AnalysisResult.to_dict()``) key by key:

* **integers, strings, booleans** — blocks, channels, counts, carriers (tokens), flags — exactly;
* **floats** within a tolerance chosen by the key's kind (:data:`TOLERANCES`): ``|a - b| <= rtol * max(|a|, |b|)
  + atol``. ``atol`` covers the JSON's rounding (3–4 decimals: a value that sits on a rounding boundary flips
  by one unit in the last place); ``rtol`` covers float32 reductions of a few thousand terms
  (eps 1.2e-7 x sqrt(n) ~ 1e-5) for norms, and the conditioning of what is derived from them (fitted
  coefficients, eigenvalues of a non-symmetric map, patched norms) for the rest.

What the tolerances were set from: the bundled models' default analyses with 1 and 2 threads and batch sizes
16, 8 and 5 differ from the committed files by at most one unit in the JSON's last digit (figures in
``tests/integration/test_same_numbers.py``): 0.1 of the angle tolerance, 0.05 of the norm tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Tolerance:
    """``|a - b| <= rtol * max(|a|, |b|) + atol``."""

    rtol: float
    atol: float


#: by the kind of a float key (see :func:`kind_of`)
TOLERANCES: dict[str, Tolerance] = {
    # angles in degrees: absolute (an angle near 90 deg is as precise as one near 0). The spectra's iterative
    # solver accepts a singular vector within 2e-4 rad (0.011 deg) of the exact one (docs/analyses.md), so an
    # angle between two of them may move by twice that with the machine: 0.05 deg, the agreement issue #21 asks
    "angle": Tolerance(rtol=0.0, atol=0.05),
    # norms and norm ratios: float32 sums of squares over d_model, averaged over tokens
    "norm": Tolerance(rtol=1e-4, atol=2e-3),
    # singular values, eigenvalues, R^2, coefficients, anything else
    "other": Tolerance(rtol=1e-3, atol=2e-3),
}

#: keys whose values are wall-clock figures, never compared
IGNORED_KEYS = frozenset({"timings_s"})


def kind_of(key: str) -> str:
    """The tolerance kind of a JSON key: ``angle`` (``*_deg``), ``norm`` (``*norm*``, ``*ratio``) or ``other``."""
    if key.endswith("_deg"):
        return "angle"
    if "norm" in key or key.endswith("ratio"):
        return "norm"
    return "other"


@dataclass
class Comparison:
    """What :func:`compare_json` found: the differences beyond tolerance and the largest one of each kind."""

    problems: list[str] = field(default_factory=list)
    #: kind -> (largest difference measured in units of its tolerance, path where it was)
    worst: dict[str, tuple[float, str]] = field(default_factory=dict)

    def largest(self) -> dict[str, str]:
        return {k: f"{v:.3g} of tol at {p}" for k, (v, p) in sorted(self.worst.items())}


def _float_pair(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (
        isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool)
        and (isinstance(a, float) or isinstance(b, float))
    )


def compare_json(
    expected: Any, actual: Any, tolerances: dict[str, Tolerance] | None = None, *, path: str = "", key: str = ""
) -> Comparison:
    """Compare two JSON values; integers and strings exactly, floats within ``tolerances`` by key kind."""
    tol = TOLERANCES if tolerances is None else {**TOLERANCES, **tolerances}
    out = Comparison()
    _walk(expected, actual, tol, path, key, out)
    return out


def _walk(a: Any, b: Any, tol: dict[str, Tolerance], path: str, key: str, out: Comparison) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) ^ set(b)):
            if k not in IGNORED_KEYS:
                out.problems.append(f"{path}.{k}: only in {'the expected' if k in a else 'the actual'} result")
        for k in sorted(set(a) & set(b)):
            if k not in IGNORED_KEYS:
                _walk(a[k], b[k], tol, f"{path}.{k}", k, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.problems.append(f"{path}: {len(a)} items expected, {len(b)} found")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, tol, f"{path}[{i}]", key, out)
    elif _float_pair(a, b):
        if math.isnan(a) or math.isnan(b):
            if not (math.isnan(a) and math.isnan(b)):
                out.problems.append(f"{path}: {a!r} != {b!r}")
            return
        kind = kind_of(key)
        t = tol[kind]
        bound = t.rtol * max(abs(a), abs(b)) + t.atol
        diff = abs(a - b)
        units = diff / bound if bound > 0 else (0.0 if diff == 0 else math.inf)
        if units > out.worst.get(kind, (-1.0, ""))[0]:
            out.worst[kind] = (units, path)
        if diff > bound:
            out.problems.append(f"{path}: {a!r} != {b!r} (|diff| {diff:.3g} > {bound:.3g}, {kind} tolerance)")
    elif a != b or type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        out.problems.append(f"{path}: {a!r} != {b!r}")
