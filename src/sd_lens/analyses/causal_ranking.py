"""Causal ranking: every defect and every massive activation, ordered by what removing it does.

A tool that ranks findings by magnitude misleads: a 2025 replication of Sun et al. found that zeroing the
massive activations of GPT-2, OPT-6.7b or gemma-3-1b leaves perplexity almost unchanged, while
Llama-3.2-1B goes from 9.07 to 7 365. Here each finding is *removed* on held-out texts and scored with a
:class:`~sd_lens.analyses.causal_score.CausalScore` (perplexity ratio and KL to the clean model, with a
matched random control); findings are ordered by :func:`~sd_lens.analyses.causal_score.ranked`, and a
finding whose removal moves the model by less than ``inert_kl`` nats per token is labelled
**"massive but inert"**.

* **A defect** (``"D0"``): its direction ``u`` is projected out of the residual stream (``resid_post``) at
  every block from its first to its last high-norm block, at the positions that carry it — decided per
  token at run time by the defect finder's own hysteresis: ``|x · u| >= threshold / 2 x`` the block's
  typical norm (:func:`remove_defect`). Control: the same positions and blocks, a random unit direction
  projected out instead (one per seed).
* **A massive activation** (``"c507@11"``): its channel set to zero at its emergence block in the entries
  that are massive by Sun et al.'s criterion, decided per sequence at run time
  (:func:`~sd_lens.analyses.causal.massive.set_massive`, as the ``interventions`` stage does, one
  channel at a time). Control: the same entries of a random channel that is not an outlier channel set to
  zero instead (one per seed).
* **A super weight** (``"W[507,1229]@11"``), when :func:`~sd_lens.analyses.super_weights.super_weights` ran:
  its own verification (the one weight zeroed against random entries of the same magnitude in the same
  matrix, on the same held-out texts), ranked in by :meth:`CausalRanking.including` with
  :func:`super_weight_findings` (the pipeline does it when both stages run).

Perplexity and KL come from :func:`~sd_lens.analyses.metrics.edited_perplexities`: every removal and
every control of every finding in shared forwards, each with one clean copy of its texts (rows ``[clean |
edit 1 | ... | edit k]``), as :func:`~sd_lens.analyses.metrics.perplexity` would measure each alone.
``n_edited`` says how many entries (defect: positions x blocks) the removal touched on the held-out texts; a
finding absent from them has 0 and a KL of 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.analyses.activation_outliers import ActivationOutliers, activation_outliers
from sd_lens.analyses.causal.massive import emergence_targets, massive_mask, set_massive
from sd_lens.analyses.causal_score import INERT_KL, CausalScore, ranked
from sd_lens.analyses.defects import DefectReport
from sd_lens.analyses.metrics import Perplexity, edited_perplexities
from sd_lens.corpus import check_held_out, default_corpus, held_out_texts
from sd_lens.errors import InputError
from sd_lens.linalg import unit
from sd_lens.models.metadata import model_name
from sd_lens.runtime.engine import real_mask
from sd_lens.runtime.hooks import act_name
from sd_lens.runtime.reducers import resident
from sd_lens.runtime.tokens import tokenize
from sd_lens.types import HookedModel, HookFn

if TYPE_CHECKING:
    from sd_lens.analyses.super_weights import SuperWeights

#: one edit: the forward hooks that make it
_Hooks = list[tuple[str, HookFn]]

__all__ = [
    "CausalRanking", "RankedFinding", "causal_ranking", "remove_defect", "super_weight_findings", "zero_like_massive",
]


def remove_defect(
    direction: Float[Tensor, " d"],
    low: float,
    *,
    remove: Float[Tensor, " d"] | None = None,
    tally: dict[str, int] | None = None,
) -> HookFn:
    """Hook projecting ``remove`` (default: ``direction``) out of the positions whose component along
    ``direction`` is at least ``low`` in magnitude (the defect's carriers at this block).

    With ``remove`` a random unit vector it is the matched control (same positions, another direction).
    ``tally["entries"]`` counts the positions edited.
    """
    u = resident(unit(direction.detach().float()))
    r = resident(unit((direction if remove is None else remove).detach().float()))

    def hook(act: Tensor, hook: Any) -> Tensor:
        a = act.float()
        carriers = (a @ u(act.device)).abs() >= low
        real = real_mask()
        if real is not None and tuple(real.shape) == tuple(carriers.shape):
            carriers &= real.to(act.device)
        v = r(act.device)
        coef = (a @ v) * carriers
        if tally is not None:
            tally["entries"] = tally.get("entries", 0) + int(carriers.sum())
        return (a - coef[..., None] * v).to(act.dtype)

    return hook


def zero_like_massive(
    channel: int, target: int, *, relative: float = 1000.0, absolute: float | None = 100.0,
    tally: dict[str, int] | None = None,
) -> HookFn:
    """Hook zeroing channel ``target`` in the entries where ``channel`` is massive (Sun et al.'s criterion,
    per sequence): the matched control of zeroing ``channel`` there."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        real = real_mask()
        if real is not None and tuple(real.shape) != tuple(act.shape[:2]):
            real = None
        mask = massive_mask(act, [channel], relative=relative, absolute=absolute, real=real)[..., 0]
        out = act.clone()
        out[..., target] = torch.where(mask, torch.zeros((), dtype=act.dtype, device=act.device), act[..., target])
        if tally is not None:
            tally["entries"] = tally.get("entries", 0) + int(mask.sum())
        return out

    return hook


@dataclass(frozen=True)
class RankedFinding:
    """One finding with its causal score: ``kind`` (``"defect"`` or ``"massive activation"``), where it was
    removed (``blocks``; ``channel`` for a massive activation), how many entries that touched."""

    score: CausalScore
    kind: str
    blocks: tuple[int, ...]
    channel: int | None
    n_edited: int
    control_seeds: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.score.name

    @property
    def label(self) -> str:
        """``"causal"`` or ``"massive but inert"``."""
        return self.score.label

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.score.to_dict(), "label": self.label, "kind": self.kind, "blocks": list(self.blocks),
            "channel": self.channel, "n_edited": self.n_edited, "control_seeds": list(self.control_seeds),
        }


