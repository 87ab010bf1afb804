"""One call for everything: probe, defects, spectra, decay checks, explosion subspace, causal checks.

:func:`run_analysis` composes the analyses of the other modules and returns an
:class:`AnalysisResult` holding each typed result, plus :meth:`AnalysisResult.to_dict`, the JSON
contract of ``sd-lens analyze``. Every field is a function of (model, texts, options, seed) except
``timings_s``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from sd_lens.analyses.causal import CausalCheck, verify_trigger
from sd_lens.analyses.defects import DefectReport, find_defects
from sd_lens.analyses.explosion import (
    ExplosionSubspace,
    NoninitialPathway,
    VocabCoefficients,
    explosion_subspace,
    noninitial_pathway,
    vocab_coefficients,
)
from sd_lens.analyses.ffn_inputs import collect_ffn_inputs
from sd_lens.analyses.probe import NormProbe, probe_norms
from sd_lens.analyses.spectra import (
    DecayCheck,
    LayerSpectra,
    decay_check,
    layer_spectra,
)
from sd_lens.corpus import read_texts
from sd_lens.models.loading import model_name
from sd_lens.models.view import model_view

SCHEMA_VERSION = 1
DEFAULT_TRIGGER_TEXT = "The cat sat on the mat because it was warm."


@dataclass
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


@dataclass
class AnalysisResult:
    """Typed results of :func:`run_analysis`; ``to_dict()`` is the JSON contract."""

    model: str
    architecture: str
    n_layers: int
    d_model: int
    texts: list[str]
    seed: int
    fit_method: str
    probe: NormProbe
    defects: DefectReport
    spectra: LayerSpectra
    findings: list[DefectFindings]
    trigger_text: str = DEFAULT_TRIGGER_TEXT
    timings_s: dict[str, float] = field(default_factory=dict)

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
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "seed": self.seed,
            "fit_method": self.fit_method,
            "corpus": {"n_texts": len(self.texts), "n_tokens": self.probe.n_tokens},
            "trigger_text": self.trigger_text,
            "threshold": self.defects.threshold,
            "typical_norm": [round(float(x), 3) for x in self.defects.typical_norm],
            "defects": defects,
            "layers": self.spectra.to_dict(),
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def sentences(self) -> list[str]:
        """Each defect's findings in plain sentences (written by :func:`sd_lens.report.prose.defect_sentences`)."""
        from sd_lens.report.prose import defect_sentences

        return defect_sentences(self)


def run_analysis(
    model: Any,
    texts: Sequence[str] | None = None,
    *,
    seed: int = 0,
    fit_method: str = "gaussian",
    vocab: bool = False,
    vocab_limit: int | None = None,
    trigger_text: str = DEFAULT_TRIGGER_TEXT,
    threshold: float = 4.0,
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
    progress: bool = False,
) -> AnalysisResult:
    """Run analyses 1–7 of the SPEC on ``model`` over ``texts`` (default corpus when None).

    Args:
        model: a TransformerLens model (:func:`sd_lens.load_model`).
        texts: the corpus; ``None`` for :func:`sd_lens.corpus.default_corpus`.
        seed: seeds every random choice (Monte-Carlo fit, random control direction).
        fit_method: FFN linearisation for the spectra (``"gaussian"``, ``"monte_carlo"``, ``"real"``).
        vocab: also run the vocabulary sweeps at each explosion block (slow: the whole vocabulary).
        vocab_limit: sweep only the first ``vocab_limit`` token ids (for quick looks and tests).
        trigger_text: the text of the causal checks.
        threshold: high-norm threshold, in multiples of the block's median norm.
    """
    timings: dict[str, float] = {}
    torch.manual_seed(seed)

    def tick(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - t0
        return now

    t = time.perf_counter()
    texts = read_texts(texts)
    probe = probe_norms(model, texts, batch_size=batch_size, max_tokens_per_text=max_tokens_per_text, progress=progress)
    t = tick("probe", t)
    report = find_defects(model, probe, threshold=threshold)
    t = tick("defects", t)
    view = model_view(model)
    keep = sorted({layer for d in report for layer in [d.explosion_layer, *d.decay_layers]})
    inputs = None
    fit_kwargs: dict[str, Any] = {"seed": seed}
    if fit_method == "real":
        inputs = collect_ffn_inputs(model, probe.sequences, list(range(view.n_layers)))
        t = tick("collect_ffn_inputs", t)
    spectra = layer_spectra(
        view, [d.direction for d in report], method=fit_method, keep=keep, inputs_by_layer=inputs, **fit_kwargs
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
        checks = [decay_check(view, b, d.direction, lin=spectra.linearizations[b]) for b in d.decay_layers]
        t = tick("decay_checks", t)
        sub = once("subspace", layer, lambda: explosion_subspace(view, layer, fit=lin.ffn_fit, seed=seed))
        t = tick("explosion_subspace", t)
        causal = once("causal", layer, lambda: verify_trigger(model, layer, lin.ffn_fit.v0, trigger_text, seed=seed))
        t = tick("causal", t)
        finding = DefectFindings(
            predicted_angle_deg=spectra.blocks[d.explosion_layer].angles_deg[k],
            ffn_angle_deg=spectra.blocks[d.explosion_layer].ffn_angles_deg[k],
            closest_block=spectra.closest_block(k),
            decay_checks=checks,
            subspace=sub,
            causal=causal,
        )
        if vocab:
            finding.vocab = once(
                "vocab", layer, lambda: vocab_coefficients(model, layer, lin.ffn_fit.v0, limit=vocab_limit)
            )
            finding.pathway = once(
                "pathway",
                layer,
                lambda: noninitial_pathway(model, layer, threshold * float(report.typical_norm[layer]), limit=vocab_limit),
            )
            t = tick("vocab", t)
        findings.append(finding)
    return AnalysisResult(
        model=model_name(model),
        architecture=view.architecture,
        n_layers=view.n_layers,
        d_model=view.d_model,
        texts=list(texts),
        seed=seed,
        fit_method=fit_method,
        probe=probe,
        defects=report,
        spectra=spectra,
        findings=findings,
        trigger_text=trigger_text,
        timings_s=timings,
    )
