"""One call for everything: the core analyses (probe, defects, spectra, each defect's findings), then the late stages.

:func:`run_analysis` computes the core — the norm probe, the defects, the spectra, and per defect its
decay checks, explosion subspace and causal check — then runs every registered late stage whose option
is on (:mod:`sd_lens.stages`: the channel lens, the interventions, the rotation check, ...), and returns an
:class:`AnalysisResult` holding each typed result, plus :meth:`AnalysisResult.to_dict`, the JSON
contract of ``sd-lens analyze``. Every field is a function of (model, texts, options, seed) except
``timings_s``.

Reference: Wang et al., *Demystifying Singular Defects in Large Language Models* (ICML 2025),
observations (i)–(iv).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from sd_lens.analyses.causal import CausalCheck, trigger_tokens, verify_trigger
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
from sd_lens.analyses.ffn_fit import Method
from sd_lens.analyses.ffn_inputs import collect_ffn_inputs
from sd_lens.analyses.probe import NormProbe, probe_norms
from sd_lens.analyses.spectra import (
    DecayCheck,
    LayerSpectra,
    decay_check,
    layer_spectra,
)
from sd_lens.config import DEFAULT_TRIGGER_TEXT, AnalysisConfig
from sd_lens.corpus import read_texts
from sd_lens.errors import InputError, SdLensError
from sd_lens.models.metadata import FLOAT16_WARNING, model_dtype, model_name
from sd_lens.models.view import ModelView, model_view
from sd_lens.outputs import atomic_write_text
from sd_lens.runtime.lock import model_lock
from sd_lens.runtime.precision import check_memory, forward_dtype
from sd_lens.stages import (
    STAGE_PROVIDERS,
    StageInputs,
    register_stage,
    registered_results,
    registered_stage,
    registered_stages,
    result_names,
)
from sd_lens.types import HookedModel

__all__ = [
    "DEFAULT_TRIGGER_TEXT",
    "SCHEMA_VERSION",
    "STAGE_PROVIDERS",
    "AnalysisConfig",
    "AnalysisResult",
    "DefectFindings",
    "Trigger",
    "register_stage",
    "registered_stage",
    "run_analysis",
]

if TYPE_CHECKING:  # the built-in late results' types, for mypy and editors (AnalysisResult's declarations)
    from sd_lens.analyses.activation_outliers import ActivationOutliers
    from sd_lens.analyses.attention_sinks import AttentionSinks
    from sd_lens.analyses.attribution import ComponentAttribution
    from sd_lens.analyses.causal.lever import LeverReport
    from sd_lens.analyses.causal.local_checks import LocalCausalReport
    from sd_lens.analyses.causal.massive import OutlierIntervention
    from sd_lens.analyses.causal_ranking import CausalRanking
    from sd_lens.analyses.life_cycle import LifeCycle
    from sd_lens.analyses.outlier_tokens import OutlierTokens
    from sd_lens.analyses.residual_identity import ResidualIdentity
    from sd_lens.analyses.rotation_check import RotationCheck
    from sd_lens.analyses.super_weights import SuperWeights
    from sd_lens.analyses.weight_outliers import WeightOutliers

SCHEMA_VERSION = 2
_log = logging.getLogger(__name__)


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

    The core results are fields; each late stage's result is an attribute of the name its stage gives
    (:mod:`sd_lens.stages`: ``result.outliers``, ``result.sinks``, ``result.lever``, ``result.rotation``,
    ``result.super_weights``, ...), None when the stage did not run or failed; :attr:`results` holds them.

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
    corpus: CorpusSummary | None = None
    #: stages that raised, by name (as in ``timings_s``), with the error: ``"TypeName: message"``. Their
    #: results are None; every other stage's are kept (``failed_stages`` in the JSON when not empty)
    errors: dict[str, str] = field(default_factory=dict)
    #: each late stage's results by the names its stage gives (only those that ran and did not fail)
    results: dict[str, Any] = field(default_factory=dict)

    if TYPE_CHECKING:  # the built-in late results, typed for mypy and editors; at run time __getattr__ serves them
        @property
        def outliers(self) -> ActivationOutliers | None: ...
        @property
        def sinks(self) -> AttentionSinks | None: ...
        @property
        def weights(self) -> WeightOutliers | None: ...
        @property
        def residual_identity(self) -> ResidualIdentity | None: ...
        @property
        def attribution(self) -> ComponentAttribution | None: ...
        @property
        def lever(self) -> LeverReport | None: ...
        @property
        def life(self) -> LifeCycle | None: ...
        @property
        def local(self) -> LocalCausalReport | None: ...
        @property
        def interventions(self) -> OutlierIntervention | None: ...
        @property
        def quantization(self) -> Any: ...
        @property
        def outlier_tokens(self) -> OutlierTokens | None: ...
        @property
        def rotation(self) -> RotationCheck | None: ...
        @property
        def ranking(self) -> CausalRanking | None: ...
        @property
        def super_weights(self) -> SuperWeights | None: ...

    def __getattr__(self, name: str) -> Any:
        """A late stage's result: ``result.outliers`` is ``result.results["outliers"]`` (None when not run)."""
        if name.startswith("__") or name == "results":  # copies and pickles look these up before the fields exist
            raise AttributeError(name)
        if name in self.results or name in result_names():
            return self.results.get(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | result_names())

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
            "ffn_r2_samples": self.config.ffn_r2_samples,
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
            **self._late_dict(),
            **({"failed_stages": dict(self.errors)} if self.errors else {}),
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
        }

    def _late_dict(self) -> dict[str, Any]:
        """The late stages' results, where their :class:`~sd_lens.stages.ResultEntry` puts them, in order."""
        out: dict[str, Any] = {}
        for entry in registered_results():
            value = self.results.get(entry.name)
            if value is not None:
                where = out.setdefault(entry.group, {}) if entry.group else out
                where[entry.key] = entry.to_json(value, self)
        return out

    @property
    def channels_measured(self) -> bool:
        """True when a result of the channel-level lens is here (``channels=True``; the JSON's ``"channels"``)."""
        return any(e.group == "channels" and self.results.get(e.name) is not None for e in registered_results())

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

    A late stage (:mod:`sd_lens.stages`: the channel lens's stages, ``local_checks``, ``interventions``,
    ``quantize``, ``outlier_tokens``, ``rotation``, ``causal_ranking``, ``super_weights``, and any registered
    with :func:`~sd_lens.stages.register_analysis`) that fails does not raise: its result is None,
    ``AnalysisResult.errors`` names it with its error (``failed_stages`` in the JSON), a warning says so, and
    the stages that need it are skipped with that reason; everything else is returned.

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