@dataclass(frozen=True, eq=False)
class CausalRanking:
    """Every finding of a model, ordered by causal effect (largest KL first; see the module docstring)."""

    model: str
    findings: tuple[RankedFinding, ...]
    clean: Perplexity
    inert_kl: float
    held_out_texts: int
    seconds: float = field(default=0.0)

    def __len__(self) -> int:
        return len(self.findings)

    def __iter__(self):
        return iter(self.findings)

    def __getitem__(self, i: int) -> RankedFinding:
        return self.findings[i]

    def find(self, name: str) -> RankedFinding:
        for f in self.findings:
            if f.name == name:
                return f
        raise InputError(f"no finding {name!r}; the findings are {[f.name for f in self.findings]}")

    @property
    def inert(self) -> list[RankedFinding]:
        return [f for f in self.findings if f.score.inert]

    def summary(self) -> str:
        lines = [f"causal ranking on {self.held_out_texts} held-out texts (clean perplexity {self.clean.perplexity:.3f}); "
                 f"inert below KL {self.inert_kl:g} nats/token"]
        for i, f in enumerate(self.findings, 1):
            s = f.score
            ctrl = "" if s.control_kl is None else f" (control KL {s.control_kl:.4f})"
            lines.append(f"  {i}. {f.name} [{f.kind}]: KL {s.kl:.4f}, perplexity x{s.ppl_ratio:.3g}{ctrl} -> {f.label}")
        return "\n".join(lines)

    def including(self, extra: Sequence[RankedFinding]) -> CausalRanking:
        """This ranking with ``extra`` findings (e.g. :func:`super_weight_findings`) ranked in, each judged
        inert against this ranking's ``inert_kl``. The extra scores must come from the same held-out texts
        (the pipeline measures both on :func:`sd_lens.corpus.held_out_texts` of the corpus)."""
        rejudged = [replace(f, score=replace(f.score, inert_kl=self.inert_kl)) for f in extra]
        by_name = {f.name: f for f in (*self.findings, *rejudged)}
        order = ranked(f.score for f in by_name.values())
        return replace(self, findings=tuple(by_name[s.name] for s in order))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "inert_kl": self.inert_kl, "held_out_texts": self.held_out_texts,
            "clean": self.clean.to_dict(), "findings": [f.to_dict() for f in self.findings],
            "inert": [f.name for f in self.inert], "seconds": round(self.seconds, 3),
        }


def _ratio(p: Perplexity, clean: Perplexity) -> float:
    return p.perplexity / clean.perplexity if math.isfinite(p.perplexity) else math.inf


