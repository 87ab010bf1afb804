"""The built-in late stages of :func:`~sd_lens.pipeline.run_analysis` and their JSON keys, one registration each.

First the JSON's keys, in the order ``to_dict`` writes them (the channel lens's results in one
``"channels"`` object), then the stages in the order they run. The two orders differ (the residual
identity runs before the attribution it checks, but is written last of the channels), so the built-ins
register them apart; a new analysis registers both in one call (:func:`~sd_lens.stages.register_analysis`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from sd_lens.analyses.activation_outliers import ActivationOutliers, activation_outliers_pass
from sd_lens.analyses.attention_sinks import AttentionSinks, attention_sinks_pass
from sd_lens.analyses.attribution import component_attribution
from sd_lens.analyses.causal.lever import find_lever
from sd_lens.analyses.causal.local_checks import local_causal_checks
from sd_lens.analyses.causal.massive import outlier_intervention
from sd_lens.analyses.causal_ranking import CausalRanking, causal_ranking, super_weight_findings
from sd_lens.analyses.life_cycle import life_cycle
from sd_lens.analyses.outlier_tokens import outlier_tokens
from sd_lens.analyses.residual_identity import residual_identity
from sd_lens.analyses.rotation_check import rotation_check
from sd_lens.analyses.super_weights import SuperWeights, super_weights
from sd_lens.analyses.weight_outliers import weight_outliers
from sd_lens.config import AnalysisConfig
from sd_lens.runtime.engine import run_passes
from sd_lens.runtime.tokens import tokenize
from sd_lens.stages.registry import (
    ResultEntry,
    Stage,
    StageInputs,
    register_analysis,
    register_result,
    registered_stage,
)


def _defect_channels(outliers: ActivationOutliers, result: Any) -> dict[str, Any]:
    """Each massive channel's defect (the one whose direction weighs most on it) and that weight."""
    return {
        str(c): {"defect": lab, "share": round(share, 4)}
        for c, (lab, share) in outliers.channel_defects(result.defects).items()
    }


# ------------------------------------------------------------------------------------------------
# the JSON's keys, in order
# ------------------------------------------------------------------------------------------------
for _entry in (
    ResultEntry("outliers", "activation_outliers", "channels"),
    ResultEntry("outliers", "defect_channels", "channels", _defect_channels),
    ResultEntry("weights", "weight_outliers", "channels"),
    ResultEntry("sinks", "attention_sinks", "channels"),
    ResultEntry("attribution", "attribution", "channels"),
    ResultEntry("lever", "lever", "channels"),
    ResultEntry("life", "life_cycle", "channels"),
    ResultEntry("local", "local_checks", "channels"),
    ResultEntry("interventions", "interventions", "channels"),
    ResultEntry("residual_identity", "residual_identity", "channels"),
    ResultEntry("quantization", "quantization"),
    ResultEntry("outlier_tokens", "outlier_tokens"),
    ResultEntry("rotation", "rotation_check"),
    ResultEntry("ranking", "causal_ranking"),
    ResultEntry("super_weights", "super_weights"),
):
    register_result(_entry)


# ------------------------------------------------------------------------------------------------
# the stages, in run order
# ------------------------------------------------------------------------------------------------
def _outliers_and_sinks(i: StageInputs) -> tuple[ActivationOutliers, AttentionSinks]:
    """Massive activations and attention sinks read different hooks of the same forwards: one stream."""
    cfg = i.config
    tok = tokenize(i.model, i.texts, max_tokens_per_text=cfg.max_tokens_per_text)
    high_rows = torch.nonzero((i.probe.ratio("resid_post") > cfg.threshold).any(dim=1)).flatten()
    with warnings.catch_warnings():  # the norm probe has already said how many texts were cut
        warnings.filterwarnings("ignore", message=".*texts were cut to their first.*")
        out_pass = activation_outliers_pass(i.model, tok)
        sink_pass = attention_sinks_pass(i.model, tok, epsilon=cfg.sink_epsilon, high_norm_rows=high_rows)
    run_passes(i.model, [out_pass, sink_pass], batch_size=cfg.batch_size,
               progress=cfg.progress and "massive activations and attention sinks")
    return out_pass.result(), sink_pass.result()


