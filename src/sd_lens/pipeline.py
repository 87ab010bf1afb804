"""One call for everything: probe, defects, spectra, decay checks, explosion subspace, causal checks.

:func:`run_analysis` composes the analyses of the other modules and returns an
:class:`AnalysisResult` holding each typed result, plus :meth:`AnalysisResult.to_dict`, the JSON
contract of ``sd-lens analyze``. Every field is a function of (model, texts, options, seed) except
``timings_s``.

Reference: Wang et al., *Demystifying Singular Defects in Large Language Models* (ICML 2025),
observations (i)–(iv).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor

from sd_lens.analyses.activation_outliers import ActivationOutliers, activation_outliers_pass
from sd_lens.analyses.attention_sinks import AttentionSinks, attention_sinks_pass
from sd_lens.analyses.attribution import ComponentAttribution, component_attribution
from sd_lens.analyses.causal import CausalCheck, trigger_tokens, verify_trigger
from sd_lens.analyses.causal.lever import LeverReport, find_lever
from sd_lens.analyses.causal.local_checks import LocalCausalReport, local_causal_checks
from sd_lens.analyses.causal.massive import OutlierIntervention, outlier_intervention
from sd_lens.analyses.causal_ranking import CausalRanking, causal_ranking, super_weight_findings
from sd_lens.analyses.causal_score import INERT_KL
from sd_lens.analyses.corpus_check import CorpusSummary, corpus_summary
from sd_lens.analyses.defects import DefectReport, find_defects
from sd_lens.analyses.dtype_check import DtypeCheck, dtype_check
from sd_lens.analyses.explosion import (
    ExplosionSubspace,
    NoninitialPathway,
    VocabCoefficients,
    explosion_subspace,
    noninitial_pathway,
    vocab_coefficients,
)
from sd_lens.analyses.ffn_fit import METHODS, Method
from sd_lens.analyses.ffn_inputs import collect_ffn_inputs
from sd_lens.analyses.life_cycle import LifeCycle, life_cycle
from sd_lens.analyses.outlier_tokens import DEFAULT_ETA, OutlierTokens, outlier_tokens
from sd_lens.analyses.probe import NormProbe, probe_norms
from sd_lens.analyses.residual_identity import ResidualIdentity, residual_identity
from sd_lens.analyses.rotation_check import RotationCheck, rotation_check
from sd_lens.analyses.spectra import (
    DecayCheck,
    LayerSpectra,
    decay_check,
    layer_spectra,
)
from sd_lens.analyses.super_weights import SuperWeights, super_weights
from sd_lens.analyses.weight_outliers import WeightOutliers, weight_outliers
from sd_lens.corpus import held_out_texts, read_texts
from sd_lens.errors import InputError, SdLensError
from sd_lens.models.metadata import FLOAT16_WARNING, model_dtype, model_name
from sd_lens.models.view import model_view
from sd_lens.outputs import atomic_write_text
from sd_lens.runtime.engine import run_passes
from sd_lens.runtime.lock import model_lock
from sd_lens.runtime.precision import DTYPES, check_memory, forward_dtype
from sd_lens.runtime.tokens import tokenize
from sd_lens.types import HookedModel

SCHEMA_VERSION = 2
_log = logging.getLogger(__name__)
DEFAULT_TRIGGER_TEXT = "The cat sat on the mat because it was warm."


def _option(default: Any, help: str, **cli: Any) -> Any:
    """A config field; ``help`` and ``cli`` (argparse overrides such as ``flag``) drive the CLI."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class AnalysisConfig:
    """Every option of :func:`run_analysis`, checked when constructed.

    The ``sd-lens analyze`` / ``report`` flags are generated from these fields
    (:func:`sd_lens.cli.add_config_arguments`): a new option is one field here.
    """

    seed: int = _option(0, "seeds every random choice (Monte-Carlo fit, random control direction)")
    fit_method: Method = _option("gaussian", "FFN linearisation for the spectra", flag="--fit")
    vocab: bool = _option(False, "also sweep the whole vocabulary at each explosion block (slow)")
    vocab_limit: int | None = _option(None, "sweep only the first N token ids")
    trigger_text: str = _option(DEFAULT_TRIGGER_TEXT, "the text of the causal checks")
    threshold: float = _option(4.0, "high-norm threshold, in multiples of the block's median norm")
    batch_size: int = _option(16, "texts per forward pass of the norm probe")
    max_tokens_per_text: int | None = _option(64, "truncate each text to this many tokens")
    progress: bool = _option(False, "show progress bars")
    channels: bool = _option(
        False,
        "also the channel-level lens: massive activations, weight and norm-scale outliers, attention sinks, "
        "per-block attention/FFN attribution and a lever",
    )
    sink_epsilon: float = _option(0.3, "a head sinks on a key that later queries attend to more than this on average")
    local_checks: bool = _option(
        False,
        "also linearise each defect's FFNs where its carrier is (local Jacobian) and run causal checks from it "
        "and from the Gaussian fit, on the defect's own carriers, with matched random controls (slow)",
    )
    interventions: bool = _option(
        False,
        "also set the massive activations to zero and to their mean at the block where they emerge (Sun et al.) "
        "and measure perplexity and KL to the clean model on held-out text (slow)",
    )
    quantize: bool = _option(
        False,
        "also the W8A8 quantization experiment (Wang et al. 2025, sec. 6): perplexity of held-out text under "
        "fake-quantized RTN, per-token and SmoothQuant, with the defect blocks' down-projection kept in float "
        "against random and all blocks kept (slow; sd-lens quantize runs it alone)",
    )
    forward_dtype: Literal["float32", "bfloat16", "float16"] | None = _option(
        None,
        "run the model's forwards in this dtype for the analysis (e.g. float32 on a float16 or bfloat16 model: "
        "the weights are cast and restored exactly afterwards; needs their bytes once more); default: the "
        "model's own dtype",
    )
    exact_spectra: bool = _option(
        False,
        "compute the spectra's leading singular triplets and the decay checks' eigenvalues by exact float64 "
        "decompositions (slow; the default is a residual-checked float32 iteration that falls back to them "
        "where it cannot certify its answer, agreeing within 0.05 deg and 1e-4 relative)",
    )
    dtype_check: bool = _option(
        True,
        "on a float16 or bfloat16 forward, also run the norm probe in float32 (weights cast and restored) and say "
        "which defects float32 does not have, or has and this dtype misses",
    )
    outlier_tokens: bool = _option(
        False,
        "also PrefixQuant's outlier tokens (a token whose largest |value| at the FFN down-projection input is more "
        "than --outlier-eta times the median over its text's tokens), which defects they carry, and the prefixes "
        "(BOS, the most frequent outlier token, '.', newline, PrefixQuant's) that take them out of the text, with "
        "the perplexity each costs",
    )
    outlier_eta: float = _option(DEFAULT_ETA, "the outlier-token threshold on max|h| over its median (PrefixQuant: 64)")
    rotation: bool = _option(
        False,
        "also the rotation check (QuaRot/SpinQuant): run the model in a random orthogonal and a randomized Hadamard "
        "residual basis (hooks, logits unchanged) and report each defect's norm ratio and each massive channel's "
        "max/median before and after: defects survive, channels vanish",
    )
    causal_ranking: bool = _option(
        False,
        "also score every defect and massive activation by removing it (perplexity ratio and KL on held-out text, "
        "against matched random controls) and rank them; below --inert-kl a finding is 'massive but inert' (slow)",
    )
    inert_kl: float = _option(INERT_KL, "KL (nats per token) below which a removed finding is called 'massive but inert'")
    super_weights: bool = _option(
        False,
        "also find each defect's super weights (Yu et al. 2024): the down-projection entries that write and cancel "
        "its channel on its carriers (ranked after any post-FFN norm's gain), searched iteratively, checked against "
        "the defect's channel and blocks, and verified by perplexity and KL on held-out text against zeroing random "
        "same-size entries and against restoring the activation (slow)",
    )
    super_weight_seeds: int = _option(5, "random same-magnitude entries zeroed as the super weights' control")

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> InputError:
            return InputError(f"{name}={getattr(self, name)!r}: {why}")

        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise bad("seed", "give an integer in 0..2**63-1")
        if self.fit_method not in METHODS:
            raise bad("fit_method", f"choose one of {', '.join(METHODS)}")
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold) and self.threshold > 1):
            raise bad("threshold", "give a finite multiple of the median norm above 1 (the default is 4)")
        for name in ("batch_size", "vocab_limit", "max_tokens_per_text"):
            value = getattr(self, name)
            if value is None and name != "batch_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "give a positive integer" + ("" if name == "batch_size" else " (or None for no limit)"))
        seeds = self.super_weight_seeds
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise bad("super_weight_seeds", "give a positive integer (the default is 5)")
        if not isinstance(self.trigger_text, str) or not self.trigger_text.strip():
            raise bad("trigger_text", "give a non-empty text")
        if self.forward_dtype is not None and self.forward_dtype not in DTYPES:
            raise bad("forward_dtype", f"choose one of {', '.join(DTYPES)} (or None for the model's own dtype)")
        eps = self.sink_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and 0 < eps < 1):
            raise bad("sink_epsilon", "give a mean attention between 0 and 1 (the default is 0.3)")
        eta = self.outlier_eta
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (math.isfinite(eta) and eta > 0):
            raise bad("outlier_eta", "give a positive ratio (PrefixQuant's is 64)")
        ikl = self.inert_kl
        if isinstance(ikl, bool) or not isinstance(ikl, (int, float)) or not (math.isfinite(ikl) and ikl > 0):
            raise bad("inert_kl", f"give a positive number of nats (the default is {INERT_KL})")

    @property
    def needs_unfolded_weights(self) -> bool:
        """Whether a model should be loaded without folding its norm scales into the weights: the
        ``"reference"`` FFN fit works in the reference code's convention (isotropic after the pre-FFN
        norm's scale γ₂), which a model with γ₂ folded into ``W_in`` cannot express. The command line
        loads the model unfolded when this is true; the other analyses read both conventions."""
        return self.fit_method == "reference"

    @classmethod
    def options(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True, eq=False)
