"""sd_lens: find, explain and causally verify singular defects (high-norm tokens) of LLMs.

A TransformerLens plugin: every analysis is a function of a model (and a block) returning a
typed result; every intervention is a forward hook you can pass to ``run_with_hooks``.
"""

from sd_lens.analyses.attention_matrix import AttentionMatrix, attention_matrix
from sd_lens.analyses.causal import CausalCheck, verify_trigger
from sd_lens.analyses.causal_ranking import CausalRanking, causal_ranking
from sd_lens.analyses.defects import Defect, DefectReport, find_defects
from sd_lens.analyses.explosion import (
    explosion_subspace,
    noninitial_pathway,
    vocab_coefficients,
)
from sd_lens.analyses.ffn_fit import FFNFit, fit_ffn
from sd_lens.analyses.ffn_inputs import collect_ffn_inputs
from sd_lens.analyses.outlier_tokens import OutlierTokens, outlier_tokens
from sd_lens.analyses.probe import NormProbe, probe_norms
from sd_lens.analyses.residual_identity import ResidualIdentity, residual_identity
from sd_lens.analyses.rotation_check import RotationCheck, rotation_check
from sd_lens.analyses.spectra import (
    DecayCheck,
    LayerSpectra,
    decay_check,
    layer_spectra,
    linearize_block,
)
from sd_lens.analyses.super_weights import SuperWeights, super_weights
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
from sd_lens.models.loading import DEFAULT_MODEL, cache_root, known_models, load_model
from sd_lens.models.registry import Family, get_family, register_family, registered_families
from sd_lens.models.view import BlockView, ModelOrView, ModelView, model_view
from sd_lens.pipeline import AnalysisConfig, AnalysisResult, run_analysis
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
]