def causal_ranking(
    model: HookedModel,
    report: DefectReport,
    outliers: ActivationOutliers | None = None,
    held_out: Sequence[str] | None = None,
    *,
    texts: Sequence[str] | None = None,
    seeds: int = 3,
    seed: int = 0,
    inert_kl: float = INERT_KL,
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
) -> CausalRanking:
    """Score and rank every major defect of ``report`` and every massive activation of ``outliers``.

    Args:
        model: a TransformerLens model.
        report: its defects (the removal uses their directions, blocks, threshold and typical norms).
        outliers: its massive activations (``resid_post`` channels); None: computed on ``texts``.
        held_out: where perplexity and KL are measured (default: :func:`sd_lens.corpus.held_out_texts` of ``texts``).
        texts: the corpus the findings came from (default: :func:`~sd_lens.corpus.default_corpus`).
        seeds: random controls per finding (0: none).
        seed: the first control's seed (then ``seed + 1``, ...).
        inert_kl: the KL (nats per token) below which a finding is "massive but inert".

    Raises:
        InputError: bad arguments (before any forward).
    """
    t0 = time.perf_counter()
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 0:
        raise InputError(f"seeds must be a non-negative integer, got {seeds!r}")
    if isinstance(inert_kl, bool) or not isinstance(inert_kl, (int, float)) or not (math.isfinite(inert_kl) and inert_kl > 0):
        raise InputError(f"inert_kl must be a positive number of nats, got {inert_kl!r}")
    texts = default_corpus() if texts is None else list(texts)
    held = held_out_texts(texts) if held_out is None else list(held_out)
    check_held_out(texts, held, "findings' corpus")
    if outliers is None:
        outliers = activation_outliers(model, texts, batch_size=batch_size, max_tokens_per_text=max_tokens_per_text,
                                       sites=("resid_post",))
    tok = tokenize(model, held, max_tokens_per_text=max_tokens_per_text)
    d = int(model.cfg.d_model)
    control_seeds = tuple(range(seed, seed + seeds))
    # every finding's removal and its controls first; then all of them measured in shared forwards
    # (edited_perplexities: one clean copy of the texts per forward for every edit)
    pending: list[tuple[str, str, tuple[int, ...], int | None, dict[str, int], list[_Hooks]]] = []

    for defect in report:
        blocks = tuple(range(defect.first_layer, defect.last_layer + 1))
        lows = {b: report.threshold / 2 * float(report.typical_norm[b]) for b in blocks}
        u = defect.direction.float()
        tally: dict[str, int] = {}
        main: _Hooks = [(act_name("resid_post", b), remove_defect(u, lows[b], tally=tally)) for b in blocks]

        def remove_random(s: int, u: Tensor = u, blocks: tuple[int, ...] = blocks, lows: dict[int, float] = lows) -> _Hooks:
            r = torch.randn(d, generator=torch.Generator().manual_seed(s))
            return [(act_name("resid_post", b), remove_defect(u, lows[b], remove=r)) for b in blocks]

        pending.append(("defect", defect.label, blocks, None, tally,
                        [main, *(remove_random(s) for s in control_seeds)]))
    channels = outliers.channels("resid_post") if "resid_post" in outliers.sites else []
    rel, ab = outliers.relative, outliers.absolute
    for b, cs in emergence_targets(outliers).items() if channels else ():
        for c in cs:
            tally = {}
            main = [(act_name("resid_post", b), set_massive([c], initial=0.0, relative=rel, absolute=ab, tally=tally))]
            others = [k for k in range(d) if k not in set(channels)]

            def zero_random(s: int, b: int = b, c: int = c, others: list[int] = others) -> _Hooks:
                g = torch.Generator().manual_seed(s)
                target = others[int(torch.randint(len(others), (1,), generator=g))]
                return [(act_name("resid_post", b), zero_like_massive(c, target, relative=rel, absolute=ab))]

            pending.append(("massive activation", f"c{c}@{b}", (b,), c, tally, [main, *(zero_random(s) for s in control_seeds if others)]))
    clean, runs = edited_perplexities(model, tok, [e for *_, edits in pending for e in edits], batch_size=batch_size)
    found: list[RankedFinding] = []
    at = 0
    for kind, name, blocks, channel, tally, edits in pending:
        p, controls = runs[at], runs[at + 1 : at + len(edits)]
        at += len(edits)
        c_ratio = sum(_ratio(q, clean) for q in controls) / len(controls) if controls else None
        c_kl = sum(float(q.kl or 0.0) for q in controls) / len(controls) if controls else None
        found.append(RankedFinding(
            CausalScore(name, _ratio(p, clean), float(p.kl or 0.0), c_ratio, c_kl, float(inert_kl)),
            kind, blocks, channel, sum(tally.values()), control_seeds,
        ))
    by_name = {f.name: f for f in found}
    order = tuple(by_name[s.name] for s in ranked(f.score for f in found))
    return CausalRanking(
        model=model_name(model), findings=order, clean=clean, inert_kl=float(inert_kl), held_out_texts=len(held),
        seconds=time.perf_counter() - t0,
    )


def super_weight_findings(found: SuperWeights) -> list[RankedFinding]:
    """Every verified super weight (emitters and cancellers) as a finding of the ranking: removed by zeroing
    the one weight, against zeroing random entries of the same magnitude in the same matrix."""
    return [
        RankedFinding(
            score=w.score, kind="super weight", blocks=(w.block,), channel=w.row, n_edited=1,
            control_seeds=tuple(range(len(w.verification.controls))) if w.verification is not None else (),
        )
        for d in found.defects for w in d.weights if w.score is not None
    ]