def _residual_identity(i: StageInputs) -> Any:
    """Before attributing to sublayers: do the hooks add up to what each block adds (on a few texts)?"""
    cfg = i.config
    return residual_identity(i.model, i.texts[: cfg.batch_size], batch_size=cfg.batch_size,
                             max_tokens_per_text=cfg.max_tokens_per_text)


def _life_cycle(i: StageInputs) -> Any:
    return life_cycle(i.model, i.defects, i.probe, i.result("outliers"), i.result("weights"), i.result("sinks"),
                      i.result("attribution"), batch_size=i.config.batch_size)


def _interventions(i: StageInputs) -> Any:
    cfg = i.config
    return outlier_intervention(i.model, i.result("outliers"), i.held_out, texts=i.texts, batch_size=cfg.batch_size,
                                max_tokens_per_text=cfg.max_tokens_per_text)


def _quantization(i: StageInputs) -> Any:
    """The W8A8 experiment: its computation comes from :mod:`sd_lens.quantize`, which sits above the pipeline."""
    return registered_stage("quantization")(i.model, i.texts, i.held_out, report=i.defects, config=i.config)


def _outlier_tokens(i: StageInputs) -> Any:
    cfg = i.config
    return outlier_tokens(i.model, i.texts, eta=cfg.outlier_eta, defects=i.defects, batch_size=cfg.batch_size,
                          max_tokens_per_text=cfg.max_tokens_per_text)


def _rotation(i: StageInputs) -> Any:
    cfg = i.config
    return rotation_check(i.model, i.defects, i.texts, seed=cfg.seed, batch_size=cfg.batch_size,
                          max_tokens_per_text=cfg.max_tokens_per_text)


def _ranking(i: StageInputs) -> Any:
    cfg = i.config
    return causal_ranking(i.model, i.defects, i.result("outliers"), i.held_out, texts=i.texts, seed=cfg.seed,
                          inert_kl=cfg.inert_kl, batch_size=cfg.batch_size, max_tokens_per_text=cfg.max_tokens_per_text)


def _super_weights(i: StageInputs) -> tuple[SuperWeights, CausalRanking | None]:
    """The super weights, and the causal ranking (when it ran) with them ranked in: every finding in one order."""
    cfg = i.config
    found = super_weights(i.model, i.defects, i.probe, i.held_out, n_seeds=cfg.super_weight_seeds, seed=cfg.seed,
                          batch_size=cfg.batch_size, max_tokens_per_text=cfg.max_tokens_per_text)
    ranking = i.result("ranking")
    return found, None if ranking is None else ranking.including(super_weight_findings(found))


def _channels(cfg: AnalysisConfig) -> bool:
    return bool(cfg.channels)


for _stage in (
    Stage("outliers_and_sinks", _outliers_and_sinks, ("outliers", "sinks"), _channels),
    Stage("weight_outliers", lambda i: weight_outliers(i.view), ("weights",), _channels),
    Stage("residual_identity", _residual_identity, ("residual_identity",), _channels),
    Stage("attribution", lambda i: component_attribution(i.model, i.defects, i.probe, batch_size=i.config.batch_size),
          ("attribution",), _channels),
    Stage("lever", lambda i: find_lever(i.model, i.defects, i.result("attribution"), seed=i.config.seed),
          ("lever",), _channels, needs=("attribution",)),
    Stage("life_cycle", _life_cycle, ("life",), _channels,
          needs=("outliers_and_sinks", "weight_outliers", "attribution")),
    Stage("local_checks",
          lambda i: local_causal_checks(i.model, i.defects, i.probe, i.result("attribution"), seed=i.config.seed),
          ("local",), lambda cfg: cfg.local_checks, needs=("attribution",)),
    Stage("interventions", _interventions, ("interventions",), lambda cfg: cfg.interventions,
          needs=("outliers_and_sinks",)),
    Stage("quantization", _quantization, ("quantization",), lambda cfg: cfg.quantize),
    Stage("outlier_tokens", _outlier_tokens, ("outlier_tokens",), lambda cfg: cfg.outlier_tokens),
    Stage("rotation_check", _rotation, ("rotation",), lambda cfg: cfg.rotation),
    Stage("causal_ranking", _ranking, ("ranking",), lambda cfg: cfg.causal_ranking),
    Stage("super_weights", _super_weights, ("super_weights",), lambda cfg: cfg.super_weights, revises=("ranking",)),
):
    register_analysis(_stage)