class DefectFindings:
    """Everything measured about one defect."""

    predicted_angle_deg: float  # u0 of L at the explosion block vs the direction
    ffn_angle_deg: float  # u0 of F there
    closest_block: int  # block whose u0 of L is nearest the direction
    decay_checks: list[DecayCheck]
    subspace: ExplosionSubspace
    causal: CausalCheck
    vocab: VocabCoefficients | None = None
    pathway: NoninitialPathway | None = None


@dataclass(frozen=True, eq=False)
class AnalysisResult:
    """Typed results of :func:`run_analysis`; ``to_dict()`` is the JSON contract.

    Frozen: use :func:`dataclasses.replace` for a changed copy (the CLI adds its load time so).
    """

    model: str
    architecture: str
    n_layers: int
    d_model: int
    texts: list[str]
    config: AnalysisConfig
    probe: NormProbe
    defects: DefectReport
    spectra: LayerSpectra
    findings: list[DefectFindings]
    timings_s: dict[str, float] = field(default_factory=dict)
    dtype: str = "float32"
    model_dtype: str | None = None  # the weights' dtype, when the forward ran in another (forward_dtype)
    dtype_check: DtypeCheck | None = None
    quantization: Any = None  # a sd_lens.quantize.QuantizationResult: that application registers the stage
    sinks: AttentionSinks | None = None
    attribution: ComponentAttribution | None = None
    lever: LeverReport | None = None
    outliers: ActivationOutliers | None = None
    weights: WeightOutliers | None = None
    life: LifeCycle | None = None
    local: LocalCausalReport | None = None
    interventions: OutlierIntervention | None = None
    corpus: CorpusSummary | None = None
    rotation: RotationCheck | None = None
    ranking: CausalRanking | None = None
    #: stages that raised, by name (as in ``timings_s``), with the error: ``"TypeName: message"``. Their
    #: results are None; every other stage's are kept (``failed_stages`` in the JSON when not empty)
    errors: dict[str, str] = field(default_factory=dict)
    outlier_tokens: OutlierTokens | None = None
    residual_identity: ResidualIdentity | None = None
    super_weights: SuperWeights | None = None

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def fit_method(self) -> Method:
        return self.config.fit_method

    @property
    def trigger_text(self) -> str:
        return self.config.trigger_text

    def to_dict(self) -> dict[str, Any]:
        defects = []
        for d, f in zip(self.defects, self.findings):
            entry = d.to_dict()
            causal = f.causal.to_dict()
            entry.update(
                predicted_angle_deg=round(f.predicted_angle_deg, 3),
                ffn_angle_deg=round(f.ffn_angle_deg, 3),
                closest_block=f.closest_block,
                decay_checks=[c.to_dict() for c in f.decay_checks],
                explosion_subspace=f.subspace.to_dict(),
                ablation=causal["ablation"],
                patching=causal["patching"],
            )
            if f.vocab is not None:
                entry["vocab_coefficients"] = f.vocab.to_dict()
            if f.pathway is not None:
                entry["noninitial_pathway"] = f.pathway.to_dict()
            defects.append(entry)
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "architecture": self.architecture,
            "dtype": self.dtype,
            **({"model_dtype": self.model_dtype} if self.model_dtype not in (None, self.dtype) else {}),
            **({"dtype_check": self.dtype_check.to_dict()} if self.dtype_check is not None else {}),
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "seed": self.seed,
            "fit_method": self.fit_method,
            "corpus": {"n_texts": len(self.texts), "n_tokens": self.probe.n_tokens,
                       **(self.corpus.to_dict() if self.corpus is not None else {})},
            "corpus_warnings": list(self.corpus.warnings) if self.corpus is not None else [],
            "trigger_text": self.trigger_text,
            "threshold": self.defects.threshold,
            "typical_norm": [round(float(x), 3) for x in self.defects.typical_norm],
            "defects": defects,
            "major_ratio": self.defects.major_ratio,
            "minor_groups": [d.to_dict() for d in self.defects.minor],
            "layers": self.spectra.to_dict(),
            **({"channels": self._channels_dict()} if self.channels_measured else {}),
            **({"quantization": self.quantization.to_dict()} if self.quantization is not None else {}),
            **({"outlier_tokens": self.outlier_tokens.to_dict()} if self.outlier_tokens is not None else {}),
            **({"rotation_check": self.rotation.to_dict()} if self.rotation is not None else {}),
            **({"causal_ranking": self.ranking.to_dict()} if self.ranking is not None else {}),
            **({"super_weights": self.super_weights.to_dict()} if self.super_weights is not None else {}),
            **({"failed_stages": dict(self.errors)} if self.errors else {}),
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
        }

    @property
    def channels_measured(self) -> bool:
        """True when the channel-level lens ran (``channels=True``)."""
        return any(
            x is not None
            for x in (
                self.outliers, self.weights, self.sinks, self.attribution, self.lever, self.life, self.local,
                self.interventions,
            )
        )

    def _channels_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.outliers is not None:
            out["activation_outliers"] = self.outliers.to_dict()
            out["defect_channels"] = {
                str(c): {"defect": lab, "share": round(share, 4)}
                for c, (lab, share) in self.outliers.channel_defects(self.defects).items()
            }
        if self.weights is not None:
            out["weight_outliers"] = self.weights.to_dict()
        if self.sinks is not None:
            out["attention_sinks"] = self.sinks.to_dict()
        if self.attribution is not None:
            out["attribution"] = self.attribution.to_dict()
        if self.lever is not None:
            out["lever"] = self.lever.to_dict()
        if self.life is not None:
            out["life_cycle"] = self.life.to_dict()
        if self.local is not None:
            out["local_checks"] = self.local.to_dict()
        if self.interventions is not None:
            out["interventions"] = self.interventions.to_dict()
        if self.residual_identity is not None:
            out["residual_identity"] = self.residual_identity.to_dict()
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    def trigger(self, label: str) -> Trigger:
        """The trigger direction v₀ of the major defect ``label`` (``"D1"``, ...) with its explosion block:
        the leading right singular vector of the FFN fit there (what :func:`verify_trigger` ablated).

        Raises:
            InputError: no major defect has that label.
        """
        for d, f in zip(self.defects, self.findings):
            if d.label == label:
                fit = self.spectra.linearizations[d.explosion_layer].ffn_fit
                return Trigger(label, d.explosion_layer, fit.v0, fit.s0, f.predicted_angle_deg, f.causal)
        known = ", ".join(d.label for d in self.defects) or "none: no major defect"
        raise InputError(f"no major defect {label!r}; the defects are {known}")


