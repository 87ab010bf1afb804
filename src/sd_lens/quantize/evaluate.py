"""The experiment: W8A8 perplexity with and without the defect blocks' F2 kept in high precision.

Wang et al., *Demystifying Singular Defects in LLMs* (ICML 2025), §6: per-tensor W8A8 round-to-nearest
breaks on the outliers that a singular defect's explosion and decay blocks create; keeping only those
blocks' FFN down-projection (F2) in high precision recovers most of the perplexity. Their LLaMA2-7B
figures (WikiText-2): FP16 5.47, RTN 10.18, RTN + F2 kept at blocks 2 and 31 6.51; SmoothQuant 13.87,
SmoothQuant + F2 kept 6.78.

:func:`quantization_experiment` measures, on held-out texts, the perplexity of

* the float model;
* every scheme (default: :data:`~sd_lens.quantize.fake.RTN`, :data:`~sd_lens.quantize.fake.PER_TOKEN`,
  :data:`~sd_lens.quantize.fake.SMOOTHQUANT`) with nothing kept (``kept="none"``) and with F2 kept at the
  explosion and decay blocks of every major defect the analysis found (``"defects"``,
  :func:`~sd_lens.quantize.protect.defect_blocks`);
* for the first scheme, the controls: F2 kept at as many random other blocks (``"random"``, one row per
  seed) and at every block (``"all"``).

The defects come from :func:`sd_lens.run_analysis` / :func:`~sd_lens.analyses.defects.find_defects` on
the analysis corpus; SmoothQuant is calibrated on the same corpus; the perplexity texts are held out
(:func:`sd_lens.corpus.held_out_texts`). Perplexity is
:func:`~sd_lens.analyses.metrics.perplexity` (``exp`` of the mean next-token NLL) with
``kl=False`` (the weights are quantized for the whole forward, so a clean half cannot share it).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from sd_lens.analyses.causal.engine import Trial, sweep
from sd_lens.analyses.defects import DefectReport, find_defects
from sd_lens.analyses.metrics import Perplexity, perplexity
from sd_lens.analyses.probe import probe_norms
from sd_lens.corpus import check_held_out, default_corpus, held_out_texts, validate_texts
from sd_lens.errors import InputError
from sd_lens.models.metadata import model_name
from sd_lens.outputs import atomic_write_text
from sd_lens.quantize.fake import SCHEMES, Scheme, fake_quantize
from sd_lens.quantize.protect import defect_blocks, random_blocks
from sd_lens.quantize.smoothquant import SmoothScales, smoothquant_scales
from sd_lens.runtime.tokens import Tokenized, tokenize
from sd_lens.types import HookedModel

__all__ = ["KEPT", "QuantRow", "QuantizationResult", "quantization_experiment"]

#: what a row keeps in high precision: nothing, the defect blocks' F2, random blocks' F2, every F2
KEPT = ("none", "defects", "random", "all")
FLOAT = "float"


@dataclass(frozen=True, eq=False)
class QuantRow:
    """One perplexity measurement: ``scheme`` (a scheme name or ``"float"``), the blocks whose F2 stayed
    in full precision (``kept_blocks``; ``kept`` says why: one of :data:`KEPT`), the perplexity over
    ``tokens`` predicted tokens, and for a random control its ``seed``."""

    scheme: str
    kept: str
    kept_blocks: tuple[int, ...]
    perplexity: float
    mean_nll: float
    tokens: int
    seed: int | None = None
    seconds: float = 0.0

    @property
    def label(self) -> str:
        if self.scheme == FLOAT:
            return "float"
        if self.kept == "none":
            return self.scheme
        if self.kept == "random":
            return f"{self.scheme} + random F2 kept (seed {self.seed})"
        return f"{self.scheme} + {self.kept} F2 kept"

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "kept": self.kept,
            "kept_blocks": list(self.kept_blocks),
            "perplexity": round(self.perplexity, 3) if math.isfinite(self.perplexity) else None,
            "mean_nll": round(self.mean_nll, 4) if math.isfinite(self.mean_nll) else None,
            "tokens": self.tokens,
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, eq=False)
class QuantizationResult:
    """The rows of :func:`quantization_experiment` and what chose the kept blocks.

    Attributes:
        model: the model's name.
        rows: every measurement, float first.
        protected: the defect blocks (explosion and decay blocks of every major defect).
        defects: per major defect ``{"index", "explosion", "decay"}``.
        schemes: the schemes measured (the first one has the controls).
        seeds: the random controls' seeds.
        n_texts, n_tokens: held-out texts and predicted tokens per row.
        smooth: the SmoothQuant factors (None when no scheme smooths).
    """

    model: str
    rows: tuple[QuantRow, ...]
    protected: tuple[int, ...]
    defects: tuple[dict[str, Any], ...]
    schemes: tuple[Scheme, ...]
    seeds: tuple[int, ...]
    n_texts: int
    n_tokens: int
    smooth: SmoothScales | None = None
    seconds: float = 0.0

    def row(self, scheme: str, kept: str = "none") -> QuantRow:
        """The row of ``scheme`` (a name, or ``"float"``) with ``kept`` (not ``"random"``: see
        :meth:`random_rows`)."""
        for r in self.rows:
            if r.scheme == scheme and (scheme == FLOAT or r.kept == kept):
                return r
        raise InputError(f"no row for scheme {scheme!r} with kept={kept!r}")

    def random_rows(self, scheme: str | None = None) -> list[QuantRow]:
        name = self.schemes[0].name if scheme is None else scheme
        return [r for r in self.rows if r.scheme == name and r.kept == "random"]

    def random_summary(self, scheme: str | None = None) -> dict[str, float] | None:
        """Mean, min and max perplexity of the random controls (None without any)."""
        ppl = [r.perplexity for r in self.random_rows(scheme)]
        if not ppl:
            return None
        return {"mean": statistics.fmean(ppl), "min": min(ppl), "max": max(ppl), "n": len(ppl)}

    def recovered(self, scheme: str | None = None, kept: str = "defects") -> float:
        """Fraction of the perplexity gap ``scheme`` opens over float that keeping F2 (``kept``) closes:
        ``(ppl_q - ppl_kept) / (ppl_q - ppl_float)`` (1: back to float; 0: no help; ``kept="random"``:
        the controls' mean)."""
        name = self.schemes[0].name if scheme is None else scheme
        base, q = self.row(FLOAT).perplexity, self.row(name).perplexity
        if kept == "random":
            summ = self.random_summary(name)
            if summ is None:
                raise InputError(f"scheme {name!r} has no random control")
            k = summ["mean"]
        else:
            k = self.row(name, kept).perplexity
        return (q - k) / (q - base) if q != base else math.nan

    def display_rows(self) -> list[tuple[QuantRow, dict[str, float] | None]]:
        """The rows in order for a table or a figure: each scheme's random controls collapsed into
        their first row, paired with :meth:`random_summary`; every other row with None."""
        out: list[tuple[QuantRow, dict[str, float] | None]] = []
        done: set[str] = set()
        for r in self.rows:
            if r.kept != "random":
                out.append((r, None))
            elif r.scheme not in done:
                done.add(r.scheme)
                out.append((r, self.random_summary(r.scheme)))
        return out

    def table(self) -> str:
        """A markdown table: one line per scheme and kept set (the random controls as mean [min, max])."""
        base = self.row(FLOAT).perplexity
        lines = ["| scheme | F2 kept at blocks | perplexity | x float |", "|---|---|---:|---:|"]
        for r, s in self.display_rows():
            if s is not None:
                lines.append(f"| {r.scheme} | random ({int(s['n'])} seeds, {len(r.kept_blocks)} blocks) | "
                             f"{s['mean']:.2f} [{s['min']:.2f}, {s['max']:.2f}] | {s['mean'] / base:.2f} |")
                continue
            where = "-" if r.kept == "none" else ("all" if r.kept == "all" else ", ".join(map(str, r.kept_blocks)))
            lines.append(f"| {r.scheme if r.scheme != FLOAT else 'float'} | {where} | {r.perplexity:.2f} | "
                         f"{r.perplexity / base:.2f} |")
        return "\n".join(lines)

    def summary(self) -> str:
        first = self.schemes[0].name
        lines = [f"{self.model}: W8A8 fake quantization, {self.n_texts} held-out texts, {self.n_tokens} tokens; "
                 f"defect blocks (explosion + decay of every major defect): {list(self.protected)}", self.table()]
        if self.protected:
            lines.append(f"{first}: keeping the defect blocks' F2 closes {self.recovered(first):.0%} of the gap to float"
                         + (f", random blocks {self.recovered(first, 'random'):.0%}" if self.random_rows() else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        first = self.schemes[0].name
        rand = self.random_summary(first)
        return {
            "model": self.model,
            "protected_blocks": list(self.protected),
            "defects": [dict(d) for d in self.defects],
            "schemes": [s.to_dict() for s in self.schemes],
            "seeds": list(self.seeds),
            "n_texts": self.n_texts,
            "n_tokens": self.n_tokens,
            "rows": [r.to_dict() for r in self.rows],
            "random_control": None if rand is None else {k: round(v, 3) for k, v in rand.items()},
            "recovered": None if not self.protected else {
                s.name: round(self.recovered(s.name), 4) for s in self.schemes
            },
            "smoothquant": None if self.smooth is None else self.smooth.to_dict(),
            "seconds": round(self.seconds, 3),
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text


def _schemes(schemes: Sequence[str | Scheme]) -> tuple[Scheme, ...]:
    out = []
    for s in schemes:
        if isinstance(s, Scheme):
            out.append(s)
        elif s in SCHEMES:
            out.append(SCHEMES[s])
        else:
            raise InputError(f"unknown scheme {s!r}; choose from {', '.join(SCHEMES)} or pass a Scheme")
    if not out or len({s.name for s in out}) != len(out):
        raise InputError("schemes must be a non-empty list of distinct schemes")
    return tuple(out)


def quantization_experiment(
    model: HookedModel,
    texts: Sequence[str] | None = None,
    held_out: Sequence[str] | None = None,
    *,
    analysis: DefectReport | Any | None = None,
    schemes: Sequence[str | Scheme] = ("rtn", "per_token", "smoothquant"),
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    controls: bool = True,
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
    progress: bool | str = False,
) -> QuantizationResult:
    """Perplexity of ``model`` under W8A8 fake quantization, with the defect blocks' F2 kept or not.

    Args:
        model: a TransformerBridge (:func:`sd_lens.load_model`) or a TransformerLens 2.x HookedTransformer.
        texts: the analysis corpus (defects, SmoothQuant calibration); default
            :func:`~sd_lens.corpus.default_corpus`.
        held_out: the perplexity texts; default :func:`~sd_lens.corpus.held_out_texts` of ``texts``. None
            may be in ``texts``.
        analysis: a :class:`DefectReport` or :class:`~sd_lens.pipeline.AnalysisResult` of ``model`` on
            ``texts`` (None: the norm probe and :func:`find_defects` run here).
        schemes: names from :data:`~sd_lens.quantize.fake.SCHEMES` or :class:`Scheme` objects; the first one
            gets the controls.
        seeds: one random control per seed (as many random blocks as defect blocks, never those).
        controls: measure the random and all-F2 controls.
        batch_size, max_tokens_per_text: as everywhere.
        progress: a tqdm bar over the runs (a string is its label).

    Raises:
        InputError: bad arguments or overlapping texts (before any forward).
    """
    t0 = time.perf_counter()
    plan = _schemes(schemes)
    seeds = tuple(seeds)
    if any(not isinstance(s, int) or isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        raise InputError(f"seeds must be distinct integers, got {seeds!r}")
    texts = default_corpus() if texts is None else validate_texts(texts)
    held = held_out_texts(texts) if held_out is None else validate_texts(held_out)
    check_held_out(texts, held, "analysis corpus")
    if not held:
        raise InputError("no held-out text: give held_out texts")
    if analysis is None:
        probe = probe_norms(model, texts, batch_size=batch_size, max_tokens_per_text=max_tokens_per_text)
        analysis = find_defects(model, probe, batch_size=batch_size)
    report = analysis if isinstance(analysis, DefectReport) else getattr(analysis, "defects", None)
    protected = tuple(defect_blocks(analysis))
    smooth = None
    alphas = {s.smooth_alpha for s in plan if s.smooth_alpha is not None}
    if len(alphas) > 1:
        raise InputError("the schemes smooth with different alphas; run them separately")
    if alphas:
        smooth = smoothquant_scales(model, texts, alpha=alphas.pop(), batch_size=batch_size,
                                    max_tokens_per_text=max_tokens_per_text)
    tok = tokenize(model, held, max_tokens_per_text=max_tokens_per_text)

    rows = _rows(model, tok, plan, protected, seeds, controls, smooth, batch_size, progress)
    majors = [] if report is None else [
        {"index": int(d.index), "explosion": int(d.explosion_layer), "decay": [int(b) for b in d.decay_layers]}
        for d in report.defects
    ]
    return QuantizationResult(
        model=model_name(model), rows=tuple(rows), protected=protected, defects=tuple(majors), schemes=plan,
        seeds=seeds if controls and protected else (), n_texts=len(tok.sequences), n_tokens=rows[0].tokens,
        smooth=smooth, seconds=time.perf_counter() - t0,
    )


def _rows(
    model: HookedModel,
    tok: Tokenized,
    plan: tuple[Scheme, ...],
    protected: tuple[int, ...],
    seeds: tuple[int, ...],
    controls: bool,
    smooth: SmoothScales | None,
    batch_size: int,
    progress: bool | str,
) -> list[QuantRow]:
    """Every row, on the causal experiment engine: the float model is the clean measurement, each scheme
    a site, what F2 keeps an edit (``"none"``, ``"defects"``, ``"all"``), and the random blocks of the
    first scheme's ``"defects"`` row its matched controls (as many blocks, one draw per seed)."""
    n_layers = int(model.cfg.n_layers)
    first = plan[0].name
    random_controls = controls and bool(protected) and len(protected) < n_layers
    bar = _bar(1 + len(plan) * (1 + bool(protected)) + (1 + len(seeds) * random_controls if controls else 0), progress)

    def quantized(sch: Scheme, kept: str, blocks: tuple[int, ...], seed: int | None = None) -> Trial:
        record: dict[str, Any] = {"scheme": sch.name, "kept": kept, "blocks": blocks, "seed": seed}

        def weights() -> Any:
            record["t0"] = time.perf_counter()
            return fake_quantize(model, sch, keep=blocks, smooth=smooth if sch.smooth_alpha is not None else None)

        return Trial(weights=weights, record=record)

    def edit(scheme: Scheme, kept: str) -> Trial | None:
        if kept == "defects" and not protected:
            return None
        if kept == "all" and not (scheme.name == first and controls):
            return None
        return quantized(scheme, kept, protected if kept == "defects" else tuple(range(n_layers)) if kept == "all" else ())

    def control(trial: Trial, seed: int, scheme: Scheme, kept: str) -> Trial | None:
        if not (random_controls and scheme.name == first and kept == "defects"):
            return None
        return quantized(scheme, "random", tuple(random_blocks(n_layers, len(protected), seed, protected)), seed)

    def measure(trial: Trial) -> QuantRow:  # the float model: no hooks, no weight edit, no record
        r, t1 = trial.record, trial.record.get("t0", time.perf_counter())
        p: Perplexity = perplexity(model, tok, list(trial.hooks), kl=False, batch_size=batch_size)
        if bar is not None:
            bar.update(1)
        return QuantRow(
            scheme=r.get("scheme", FLOAT), kept=r.get("kept", "none"), kept_blocks=r.get("blocks", ()),
            perplexity=p.perplexity, mean_nll=p.mean_nll, tokens=p.n_tokens, seed=r.get("seed"),
            seconds=time.perf_counter() - t1,
        )

    try:
        out = sweep(model, {"scheme": plan, "kept": ("none", "defects", "all")}, edit, measure=measure, control=control,
                    seeds=seeds)
    finally:
        if bar is not None:
            bar.close()
    assert out.clean is not None
    rows = [out.clean]  # the order of the table: float, then each scheme's none, defects, random, all
    for sch in plan:
        for kept in ("none", "defects", "all"):
            if kept == "all":
                rows.extend(out.control_values(scheme=sch, kept="defects"))
            if (sch, kept) in out.values:
                rows.append(out.values[(sch, kept)])
    return rows


def _bar(total: int, progress: bool | str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=progress if isinstance(progress, str) else "quantized perplexity", unit="run")
