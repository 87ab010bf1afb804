"""The public API a notebook can live in: every analysis exported at the top level, ``__all__`` exact.

Every public function and class of every ``sd_lens.analyses.*`` module (its ``__all__``, or its names
without a leading underscore when it has none) is either exported by ``sd_lens`` or listed in
:data:`NOT_TOP_LEVEL` with the reason it stays in its module. A new analysis therefore fails here
until its function and result are exported (or it says why not).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing

import sd_lens
import sd_lens.analyses

_PASS = "one pass of its analysis, shared by the pipeline (the analysis itself is exported)"
_PART = "a part of an exported result (reached through it)"
_HELPER = "a building block of its module's analysis, for who extends it"
_ENGINE = "the causal experiment engine, for who writes a causal experiment (sd_lens.analyses.causal)"

#: public names of sd_lens.analyses.* that are deliberately not top-level, with the reason
NOT_TOP_LEVEL: dict[str, str] = {
    "activation_outliers_pass": _PASS,
    "attention_sinks_pass": _PASS,
    "defect_channels": _HELPER,
    "token_class": _HELPER,
    "HeadPattern": _PART,
    "SinkKey": _PART,
    "outlier_scores": _HELPER,
    "sink_head_view": "a view's arguments; the report draws it (sd_lens.report)",
    "sink_scores": _HELPER,
    "LeverCandidate": _PART,
    "SublayerComponents": _PART,
    "explosion_set": _HELPER,
    "lever_candidates": _HELPER,
    "lever_sites": _HELPER,
    "sublayer_components": _HELPER,
    "trigger_tokens": "the trigger text's tokens as verify_trigger reads them",
    "ControlStats": _ENGINE,
    "Sweep": _ENGINE,
    "Trial": _ENGINE,
    "attached_hooks": _ENGINE,
    "random_direction": _ENGINE,
    "sweep": _ENGINE,
    "remove_defect": _HELPER,
    "super_weight_findings": _HELPER,
    "zero_like_massive": _HELPER,
    "Episode": _PART,
    "find_episodes": _HELPER,
    "residual_trajectories": _HELPER,
    "carrier_order": _HELPER,
    "DefectPair": _PART,
    "compare_defects": _HELPER,
    "BlockStep": _PART,
    "ChannelUse": _PART,
    "NeuronContribution": _PART,
    "SinkSpread": _PART,
    "SpreadHead": _PART,
    "ffn_output": _HELPER,
    "neuron_contributions": _HELPER,
    "DefectCheck": _PART,
    "Intervention": _PART,
    "Patch": _PART,
    "added_value_map": _HELPER,
    "effective_input": _HELPER,
    "jacobian_at": _HELPER,
    "row_edits": _HELPER,
    "subtract": _HELPER,
    "visible_channels": _HELPER,
    "MassiveMeans": _PART,
    "emergence_targets": _HELPER,
    "held_out_corpus": _HELPER,
    "intervention_hooks": "forward hooks of the interventions (sd_lens.interventions has the general ones)",
    "massive_mask": _HELPER,
    "massive_means": _HELPER,
    "set_entries": _HELPER,
    "set_massive": _HELPER,
    "kl_sum": "a logits reducer (sums of KL), shared with the super-weight search",
    "nll_sum": "a logits reducer (sums of NLL), shared with the super-weight search",
    "PrefixTrial": _PART,
    "arrange_context": _HELPER,
    "find_outlier_tokens": _HELPER,
    "lower_median": _HELPER,
    "prefix_candidates": _HELPER,
    "token_maxima": _HELPER,
    "closure": "one text's closure; residual_identity is the analysis",
    "ChannelRotation": _PART,
    "RotationRun": _PART,
    "fixing_ones": _HELPER,
    "hadamard_matrix": _HELPER,
    "random_orthogonal": _HELPER,
    "randomized_hadamard": _HELPER,
    "rotation_hooks": _HELPER,
    "top_singular": _HELPER,
    "BlockSpectrum": _PART,
    "nearest_eigenvector": _HELPER,
    "Consistency": _PART,
    "Emergence": _PART,
    "Verification": _PART,
    "consistency": _HELPER,
    "down_entry": _HELPER,
    "zero_entry_hooks": _HELPER,
    "zeroed": _HELPER,
    "DownProjOutliers": _PART,
    "NormScales": _PART,
    "norm_tolerance": "rotation_check's tolerance for a norm from the dtype (a building block)",
}


def public_analysis_names() -> dict[str, str]:
    """``{name: module}`` of every public function and class defined in an ``sd_lens.analyses`` module."""
    out = {}
    for info in pkgutil.walk_packages(sd_lens.analyses.__path__, prefix="sd_lens.analyses."):
        mod = importlib.import_module(info.name)
        names = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
        for name in names:
            obj = getattr(mod, name)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == mod.__name__:
                out[name] = mod.__name__
    return out


def test_every_analysis_is_exported_or_says_why_not():
    public = public_analysis_names()
    missing = {n: m for n, m in public.items() if n not in sd_lens.__all__ and n not in NOT_TOP_LEVEL}
    assert not missing, f"export these in sd_lens/__init__.py or list them in NOT_TOP_LEVEL with a reason: {missing}"
    stale = sorted(n for n in NOT_TOP_LEVEL if n not in public or n in sd_lens.__all__)
    assert not stale, f"NOT_TOP_LEVEL lists names that are gone or exported: {stale}"


def test_all_is_exact():
    """``__all__`` has no duplicate, every name resolves, and every public top-level object is in it."""
    assert len(sd_lens.__all__) == len(set(sd_lens.__all__))
    for name in sd_lens.__all__:
        assert getattr(sd_lens, name) is not None, name
    public = {
        n for n, o in vars(sd_lens).items()
        if not n.startswith("_") and not inspect.ismodule(o) and n not in ("annotations",)
    }
    assert public <= set(sd_lens.__all__), sorted(public - set(sd_lens.__all__))


def test_the_main_analyses_are_a_notebook_away():
    """The channel lens the issue named (and the mask) are top-level functions."""
    for name in ("activation_outliers", "attention_sinks", "component_attribution", "find_lever", "life_cycle",
                 "local_causal_checks", "weight_outliers", "outlier_intervention", "carrier_mask", "tiny_model",
                 "defects_summary", "defect_sentences"):
        assert callable(getattr(sd_lens, name)), name


def test_models_are_typed():
    """``load_model`` and ``tiny_model`` return a HookedModel, not ``Any``."""
    for fn in (sd_lens.load_model, sd_lens.tiny_model):
        assert typing.get_type_hints(fn)["return"] is sd_lens.HookedModel, fn.__name__