def run_analysis(
    model: HookedModel,
    texts: Sequence[str] | None = None,
    config: AnalysisConfig | None = None,
    **options: Any,
) -> AnalysisResult:
    """Run analyses 1–7 of docs/analyses.md (after Wang et al., ICML 2025) on ``model`` over ``texts``.

    Args:
        model: a TransformerLens model (:func:`sd_lens.load_model`).
        texts: the corpus; ``None`` for :func:`sd_lens.corpus.default_corpus`.
        config: an :class:`AnalysisConfig`; default options when None.
        **options: fields of :class:`AnalysisConfig` to override, e.g. ``seed=3, vocab=True``.

    Thread safety: the whole analysis holds the model's lock (:func:`sd_lens.runtime.lock.model_lock`),
    so two threads analysing one model run one after the other and each gets exactly the result of a
    run alone; threads on different models run in parallel.

    Warns:
        UserWarning: ``"corpus: ..."`` when the corpus is too short or too uniform for the defect
            finder (:mod:`sd_lens.analyses.corpus_check`); the same sentences are the result's
            ``corpus.warnings`` and the JSON's ``corpus_warnings``.

    Raises:
        InputError: an unknown or invalid option (before the model runs), or a trigger text that
            does not fit the model's context (before any analysis runs).

    A stage that fails after the first ones finished (the channel lens's stages, ``local_checks``,
    ``interventions``, ``quantize``, ``rotation``, ``causal_ranking``) does not raise: its result is None, ``AnalysisResult.errors`` names
    it with its error (``failed_stages`` in the JSON), a warning says so, and the stages that need it
    are skipped with that reason; everything else is returned.

    Example:
        >>> import sd_lens
        >>> result = sd_lens.run_analysis(sd_lens.tiny_model("llama"), ["The cat sat on the mat.", "A dog ran."])
        >>> {d.label: result.trigger(d.label).block for d in result.defects}  # each defect's v0 block
        {}
    """
    unknown = sorted(set(options) - set(AnalysisConfig.options()))
    if unknown:
        raise InputError(
            f"unknown option(s) {', '.join(unknown)} for run_analysis; the options are "
            f"{', '.join(AnalysisConfig.options())}"
        )
    cfg = replace(config or AnalysisConfig(), **options)
    texts = read_texts(texts)
    with model_lock(model):  # one analysis of a model at a time: its hooks and weights are shared state
        own = model_dtype(model)
        if cfg.forward_dtype is not None:
            check_memory(model, cfg.forward_dtype)
        with forward_dtype(model, cfg.forward_dtype, check=False):
            result = _run_analysis(model, texts, cfg)
    return replace(result, model_dtype=own) if own != result.dtype else result


