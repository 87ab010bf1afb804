"""The local Jacobian and the causal checks from it: the old import path, kept.

The math lives in :mod:`sd_lens.analyses.causal.jacobian` and the checks (interventions at the FFN
input against matched random controls, patching; a specialisation of the causal experiment engine) in
:mod:`sd_lens.analyses.causal.local_checks`; every name this module had is re-exported here unchanged.
"""

from __future__ import annotations

from sd_lens.analyses.causal.jacobian import (
    LocalJacobian,
    added_value_map,
    effective_input,
    jacobian_at,
    local_jacobian,
    visible_channels,
)
from sd_lens.analyses.causal.local_checks import (
    KINDS,
    DefectCheck,
    Intervention,
    Kind,
    LocalCausalReport,
    Patch,
    Spec,
    local_causal_checks,
    row_edits,
    subtract,
)

__all__ = [
    "KINDS",
    "DefectCheck",
    "Intervention",
    "Kind",
    "LocalCausalReport",
    "LocalJacobian",
    "Patch",
    "Spec",
    "added_value_map",
    "effective_input",
    "jacobian_at",
    "local_causal_checks",
    "local_jacobian",
    "row_edits",
    "subtract",
    "visible_channels",
]