class _Timings:
    """Seconds per stage; a stage timed in several pieces (each defect's checks) adds them up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._since = time.perf_counter()

    def tick(self, name: str) -> None:
        """Close the stage ``name``: the time since the last tick is its."""
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._since
        self._since = now


def _run_analysis(model: HookedModel, texts: list[str], cfg: AnalysisConfig) -> AnalysisResult:
    torch.manual_seed(cfg.seed)
    trigger_tokens(model, cfg.trigger_text)  # an unusable trigger text fails now, not after every analysis
    timings = _Timings()
    dtype = model_dtype(model)
    if dtype == "float16":
        warnings.warn(FLOAT16_WARNING, stacklevel=3)
    probe = probe_norms(
        model, texts, batch_size=cfg.batch_size, max_tokens_per_text=cfg.max_tokens_per_text, progress=cfg.progress
    )
    corpus = corpus_summary(probe, max_tokens_per_text=cfg.max_tokens_per_text, n_truncated=probe.n_truncated)
    for warning in corpus.warnings:  # the findings below may not mean what they say: tell the user
        warnings.warn(f"corpus: {warning}", stacklevel=3)
    timings.tick("probe")
    report = find_defects(model, probe, threshold=cfg.threshold, batch_size=cfg.batch_size, progress=cfg.progress)
    timings.tick("defects")
    check = _dtype_check(model, probe, report, dtype, cfg, timings)
    view = model_view(model)
    keep = sorted({layer for d in report for layer in [d.explosion_layer, *d.decay_layers]})
    inputs = None
    if cfg.fit_method == "real":
        inputs = collect_ffn_inputs(model, probe.sequences, list(range(view.n_layers)), progress=cfg.progress)
        timings.tick("collect_ffn_inputs")
    r2_samples: dict[str, Any] = {} if cfg.fit_method == "real" else {"n_eval": cfg.ffn_r2_samples}
    spectra = layer_spectra(
        view, [d.direction for d in report], method=cfg.fit_method, keep=keep, inputs_by_layer=inputs, seed=cfg.seed,
        **r2_samples,
        progress=cfg.progress and "block spectra", exact=cfg.exact_spectra,
    )
    timings.tick("spectra")
    findings = _findings(model, view, report, spectra, cfg, timings)
    errors: dict[str, str] = {}
    results = _late_stages(StageInputs(model, list(texts), cfg, probe, report, view, {}), errors, timings)
    return AnalysisResult(
        model=model_name(model),
        architecture=view.architecture,
        dtype=dtype,
        dtype_check=check,
        n_layers=view.n_layers,
        d_model=view.d_model,
        texts=list(texts),
        config=cfg,
        probe=probe,
        defects=report,
        spectra=spectra,
        findings=findings,
        timings_s=timings.seconds,
        corpus=corpus,
        errors=errors,
        results=results,
    )


def _dtype_check(
    model: HookedModel, probe: NormProbe, report: DefectReport, dtype: str, cfg: AnalysisConfig, timings: _Timings
) -> DtypeCheck | None:
    """On a half-precision forward, the defects of a float32 probe against this dtype's (None otherwise)."""
    if not (cfg.dtype_check and dtype in ("float16", "bfloat16")):
        return None
    check = None
    try:
        check = dtype_check(model, probe, report, threshold=cfg.threshold, batch_size=cfg.batch_size,
                            progress=cfg.progress)
    except InputError as exc:  # not enough memory for the float32 copy: say so, go on
        warnings.warn(f"the float32 check of the {dtype} defects was skipped: {exc}", stacklevel=4)
    else:
        if not check.agrees:
            warnings.warn(check.summary(), stacklevel=4)
    timings.tick("dtype_check")
    return check


