"""sd_lens: find, explain and causally verify singular defects (high-norm tokens) of LLMs.

A TransformerLens plugin: every analysis is a function of a model (and a block) returning a
typed result; every intervention is a forward hook you can pass to ``run_with_hooks``.
"""

from sd_lens.analyses.activation_outliers import ActivationOutliers, OutlierEntry, activation_outliers
from sd_lens.analyses.attention_matrix import AttentionMatrix, attention_matrix
from sd_lens.analyses.attention_sinks import AttentionSinks, SinkHead, attention_sinks
from sd_lens.analyses.attribution import ComponentAttribution, DefectAttribution, component_attribution
from sd_lens.analyses.carriers import carrier_mask
from sd_lens.analyses.causal import CausalCheck, verify_trigger
from sd_lens.analyses.causal.jacobian import LocalJacobian, local_jacobian
from sd_lens.analyses.causal.lever import Lever, LeverReport, find_lever
from sd_lens.analyses.causal.local_checks import LocalCausalReport, local_causal_checks
from sd_lens.analyses.causal.massive import OutlierIntervention, outlier_intervention
from sd_lens.analyses.causal_ranking import CausalRanking, RankedFinding, causal_ranking
from sd_lens.analyses.causal_score import CausalScore, ranked
from sd_lens.analyses.corpus_check import CorpusSummary, corpus_summary
from sd_lens.analyses.defects import Defect, DefectReport, find_defects
from sd_lens.analyses.dtype_check import DtypeCheck, dtype_check
from sd_lens.analyses.explosion import (
    ExplosionSubspace,
    NoninitialPathway,
    VocabCoefficients,
    explosion_subspace,
    noninitial_pathway,
    vocab_coefficients,
)
from sd_lens.analyses.ffn_fit import FFNFit, fit_ffn
from sd_lens.analyses.ffn_inputs import collect_ffn_inputs
from sd_lens.analyses.life_cycle import DefectLifeCycle, LifeCycle, life_cycle
from sd_lens.analyses.metrics import Perplexity, edited_perplexities, perplexity
from sd_lens.analyses.norm_table import NormTable, first_token_norms
from sd_lens.analyses.outlier_tokens import OutlierToken, OutlierTokens, outlier_tokens
from sd_lens.analyses.probe import NormProbe, probe_norms
from sd_lens.analyses.residual_identity import Closure, ResidualIdentity, residual_identity
from sd_lens.analyses.rotation_check import DefectRotation, RotationCheck, rotation_check
from sd_lens.analyses.spectra import (
    BlockLinearization,
    DecayCheck,
    LayerSpectra,
    decay_check,
    layer_spectra,
    linearize_block,
)
from sd_lens.analyses.state_directions import StateClusters, cluster_state_directions
from sd_lens.analyses.super_weights import DefectSuperWeights, SuperWeight, SuperWeights, super_weights
from sd_lens.analyses.text_run import TextRun, run_text
from sd_lens.analyses.weight_outliers import WeightOutliers, weight_outliers
from sd_lens.corpus import default_corpus, read_texts
from sd_lens.errors import (
    InputError,
    MissingDependencyError,
    NonFiniteActivationError,
    SdLensError,
    UnknownModelError,
    UnsupportedArchitectureError,
)
from sd_lens.interventions import (
    ablation_hooks,
    intervene,
    patching_hooks,
    project_out,
    set_coefficient,
)
from sd_lens.models.dry_run import DryRun, dry_run
from sd_lens.models.loading import DEFAULT_MODEL, cache_root, known_models, load_model
from sd_lens.models.registry import Family, get_family, register_family, registered_families
from sd_lens.models.synthetic import ModelShape, PlantedDefect, synthetic_model
from sd_lens.models.tiny import tiny_model
from sd_lens.models.view import BlockView, ModelOrView, ModelView, model_view
from sd_lens.pipeline import AnalysisConfig, AnalysisResult, DefectFindings, Trigger, run_analysis
from sd_lens.report.prose import defect_sentences, defects_summary
from sd_lens.types import HookedModel

__version__ = "0.1.0"

__all__ = [
    "AnalysisConfig",
    "AnalysisResult",
    "HookedModel",
    "ModelOrView",
    "AttentionMatrix",
    "CausalCheck",
    "DecayCheck",
    "Defect",
    "DefectReport",
    "FFNFit",
    "LayerSpectra",
    "NormProbe",
    "ablation_hooks",
    "attention_matrix",
    "collect_ffn_inputs",
    "decay_check",
    "default_corpus",
    "explosion_subspace",
    "find_defects",
    "fit_ffn",
    "intervene",
    "layer_spectra",
    "linearize_block",
    "noninitial_pathway",
    "patching_hooks",
    "probe_norms",
    "project_out",
    "read_texts",
    "run_analysis",
    "set_coefficient",
    "verify_trigger",
    "vocab_coefficients",
    "DEFAULT_MODEL",
    "BlockView",
    "Family",
    "InputError",
    "MissingDependencyError",
    "ModelView",
    "NonFiniteActivationError",
    "SdLensError",
    "UnknownModelError",
    "UnsupportedArchitectureError",
    "cache_root",
    "get_family",
    "known_models",
    "load_model",
    "model_view",
    "register_family",
    "registered_families",
    "OutlierTokens",
    "outlier_tokens",
    "ResidualIdentity",
    "residual_identity",
    "RotationCheck",
    "rotation_check",
    "CausalRanking",
    "causal_ranking",
    "SuperWeights",
    "super_weights",
    "ModelShape",
    "PlantedDefect",
    "synthetic_model",
    "DryRun",
    "dry_run",
    "ActivationOutliers",
    "OutlierEntry",
    "activation_outliers",
    "AttentionSinks",
    "SinkHead",
    "attention_sinks",
    "ComponentAttribution",
    "DefectAttribution",
    "Lever",
    "LeverReport",
    "component_attribution",
    "find_lever",
    "carrier_mask",
    "RankedFinding",
    "CausalScore",
    "ranked",
    "CorpusSummary",
    "corpus_summary",
    "DtypeCheck",
    "dtype_check",
    "ExplosionSubspace",
    "NoninitialPathway",
    "VocabCoefficients",
    "DefectLifeCycle",
    "LifeCycle",
    "life_cycle",
    "LocalCausalReport",
    "LocalJacobian",
    "local_causal_checks",
    "local_jacobian",
    "NormTable",
    "first_token_norms",
    "OutlierIntervention",
    "Perplexity",
    "outlier_intervention",
    "perplexity",
    "edited_perplexities",
    "OutlierToken",
    "Closure",
    "DefectRotation",
    "BlockLinearization",
    "StateClusters",
    "cluster_state_directions",
    "DefectSuperWeights",
    "SuperWeight",
    "TextRun",
    "run_text",
    "WeightOutliers",
    "weight_outliers",
    "tiny_model",
    "DefectFindings",
    "Trigger",
    "defect_sentences",
    "defects_summary",
]