def _run_analysis(model: HookedModel, texts: list[str], cfg: AnalysisConfig) -> AnalysisResult:
    seed, threshold, limit = cfg.seed, cfg.threshold, cfg.vocab_limit
    timings: dict[str, float] = {}
    torch.manual_seed(seed)

    def tick(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - t0
        return now

    trigger_tokens(model, cfg.trigger_text)  # an unusable trigger text fails now, not after every analysis
    t = time.perf_counter()
    dtype = model_dtype(model)
    if dtype == "float16":
        warnings.warn(FLOAT16_WARNING, stacklevel=3)
    probe = probe_norms(
        model, texts, batch_size=cfg.batch_size, max_tokens_per_text=cfg.max_tokens_per_text, progress=cfg.progress
    )
    corpus = corpus_summary(probe, max_tokens_per_text=cfg.max_tokens_per_text, n_truncated=probe.n_truncated)
    for warning in corpus.warnings:  # the findings below may not mean what they say: tell the user
        warnings.warn(f"corpus: {warning}", stacklevel=3)
    t = tick("probe", t)
    report = find_defects(model, probe, threshold=threshold, batch_size=cfg.batch_size, progress=cfg.progress)
    t = tick("defects", t)
    check = None
    if cfg.dtype_check and dtype in ("float16", "bfloat16"):
        try:
            check = dtype_check(model, probe, report, threshold=threshold, batch_size=cfg.batch_size,
                                progress=cfg.progress)
        except InputError as exc:  # not enough memory for the float32 copy: say so, go on
            warnings.warn(f"the float32 check of the {dtype} defects was skipped: {exc}", stacklevel=3)
        else:
            if not check.agrees:
                warnings.warn(check.summary(), stacklevel=3)
        t = tick("dtype_check", t)
    view = model_view(model)
    keep = sorted({layer for d in report for layer in [d.explosion_layer, *d.decay_layers]})
    inputs = None
    if cfg.fit_method == "real":
        inputs = collect_ffn_inputs(model, probe.sequences, list(range(view.n_layers)), progress=cfg.progress)
        t = tick("collect_ffn_inputs", t)
    spectra = layer_spectra(
        view, [d.direction for d in report], method=cfg.fit_method, keep=keep, inputs_by_layer=inputs, seed=seed,
        progress=cfg.progress and "block spectra", exact=cfg.exact_spectra,
    )
    t = tick("spectra", t)
    findings = []
    # the subspace, causal and vocabulary analyses depend on the explosion block only, not on the
    # defect's direction: defects born in the same block share them
    by_block: dict[tuple[str, int], Any] = {}

    def once(what: str, layer: int, compute: Callable[[], Any]) -> Any:
        if (what, layer) not in by_block:
            by_block[(what, layer)] = compute()
        return by_block[(what, layer)]

    for k, d in enumerate(report):
        layer = d.explosion_layer
        lin = spectra.linearizations[layer]
        checks = [
            decay_check(view, b, d.direction, lin=spectra.linearizations[b], exact=cfg.exact_spectra)
            for b in d.decay_layers
        ]
        t = tick("decay_checks", t)
        sub = once("subspace", layer, lambda: explosion_subspace(view, layer, fit=lin.ffn_fit, seed=seed))
        t = tick("explosion_subspace", t)
        causal = once("causal", layer, lambda: verify_trigger(model, layer, lin.ffn_fit.v0, cfg.trigger_text, seed=seed))
        t = tick("causal", t)
        vocab = pathway = None
        if cfg.vocab:
            vocab = once(
                "vocab", layer,
                lambda: vocab_coefficients(model, layer, lin.ffn_fit.v0, limit=limit, progress=cfg.progress),
            )
            pathway = once(
                "pathway",
                layer,
                lambda: noninitial_pathway(
                    model, layer, threshold * float(report.typical_norm[layer]), limit=limit, progress=cfg.progress
                ),
            )
            t = tick("vocab", t)
        findings.append(
            DefectFindings(
                predicted_angle_deg=spectra.blocks[d.explosion_layer].angles_deg[k],
                ffn_angle_deg=spectra.blocks[d.explosion_layer].ffn_angles_deg[k],
                closest_block=spectra.closest_block(k),
                decay_checks=checks,
                subspace=sub,
                causal=causal,
                vocab=vocab,
                pathway=pathway,
            )
        )
    sinks = attribution = lever = outliers = weights = life = local = interventions = None
    quantization = None
    found_tokens = identity = None
    errors: dict[str, str] = {}

    def stage(name: str, compute: Callable[[], Any], needs: dict[str, Any] | None = None) -> Any:
        """Run a late stage; if it (or a stage it needs) failed, record why and go on with the others."""
        nonlocal t
        missing = [k for k, v in (needs or {}).items() if v is None and k in errors]
        if missing:
            errors[name] = f"skipped: needs {', '.join(missing)}, which failed"
            return None
        try:
            value = compute()
        except Exception as exc:  # noqa: BLE001 - recorded, reported, and the finished stages are kept
            errors[name] = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, SdLensError):  # not an error sd_lens explains: keep the traceback for a report
                _log.warning("the %s stage raised:", name, exc_info=True)
            warnings.warn(f"the {name} stage failed ({errors[name]}); the other stages' results are kept", stacklevel=4)
            value = None
        t = tick(name, t)
        return value

    if cfg.channels:
        # massive activations and attention sinks read different hooks of the same forwards: one stream
        def outliers_and_sinks() -> tuple[ActivationOutliers, AttentionSinks]:
            tok = tokenize(model, texts, max_tokens_per_text=cfg.max_tokens_per_text)
            high_rows = torch.nonzero((probe.ratio("resid_post") > threshold).any(dim=1)).flatten()
            with warnings.catch_warnings():  # the norm probe has already said how many texts were cut
                warnings.filterwarnings("ignore", message=".*texts were cut to their first.*")
                out_pass = activation_outliers_pass(model, tok)
                sink_pass = attention_sinks_pass(model, tok, epsilon=cfg.sink_epsilon, high_norm_rows=high_rows)
            run_passes(model, [out_pass, sink_pass], batch_size=cfg.batch_size,
                       progress=cfg.progress and "massive activations and attention sinks")
            return out_pass.result(), sink_pass.result()

        both = stage("outliers_and_sinks", outliers_and_sinks)
        if both is not None:
            outliers, sinks = both
        weights = stage("weight_outliers", lambda: weight_outliers(view))
        # before attributing to sublayers: do the hooks add up to what each block adds (on a few texts)?
        identity = stage("residual_identity", lambda: residual_identity(
            model, texts[: cfg.batch_size], batch_size=cfg.batch_size, max_tokens_per_text=cfg.max_tokens_per_text,
        ))
        attribution = stage(
            "attribution", lambda: component_attribution(model, report, probe, batch_size=cfg.batch_size)
        )
        lever = stage("lever", lambda: find_lever(model, report, attribution, seed=seed),
                      {"attribution": attribution})
        life = stage(
            "life_cycle",
            lambda: life_cycle(
                model, report, probe, outliers, weights, sinks, attribution,  # type: ignore[arg-type]
                batch_size=cfg.batch_size,
            ),
            {"outliers_and_sinks": outliers, "weight_outliers": weights, "attribution": attribution},
        )
    if cfg.local_checks:
        local = stage("local_checks", lambda: local_causal_checks(model, report, probe, attribution, seed=seed),
                      {"attribution": attribution})
    if cfg.interventions:
        held = held_out_texts(texts)  # 48 lines of the default corpus's source that are not in texts
        interventions = stage(
            "interventions",
            lambda: outlier_intervention(
                model, outliers, held, texts=texts, batch_size=cfg.batch_size,
                max_tokens_per_text=cfg.max_tokens_per_text,
            ),
            {"outliers_and_sinks": outliers},
        )
    if cfg.quantize:
        quantization_stage = registered_stage("quantization")  # the application registers it
        quantization = stage(
            "quantization", lambda: quantization_stage(model, texts, held_out_texts(texts), report=report, config=cfg)
        )
    if cfg.outlier_tokens:
        found_tokens = stage(
            "outlier_tokens",
            lambda: outlier_tokens(
                model, texts, eta=cfg.outlier_eta, defects=report, batch_size=cfg.batch_size,
                max_tokens_per_text=cfg.max_tokens_per_text,
            ),
        )
    rotation = ranking = None
    if cfg.rotation:
        rotation = stage(
            "rotation_check",
            lambda: rotation_check(
                model, report, texts, seed=seed, batch_size=cfg.batch_size, max_tokens_per_text=cfg.max_tokens_per_text,
            ),
        )
    if cfg.causal_ranking:
        ranking = stage(
            "causal_ranking",
            lambda: causal_ranking(
                model, report, outliers, held_out_texts(texts), texts=texts, seed=seed, inert_kl=cfg.inert_kl,
                batch_size=cfg.batch_size, max_tokens_per_text=cfg.max_tokens_per_text,
            ),
        )
    sw = None
    if cfg.super_weights:
        sw = stage(
            "super_weights",
            lambda: super_weights(
                model, report, probe, held_out_texts(texts), n_seeds=cfg.super_weight_seeds, seed=seed,
                batch_size=cfg.batch_size, max_tokens_per_text=cfg.max_tokens_per_text,
            ),
        )
    if ranking is not None and sw is not None:  # every finding in one order: the super weights ranked in
        ranking = ranking.including(super_weight_findings(sw))
    return AnalysisResult(
        model=model_name(model),
        architecture=view.architecture,
        dtype=dtype,
        dtype_check=check,
        quantization=quantization,
        n_layers=view.n_layers,
        d_model=view.d_model,
        texts=list(texts),
        config=cfg,
        probe=probe,
        defects=report,
        spectra=spectra,
        findings=findings,
        timings_s=timings,
        sinks=sinks,
        attribution=attribution,
        lever=lever,
        life=life,
        local=local,
        interventions=interventions,
        outliers=outliers,
        weights=weights,
        corpus=corpus,
        errors=errors,
        outlier_tokens=found_tokens,
        residual_identity=identity,
        rotation=rotation,
        ranking=ranking,
        super_weights=sw,
    )