@dataclass(frozen=True, eq=False)
class _BlockFindings:
    """What depends on a defect's explosion block only, not on its direction: defects born in one block share it."""

    subspace: ExplosionSubspace
    causal: CausalCheck
    vocab: VocabCoefficients | None
    pathway: NoninitialPathway | None


def _findings(
    model: HookedModel, view: ModelView, report: DefectReport, spectra: LayerSpectra, cfg: AnalysisConfig,
    timings: _Timings,
) -> list[DefectFindings]:
    """Each defect's decay checks, then each explosion block's subspace, causal check and vocabulary sweeps."""
    decay = []
    for d in report:
        decay.append([
            decay_check(view, b, d.direction, lin=spectra.linearizations[b], exact=cfg.exact_spectra)
            for b in d.decay_layers
        ])
        timings.tick("decay_checks")
    blocks: dict[int, _BlockFindings] = {}
    for layer in dict.fromkeys(d.explosion_layer for d in report):  # each explosion block once, in defect order
        fit = spectra.linearizations[layer].ffn_fit
        subspace = explosion_subspace(view, layer, fit=fit, seed=cfg.seed)
        timings.tick("explosion_subspace")
        causal = verify_trigger(model, layer, fit.v0, cfg.trigger_text, seed=cfg.seed)
        timings.tick("causal")
        vocab = pathway = None
        if cfg.vocab:
            limit = cfg.vocab_limit
            vocab = vocab_coefficients(model, layer, fit.v0, limit=limit, progress=cfg.progress)
            pathway = noninitial_pathway(
                model, layer, cfg.threshold * float(report.typical_norm[layer]), limit=limit, progress=cfg.progress
            )
            timings.tick("vocab")
        blocks[layer] = _BlockFindings(subspace, causal, vocab, pathway)
    return [
        DefectFindings(
            predicted_angle_deg=spectra.blocks[d.explosion_layer].angles_deg[k],
            ffn_angle_deg=spectra.blocks[d.explosion_layer].ffn_angles_deg[k],
            closest_block=spectra.closest_block(k),
            decay_checks=decay[k],
            subspace=blocks[d.explosion_layer].subspace,
            causal=blocks[d.explosion_layer].causal,
            vocab=blocks[d.explosion_layer].vocab,
            pathway=blocks[d.explosion_layer].pathway,
        )
        for k, d in enumerate(report)
    ]


def _late_stages(inputs: StageInputs, errors: dict[str, str], timings: _Timings) -> dict[str, Any]:
    """Run every registered stage whose option is on, in order; a stage that raises (or needs one that did) is
    recorded in ``errors`` and gives None, and the others go on. Returns the results that are not None."""
    results: dict[str, Any] = {}
    for stage in registered_stages():
        if not stage.when(inputs.config):
            continue
        failed = [name for name in stage.needs if name in errors]
        if failed:
            errors[stage.name] = f"skipped: needs {', '.join(failed)}, which failed"
            continue
        try:
            value = stage.run(replace(inputs, results=results))
        except Exception as exc:  # noqa: BLE001 - recorded, reported, and the finished stages are kept
            errors[stage.name] = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, SdLensError):  # not an error sd_lens explains: keep the traceback for a report
                _log.warning("the %s stage raised:", stage.name, exc_info=True)
            warnings.warn(
                f"the {stage.name} stage failed ({errors[stage.name]}); the other stages' results are kept",
                stacklevel=4,
            )
        else:
            values = value if len(stage.returns) > 1 else (value,)
            results.update((name, v) for name, v in zip(stage.returns, values, strict=True) if v is not None)
        timings.tick(stage.name)
    return results


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
