"""Interventions on massive activations, measured by perplexity: the old import path, kept.

The analysis lives in :mod:`sd_lens.analyses.causal.massive` (one specialisation of the causal
experiment engine) and the perplexity in :mod:`sd_lens.analyses.metrics`; every name this module had is
re-exported here unchanged.
"""

from __future__ import annotations

from sd_lens.analyses.causal.massive import (
    MODES,
    MassiveMeans,
    Mode,
    OutlierIntervention,
    emergence_targets,
    intervention_hooks,
    massive_mask,
    massive_means,
    outlier_intervention,
    set_entries,
    set_massive,
)
from sd_lens.analyses.metrics import LOGITS_HOOK, Perplexity, held_out_corpus, kl_sum, nll_sum, perplexity

__all__ = [
    "LOGITS_HOOK",
    "MODES",
    "MassiveMeans",
    "Mode",
    "OutlierIntervention",
    "Perplexity",
    "emergence_targets",
    "held_out_corpus",
    "intervention_hooks",
    "kl_sum",
    "massive_mask",
    "massive_means",
    "nll_sum",
    "outlier_intervention",
    "perplexity",
    "set_entries",
    "set_massive",
]