# ------------------------------------------------------------------------------------------------
# stages an application registers: the pipeline imports no application (tests/unit/test_layers.py)
# ------------------------------------------------------------------------------------------------
#: ``stage(model, texts, held_out, *, report, config) -> result``: a registered stage's computation;
#: its result has ``to_dict()`` and lands in the :class:`AnalysisResult` field of the stage's name
StageFn = Callable[..., Any]
_REGISTERED_STAGES: dict[str, StageFn] = {}
#: the module that registers each optional stage, imported by name when its option is on (an entry
#: point, not an import: the stage's code sits on the applications floor, above this module)
STAGE_PROVIDERS: dict[str, str] = {"quantization": "sd_lens.quantize"}


def register_stage(name: str, fn: StageFn) -> None:
    """Register ``fn`` as the computation of the optional stage ``name`` (an application calls this
    when it is imported: :mod:`sd_lens.quantize` registers ``"quantization"``)."""
    if not callable(fn):
        raise InputError(f"stage {name!r}: expected a callable, got {type(fn).__name__}")
    _REGISTERED_STAGES[name] = fn


def registered_stage(name: str) -> StageFn:
    """The computation registered for ``name``, importing its provider (:data:`STAGE_PROVIDERS`) on demand."""
    if name not in _REGISTERED_STAGES and name in STAGE_PROVIDERS:
        importlib.import_module(STAGE_PROVIDERS[name])
    try:
        return _REGISTERED_STAGES[name]
    except KeyError:
        raise InputError(f"no stage {name!r} is registered (register_stage); known: {sorted(_REGISTERED_STAGES)}") from None


# ------------------------------------------------------------------------------------------------
# a defect's trigger, reachable from the result (AnalysisResult.trigger)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Trigger:
    """One major defect's trigger: v₀ at its explosion block, as :meth:`AnalysisResult.trigger` returns it.

    Attributes:
        label: the defect's label (``"D1"``).
        block: its explosion block (where the FFN's fit ``F`` amplifies ``v0`` most).
        v0: float32 [d_model], the leading right singular vector of ``F`` there (sign as the fit gives it).
        s0: the singular value that goes with it.
        predicted_angle_deg: angle between the block's ``u0`` of ``L`` and the defect's direction.
        causal: the ablation and patching of ``v0`` on the trigger text (:class:`CausalCheck`).
    """

    label: str
    block: int
    v0: Tensor
    s0: float
    predicted_angle_deg: float
    causal: CausalCheck
