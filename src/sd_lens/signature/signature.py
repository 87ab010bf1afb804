"""A model's singular-defect signature: its high-norm direction, measured on text and read off the weights.

Wang et al. (ICML 2025, Sec. 6) observe that the direction of a model's high-norm tokens survives
fine-tuning: Llama-2-7B, its chat model and Vicuna-1.5 (fine-tuned from it) have empirical high-norm
directions 0.7–3.3° apart, while unrelated models of the same width are 87–89° apart (two random
directions in thousands of dimensions are about 90° apart). The direction is a *signature* of the
pre-training run that a fine-tune inherits.

Two signatures per model, both unit vectors of the residual stream (``d_model``):

``empirical``
    The direction of the model's *primary* major defect (:func:`~sd_lens.analyses.defects.find_defects`):
    the major defect with the largest peak norm over its block's median (the "massive" one; ties:
    more states). Its ``direction`` is the normalised mean of its states' sign-aligned unit vectors over
    every block it spans, oriented along the states. The authors' code takes the mean of every hidden
    state above a fixed, per-model norm (all layers pooled, unnormalised); here the states are the
    primary defect's, found with a threshold relative to each block's median, so no per-model number
    is needed. None when the corpus shows no major defect.
``weights``
    The leading left singular vector ``u₀`` of the linearised block ``L = (I + F)(I + A)``
    (:func:`~sd_lens.analyses.spectra.linearize_block`) at the primary defect's explosion block — the
    paper's layer-wise singular direction, observation (i). It needs no text once the block is known
    (``block=`` gives it directly).

**Sign.** A singular vector is defined up to sign, and a direction read off states could be compared
with its negative in another model, so every signature angle is the *acute* angle between the two
lines (:func:`~sd_lens.linalg.acute_angle_deg`), in [0, 90]: 0 for the same line, about 90 for
unrelated directions. The stored ``empirical`` keeps the orientation of the states; the stored
``weights`` is oriented to have a non-negative dot product with ``empirical`` (or, without one,
a positive largest-magnitude entry), which makes files reproducible but changes no angle.

Reference: Wang et al., *Demystifying Singular Defects in Large Language Models* (ICML 2025),
observation (i) and the fine-tuning analysis; code github.com/haoqiwang/singular_defect
(``tools/singular_defects_empirical.py``, ``tools/singular_defects.py``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.analyses.defects import Defect, DefectReport, find_defects
from sd_lens.analyses.probe import probe_norms
from sd_lens.analyses.spectra import linearize_block, top_singular
from sd_lens.corpus import read_texts, validate_texts
from sd_lens.errors import InputError
from sd_lens.linalg import acute_angle_deg, unit
from sd_lens.models.metadata import model_name
from sd_lens.models.view import model_view
from sd_lens.types import HookedModel

__all__ = ["Signature", "compute_signature", "corpus_hash", "primary_defect", "signature_angle"]

KINDS: tuple[str, ...] = ("empirical", "weights")


def corpus_hash(texts: Sequence[str], max_tokens_per_text: int | None = None) -> str:
    """A short SHA-256 of the texts (one per line, in order) and the truncation: equal hashes, same corpus."""
    h = hashlib.sha256(json.dumps({"texts": list(texts), "max_tokens_per_text": max_tokens_per_text}).encode("utf-8"))
    return h.hexdigest()[:16]


def _sign_fixed(v: Tensor, reference: Tensor | None) -> Tensor:
    v = unit(v.detach().to("cpu", torch.float32).flatten())
    if reference is not None:
        return v if float(v @ reference) >= 0 else -v
    return v if float(v[v.abs().argmax()]) >= 0 else -v


@dataclass(frozen=True, eq=False)
class Signature:
    """The high-norm signature of one model (see the module docstring).

    Attributes:
        model: the model's name.
        d_model: width of the residual stream (signatures of different widths cannot be compared).
        n_layers: number of blocks.
        empirical: ``[d_model]`` unit vector, the primary defect's direction (None: no major defect).
        weights: ``[d_model]`` unit vector, ``u₀`` of the linearised block ``block``.
        block: the block ``weights`` was read at (the primary defect's explosion block, or given).
        weights_s0: the leading singular value of that block's ``L``.
        defect: the primary defect's summary (explosion block, blocks, peak ratio, carriers), or None.
        n_major: number of major defects on the corpus (None for a weights-only signature).
        corpus_hash: :func:`corpus_hash` of the texts (None for a weights-only signature).
        n_texts: number of texts.
        threshold: the high-norm threshold (multiples of the block median) of the defect finder.
        fit_method: the FFN linearisation of ``weights``.
        sd_lens_version: the sd_lens version that computed it.
        seconds: wall time of the computation.
        source: the file it was loaded from, if any (not saved).
    """

    model: str
    d_model: int
    n_layers: int
    empirical: Float[Tensor, " d_model"] | None
    weights: Float[Tensor, " d_model"]
    block: int
    weights_s0: float
    defect: dict[str, Any] | None
    n_major: int | None
    corpus_hash: str | None
    n_texts: int | None
    threshold: float
    fit_method: str
    sd_lens_version: str
    seconds: float = 0.0
    source: str | None = field(default=None, compare=False)

    def vector(self, kind: str) -> Float[Tensor, " d_model"] | None:
        """The ``"empirical"`` or ``"weights"`` signature."""
        if kind not in KINDS:
            raise InputError(f"unknown signature kind {kind!r}; choose one of {', '.join(KINDS)}")
        return self.empirical if kind == "empirical" else self.weights

    @property
    def self_angle_deg(self) -> float:
        """Acute angle between this model's own two signatures (NaN without an empirical one)."""
        if self.empirical is None:
            return float("nan")
        return float(acute_angle_deg(self.empirical, self.weights))

    def to_dict(self, vectors: bool = False) -> dict[str, Any]:
        """Plain JSON values; ``vectors=True`` adds the two vectors at full float32 precision."""
        out: dict[str, Any] = {
            "model": self.model,
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "block": self.block,
            "weights_s0": round(self.weights_s0, 4),
            "self_angle_deg": None if self.empirical is None else round(self.self_angle_deg, 3),
            "defect": self.defect,
            "n_major": self.n_major,
            "corpus_hash": self.corpus_hash,
            "n_texts": self.n_texts,
            "threshold": self.threshold,
            "fit_method": self.fit_method,
            "sd_lens_version": self.sd_lens_version,
        }
        if vectors:
            out["empirical"] = None if self.empirical is None else [float(x) for x in self.empirical]
            out["weights"] = [float(x) for x in self.weights]
        return out


def signature_angle(a: Signature, b: Signature, kind: str = "empirical") -> float:
    """Acute angle (degrees) between two models' signatures of one kind; NaN if either has none.

    Raises:
        InputError: different widths (the vectors live in different spaces).
    """
    if a.d_model != b.d_model:
        raise InputError(
            f"cannot compare {a.model!r} (d_model {a.d_model}) with {b.model!r} (d_model {b.d_model}): "
            "signatures of different widths live in different spaces"
        )
    va, vb = a.vector(kind), b.vector(kind)
    if va is None or vb is None:
        return float("nan")
    return float(acute_angle_deg(va, vb))


def primary_defect(report: DefectReport) -> Defect | None:
    """The major defect with the largest peak ratio (ties: more states); None without a major defect."""
    if not len(report):
        return None
    return max(report, key=lambda d: (d.peak_ratio, d.n_states, -d.index))


def _defect_summary(d: Defect) -> dict[str, Any]:
    return {
        "index": d.index,
        "explosion_layer": d.explosion_layer,
        "first_layer": d.first_layer,
        "last_layer": d.last_layer,
        "peak_ratio": round(d.peak_ratio, 3),
        "n_states": d.n_states,
        "initial_token": d.initial_token,
        "noninitial_tokens": [t for t, _ in d.noninitial_tokens[:8]],
    }


def compute_signature(
    model: HookedModel,
    texts: Sequence[str] | None = None,
    *,
    defects: DefectReport | None = None,
    block: int | None = None,
    empirical: bool = True,
    threshold: float = 4.0,
    fit_method: str = "gaussian",
    max_tokens_per_text: int | None = 64,
    batch_size: int = 16,
    name: str | None = None,
) -> Signature:
    """Both signatures of ``model`` (see the module docstring).

    Args:
        model: a TransformerLens model (:func:`sd_lens.load_model`).
        texts: the corpus for the empirical signature (default: :func:`sd_lens.corpus.default_corpus`).
            Ignored for the defects when ``defects`` is given (then it only names the corpus in the hash).
        defects: a :class:`~sd_lens.analyses.defects.DefectReport` of this model already computed
            (e.g. ``run_analysis(...).defects``): no forward pass is repeated.
        block: read the weights signature at this block instead of the primary defect's explosion
            block. Without a major defect on the corpus it is required (the signature is then
            weights-only, ``empirical`` None).
        empirical: False: weights only (needs ``block``; no text, no forward pass).
        threshold: high-norm threshold of the defect finder (multiples of the block's median norm).
        fit_method: FFN linearisation (:func:`~sd_lens.analyses.ffn_fit.fit_ffn`), ``"gaussian"`` by default.
        max_tokens_per_text: truncation of each text for the probe.
        batch_size: texts per forward pass.
        name: the model's name in the signature (default: the model's own).

    Raises:
        InputError: bad arguments (checked before any forward pass), or no major defect and no ``block``.
    """
    t0 = time.perf_counter()
    from sd_lens import __version__

    view = model_view(model)
    n_layers, d_model = view.n_layers, view.d_model
    if block is not None:
        if isinstance(block, bool) or not isinstance(block, int) or not -n_layers <= block < n_layers:
            raise InputError(f"block must be an integer in 0..{n_layers - 1}, got {block!r}")
        block = block % n_layers
    if fit_method not in ("gaussian", "monte_carlo", "reference"):
        raise InputError(f"fit_method {fit_method!r}: choose gaussian, monte_carlo or reference (weights only)")
    if not empirical and block is None:
        raise InputError("a weights-only signature (empirical=False) needs block=: the explosion block comes from text")
    if not empirical and (texts is not None or defects is not None):
        raise InputError("empirical=False reads no text: do not pass texts or defects")
    corpus = validate_texts(read_texts(texts)) if empirical and (texts is not None or defects is None) else None
    if empirical and defects is None:
        assert corpus is not None
        probe = probe_norms(model, corpus, batch_size=batch_size, max_tokens_per_text=max_tokens_per_text)
        defects = find_defects(model, probe, threshold=threshold, batch_size=batch_size)
    primary = primary_defect(defects) if defects is not None else None
    if block is None:
        if primary is None:
            raise InputError(
                f"{model_name(model)} shows no major defect on this corpus (threshold {threshold:g}x the block median): "
                "there is no empirical signature and no explosion block; pass block= for a weights-only signature, "
                "or a lower threshold"
            )
        block = primary.explosion_layer
    # the defect's direction is already oriented along its states: keep that orientation
    emp = unit(primary.direction.detach().to("cpu", torch.float32)) if primary is not None else None
    lin = linearize_block(view.block(block), block, method=fit_method, n_eval=0)
    s0, u0, _ = top_singular(lin.L)
    weights = _sign_fixed(u0, emp)
    return Signature(
        model=name or model_name(model),
        d_model=d_model,
        n_layers=n_layers,
        empirical=emp,
        weights=weights,
        block=int(block),
        weights_s0=float(s0),
        defect=_defect_summary(primary) if primary is not None else None,
        n_major=len(defects) if defects is not None else None,
        corpus_hash=corpus_hash(corpus, max_tokens_per_text) if corpus is not None else None,
        n_texts=len(corpus) if corpus is not None else None,
        threshold=float(defects.threshold) if defects is not None else float(threshold),
        fit_method=fit_method,
        sd_lens_version=__version__,
        seconds=time.perf_counter() - t0,
    )
