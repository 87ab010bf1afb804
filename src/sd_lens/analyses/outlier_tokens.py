"""Outlier tokens (PrefixQuant's rule) and the prefix that takes them out of the text.

**The rule** (Chen et al., *PrefixQuant: Eliminating Outliers by Prefixed Tokens for Large Language
Models Quantization*, 2024, §3): at block ``l``, take the input of the FFN's down-projection (the
FFN hidden state, TransformerLens's ``blocks.{l}.mlp.hook_post``, the same hook for every family), and
for every token its largest magnitude over channels, ``m[t] = max_c |h[t, c]|``. A token is an
**outlier token** at that block when

    m[t] / median_t m[t]  >  eta          (eta = 64 in the paper)

the median running over the tokens of its own sequence (``torch.median``: the lower median for an
even count, as their ``stat_utils.py`` computes it). An *outlier token* here is one token occurrence
(text, position); it is reported once, with every block where it passes and its ratio at each.

**Defect carriers.** Given a :class:`~sd_lens.analyses.defects.DefectReport` (major defects and minor
groups), an occurrence carries a defect when it is at position 0 and the defect is carried by the
initial token, or when its token id is one of the defect's non-initial carrier tokens (its episodes'
token ids): the tie between PrefixQuant's outlier tokens and the high-norm tokens of Wang et al.

**The prefix intervention.** PrefixQuant puts a few tokens before every sequence (in the KV cache) so
that the outliers stay in the prefix and leave the text. Candidates, all read from the data:

* ``BOS`` — the model's BOS token (skipped when the tokenizer already puts it first: that is the
  baseline);
* ``most frequent`` — the most frequent outlier token after the first position (counted per block, as
  PrefixQuant counts; ties go to the smaller token id, so the order of the texts does not matter);
* ``'.'`` and ``'\\n'`` — when each is one token;
* ``PrefixQuant`` — their choice: the ``n`` most frequent outlier tokens after the first position,
  ``n = ceil(max over blocks of the mean number of outlier tokens per sequence)`` (dropped when only
  one distinct token was found in fewer than 10 % of the texts), then BOS.

**No double BOS.** The context put before a text's tokens is the prefix itself when it contains BOS
(the text's own BOS is dropped), else BOS then the prefix when the tokenizer puts BOS first, else the
prefix alone: every sequence holds BOS at most once.

For each candidate: the outlier tokens at the text's *later* positions (every token of the text the
baseline predicts: after its BOS, or after its first token without one) and their largest ratio, the
outliers inside the context, and the perplexity of the same text tokens
(:func:`~sd_lens.analyses.metrics.perplexity` with ``score_from``: the context is read,
not scored) against the baseline's. The medians of a prefixed sequence include its prefix, as in
PrefixQuant.

Reference code: github.com/ChenMnZ/PrefixQuant (``utils/stat_utils.py``; read for the method, nothing
copied). Memory: one float per token and block (the token-wise maxima).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.analyses.defects import DefectReport
from sd_lens.analyses.metrics import Perplexity, perplexity
from sd_lens.corpus import default_corpus
from sd_lens.errors import InputError, NonFiniteActivationError
from sd_lens.models.metadata import model_name
from sd_lens.runtime.engine import Batch, stream
from sd_lens.runtime.hooks import act_name, require_hooks
from sd_lens.runtime.tokens import Tokenized, bos_token_id, decode_one, encode, prepends_bos, tokenize
from sd_lens.types import HookedModel

__all__ = [
    "DEFAULT_ETA",
    "OutlierToken",
    "OutlierTokens",
    "PrefixTrial",
    "arrange_context",
    "find_outlier_tokens",
    "lower_median",
    "outlier_tokens",
    "prefix_candidates",
    "token_maxima",
]

#: PrefixQuant's threshold on ``max_c |h[t, c]|`` over its median over the sequence's tokens
DEFAULT_ETA = 64.0
#: the hook kind of the down-projection's input (``act_name(SITE, l)``: ``blocks.{l}.mlp.hook_post``)
SITE = "mlp_post"


def lower_median(x: Float[Tensor, " n"]) -> float:
    """The lower median of a 1-D tensor (``torch.median``: the smaller middle value for an even count)."""
    if x.numel() == 0:
        raise InputError("the median of nothing")
    return float(x.sort().values[(x.numel() - 1) // 2])


@dataclass(frozen=True, eq=False)
class OutlierToken:
    """One token occurrence that is an outlier token at one block or more.

    ``blocks`` and ``ratios`` (``m[t] / median m``) are aligned; ``values`` the token-wise maxima there.
    ``defects``: labels of the defects it carries (empty when none, or when no report was given).
    """

    seq: int
    position: int
    token: str
    token_id: int
    blocks: tuple[int, ...]
    ratios: tuple[float, ...]
    values: tuple[float, ...]
    defects: tuple[str, ...] = ()

    @property
    def ratio(self) -> float:
        """The largest ratio over its blocks."""
        return max(self.ratios)

    @property
    def block(self) -> int:
        """The block of the largest ratio."""
        return self.blocks[self.ratios.index(self.ratio)]

    @property
    def initial(self) -> bool:
        return self.position == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "position": self.position,
            "token": self.token,
            "token_id": self.token_id,
            "blocks": list(self.blocks),
            "ratios": [round(r, 2) for r in self.ratios],
            "values": [round(v, 3) for v in self.values],
            "defects": list(self.defects),
        }


@dataclass(frozen=True, eq=False)
class PrefixTrial:
    """One context before the texts (``name="none"``: the baseline) and what it does.

    ``prefix``: the candidate's tokens; ``context``: what is put before each text's tokens (BOS
    arranged: see the module docstring); ``later_outliers``: outlier tokens (occurrences, whatever
    their number of blocks) at the texts' later positions, ``later_by_block`` the same per block (an
    occurrence counts at each of its blocks), ``later_max_ratio`` the largest ratio there over every
    block; ``context_outliers``: outlier occurrences inside the context; ``perplexity``: of the same
    text tokens as the baseline.
    """

    name: str
    prefix: tuple[int, ...]
    prefix_strings: tuple[str, ...]
    context: tuple[int, ...]
    later_outliers: int
    later_max_ratio: float
    context_outliers: int
    later_by_block: dict[int, int]
    perplexity: Perplexity

    def to_dict(self, baseline: PrefixTrial | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "prefix": list(self.prefix),
            "prefix_strings": list(self.prefix_strings),
            "context": list(self.context),
            "later_outliers": self.later_outliers,
            "later_max_ratio": round(self.later_max_ratio, 2),
            "context_outliers": self.context_outliers,
            "later_by_block": {str(b): n for b, n in sorted(self.later_by_block.items())},
            "perplexity": round(self.perplexity.perplexity, 3),
            "mean_nll": round(self.perplexity.mean_nll, 4),
            "n_scored": self.perplexity.n_tokens,
        }
        if baseline is not None:
            out["perplexity_ratio"] = round(self.perplexity.perplexity / baseline.perplexity.perplexity, 4)
        return out


@dataclass(frozen=True, eq=False)
class OutlierTokens:
    """PrefixQuant's outlier tokens of a model on a corpus, and the prefix intervention.

    Attributes:
        eta: the threshold on the ratio.
        hook: the hook pattern read (``blocks.{l}.mlp.hook_post``).
        outliers: every outlier occurrence, by text then position.
        max_ratio: float32 ``[n_layers]``: the largest ratio at each block over the corpus.
        n_by_block: outlier occurrences at each block.
        per_sequence: outlier occurrences in each text.
        defects_checked: whether a defect report was given (``OutlierToken.defects`` is meaningful).
        baseline, trials: the prefix intervention (None / empty when it was not run); ``skipped``:
            candidates not tried, with the reason.
    """

    model: str
    n_layers: int
    eta: float
    hook: str
    n_texts: int
    n_tokens: int
    bos: bool
    outliers: list[OutlierToken]
    max_ratio: Tensor
    n_by_block: list[int]
    per_sequence: list[int]
    defects_checked: bool
    baseline: PrefixTrial | None = None
    trials: list[PrefixTrial] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.outliers)

    @property
    def initial(self) -> list[OutlierToken]:
        return [o for o in self.outliers if o.initial]

    @property
    def later(self) -> list[OutlierToken]:
        """Outlier occurrences after the first position."""
        return [o for o in self.outliers if not o.initial]

    def tokens(self) -> list[tuple[str, int, int]]:
        """``(string, id, occurrences)`` of each outlier token (position 0 shown as the initial token's id
        and string), most frequent first."""
        counts = Counter((o.token, o.token_id) for o in self.outliers)
        return [(s, i, n) for (s, i), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][1]))]

    @property
    def carriers(self) -> int:
        """Outlier occurrences that carry a defect."""
        return sum(bool(o.defects) for o in self.outliers)

    @property
    def best(self) -> PrefixTrial | None:
        """The trial with the fewest later outliers, then the lowest perplexity (None without trials)."""
        if not self.trials:
            return None
        return min(self.trials, key=lambda t: (t.later_outliers, t.perplexity.mean_nll))

    def summary(self) -> str:
        toks = ", ".join(f"{s!r} (id {i}) x{n}" for s, i, n in self.tokens()[:6])
        lines = [
            f"{len(self.outliers)} outlier tokens (max|h| over the median > {self.eta:g} at the down-projection input) "
            f"in {self.n_texts} texts: {toks or 'none'}; largest ratio {float(self.max_ratio.max()):.1f} "
            f"at block {int(self.max_ratio.argmax())}"
        ]
        if self.defects_checked and self.outliers:
            lines.append(f"  {self.carriers} of {len(self.outliers)} carry a defect")
        if self.baseline is not None:
            b = self.baseline
            lines.append(f"  no prefix: {b.later_outliers} later outliers, perplexity {b.perplexity.perplexity:.2f}")
            for t in self.trials:
                lines.append(
                    f"  {t.name} {list(t.prefix_strings)}: {t.later_outliers} later outliers, perplexity "
                    f"{t.perplexity.perplexity:.2f} (x{t.perplexity.perplexity / b.perplexity.perplexity:.3f})"
                )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "model": self.model,
            "n_layers": self.n_layers,
            "eta": self.eta,
            "hook": self.hook,
            "n_texts": self.n_texts,
            "n_tokens": self.n_tokens,
            "bos": self.bos,
            "n_outliers": len(self.outliers),
            "n_initial": len(self.initial),
            "n_later": len(self.later),
            "tokens": [{"token": s, "token_id": i, "count": n} for s, i, n in self.tokens()],
            "outliers": [o.to_dict() for o in self.outliers],
            "max_ratio": [round(float(x), 2) for x in self.max_ratio],
            "n_by_block": list(self.n_by_block),
            "per_sequence": list(self.per_sequence),
            "defects_checked": self.defects_checked,
            "carriers": self.carriers if self.defects_checked else None,
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "trials": [t.to_dict(self.baseline) for t in self.trials],
            "best": None if best is None else best.name,
            "skipped": dict(self.skipped),
            "seconds": round(self.seconds, 3),
        }


# ------------------------------------------------------------------------------------------------
# the rule
# ------------------------------------------------------------------------------------------------
def _token_max(act: Tensor, batch: Batch) -> Tensor:
    return act.detach().abs().amax(dim=-1).float()


def token_maxima(
    model: HookedModel, sequences: Sequence[Tensor], *, batch_size: int = 16, site: str = SITE
) -> list[Float[Tensor, "n_layers pos"]]:
    """``max_c |h[t, c]|`` of every token at every block's down-projection input (or at another hook kind
    ``site``, e.g. ``"mlp_out"``: the FFN's output after any post-norm), per sequence."""
    n_layers = int(model.cfg.n_layers)
    names = [act_name(site, layer) for layer in range(n_layers)]
    require_hooks(model, names)
    out: list[Tensor | None] = [None] * len(sequences)
    for batch, values in stream(model, sequences, {n: _token_max for n in names}, batch_size=batch_size):
        stacked = torch.stack([values[n] for n in names], dim=1)  # [B, n_layers, T]
        if not torch.isfinite(stacked[batch.mask.cpu()[:, None, :].expand_as(stacked)]).all():
            raise NonFiniteActivationError(
                f"non-finite activation at {site}: the model overflowed or is NaN"
            )
        for row, i in enumerate(batch.index):
            out[i] = stacked[row, :, : int(batch.lengths[row])].clone()
    return [t for t in out if t is not None]


def find_outlier_tokens(
    maxima: Sequence[Float[Tensor, "n_layers pos"]], eta: float = DEFAULT_ETA
) -> tuple[list[list[tuple[int, int, float, float]]], Tensor]:
    """PrefixQuant's rule on token-wise maxima: per sequence, the ``(position, block, ratio, value)`` with
    ``value / lower median over the sequence's positions > eta``; and the largest ratio per block."""
    _check_eta(eta)
    n_layers = maxima[0].shape[0] if maxima else 0
    best = torch.zeros(n_layers)
    found: list[list[tuple[int, int, float, float]]] = []
    for m in maxima:
        n = m.shape[1]
        med = m.sort(dim=1).values[:, (n - 1) // 2]  # lower median per block
        ratio = torch.where(med[:, None] > 0, m / med[:, None].clamp_min(torch.finfo(torch.float32).tiny), torch.inf)
        ratio = torch.where(m > 0, ratio, torch.zeros_like(ratio))
        best = torch.maximum(best, ratio.amax(dim=1))
        hits = torch.nonzero(ratio > eta).tolist()
        found.append(sorted((p, b, float(ratio[b, p]), float(m[b, p])) for b, p in hits))
    return found, best


def _check_eta(eta: float) -> None:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (math.isfinite(eta) and eta > 0):
        raise InputError(f"eta must be a positive number, got {eta!r}")


def _carriers(report: DefectReport | None) -> list[tuple[str, bool, set[int]]]:
    if report is None:
        return []
    return [
        (d.label, d.initial_token, {e.token_id for e in d.episodes if not e.initial}) for d in report.all
    ]


# ------------------------------------------------------------------------------------------------
# prefixes
# ------------------------------------------------------------------------------------------------
def arrange_context(prefix: Sequence[int], bos: int | None, text_has_bos: bool) -> tuple[int, ...]:
    """The tokens put before a text's own tokens (its BOS removed) for ``prefix``: never a double BOS.

    The prefix itself when it holds BOS; else BOS then the prefix when the tokenizer puts BOS first
    (``text_has_bos``); else the prefix alone.
    """
    prefix = tuple(int(t) for t in prefix)
    if bos is not None and bos in prefix:
        return prefix
    if text_has_bos:
        if bos is None:
            raise InputError("text_has_bos needs the BOS id")
        return (bos, *prefix)
    return prefix


def _later_counts(found: list[list[tuple[int, int, float, float]]], start: int) -> Counter[int]:
    counts: Counter[int] = Counter()
    for hits in found:
        for p, b, _, _ in hits:
            if p >= start:
                counts[b] += 1
    return counts


def prefix_candidates(
    model: HookedModel, found: list[list[tuple[int, int, float, float]]], sequences: Sequence[Tensor]
) -> tuple[list[tuple[str, tuple[int, ...]]], dict[str, str]]:
    """The candidate prefixes read from the outliers ``found`` on ``sequences`` (module docstring), and the
    candidates skipped with the reason. Duplicate contexts are dropped (the first name is kept)."""
    bos, has_bos = bos_token_id(model), prepends_bos(model)
    cands: list[tuple[str, tuple[int, ...]]] = []
    skipped: dict[str, str] = {}
    if bos is None:
        skipped["BOS"] = "the model has no BOS token"
    elif has_bos:
        skipped["BOS"] = "the tokenizer already puts BOS first: that is the baseline"
    else:
        cands.append(("BOS", (bos,)))
    # PrefixQuant counts the non-initial outlier tokens once per block where they pass
    later = Counter(int(sequences[i][p]) for i, hits in enumerate(found) for p, _, _, _ in hits if p > 0)
    ranked = [t for t, _ in sorted(later.items(), key=lambda kv: (-kv[1], kv[0]))]  # ties: the smaller id
    if ranked:
        cands.append(("most frequent", (ranked[0],)))
    else:
        skipped["most frequent"] = "no outlier token after the first position"
    for name, text in (("'.'", "."), ("'\\n'", "\n")):
        ids = encode(model, text, prepend_bos=False)
        if len(ids) == 1:
            cands.append((name, (int(ids[0]),)))
        else:
            skipped[name] = f"{text!r} is {len(ids)} tokens"
    per_block = Counter(b for hits in found for _, b, _, _ in hits)
    n = math.ceil(max(per_block.values()) / len(found)) if per_block and found else 0
    if len(later) == 1 and later.most_common(1)[0][1] < 0.1 * len(found):
        n -= 1  # PrefixQuant's corner case: one rare outlier token is not worth a prefix slot
    quant = tuple(ranked[: max(n, 0)]) + (() if bos is None else (bos,))
    if quant:
        cands.append(("PrefixQuant", quant))
    else:
        skipped["PrefixQuant"] = "no outlier token and no BOS"
    out: list[tuple[str, tuple[int, ...]]] = []
    seen = {arrange_context((), bos, has_bos)}  # the baseline's context
    for name, prefix in cands:
        ctx = arrange_context(prefix, bos, has_bos)
        if ctx in seen:
            skipped[name] = "the same context as an earlier candidate or the baseline"
            continue
        seen.add(ctx)
        out.append((name, prefix))
    return out, skipped


# ------------------------------------------------------------------------------------------------
# the analysis
# ------------------------------------------------------------------------------------------------
def outlier_tokens(
    model: HookedModel,
    texts: Sequence[str] | Tokenized | None = None,
    *,
    eta: float = DEFAULT_ETA,
    defects: DefectReport | None = None,
    prefixes: bool = True,
    candidates: Sequence[tuple[str, Sequence[int]]] | None = None,
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
) -> OutlierTokens:
    """Find PrefixQuant's outlier tokens on ``texts`` and try the prefixes that would take them out.

    Args:
        model: a TransformerLens model (:func:`sd_lens.load_model`).
        texts: strings, a :class:`~sd_lens.runtime.tokens.Tokenized`, or None for
            :func:`~sd_lens.corpus.default_corpus`.
        eta: the threshold on ``max|h| / median`` (PrefixQuant: 64).
        defects: a :class:`~sd_lens.analyses.defects.DefectReport` of ``model`` to tie each outlier token to
            the defects it carries (None: not checked).
        prefixes: also run the prefix intervention.
        candidates: ``(name, token ids)`` prefixes to try instead of :func:`prefix_candidates`.
        batch_size, max_tokens_per_text: as everywhere (a text is truncated before its prefix is added).

    Raises:
        InputError: bad arguments (before any forward).
        NonFiniteActivationError: NaN or inf activations.
    """
    _check_eta(eta)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if defects is not None and defects.n_layers != int(model.cfg.n_layers):
        raise InputError(f"the defect report covers {defects.n_layers} blocks, the model {model.cfg.n_layers}")
    t0 = time.perf_counter()
    tok = texts if isinstance(texts, Tokenized) else tokenize(
        model, default_corpus() if texts is None else texts, max_tokens_per_text=max_tokens_per_text
    )
    seqs = tok.sequences
    bos, has_bos = bos_token_id(model), prepends_bos(model)
    maxima = token_maxima(model, seqs, batch_size=batch_size)
    found, best = find_outlier_tokens(maxima, eta)
    carriers = _carriers(defects)
    strings: dict[int, str] = {}

    def string(t: int) -> str:
        if t not in strings:
            strings[t] = decode_one(model, t)
        return strings[t]

    outliers: list[OutlierToken] = []
    for i, hits in enumerate(found):
        by_pos: dict[int, list[tuple[int, float, float]]] = {}
        for p, b, r, v in hits:
            by_pos.setdefault(p, []).append((b, r, v))
        for p, rows in sorted(by_pos.items()):
            tid = int(seqs[i][p])
            labels = tuple(lab for lab, init, ids in carriers if (p == 0 and init) or (p > 0 and tid in ids))
            outliers.append(OutlierToken(
                seq=i, position=p, token=string(tid), token_id=tid, blocks=tuple(b for b, _, _ in rows),
                ratios=tuple(r for _, r, _ in rows), values=tuple(v for _, _, v in rows), defects=labels,
            ))
    n_layers = int(model.cfg.n_layers)
    n_by_block = [0] * n_layers
    for hits in found:
        for _, b, _, _ in hits:
            n_by_block[b] += 1
    baseline = None
    trials: list[PrefixTrial] = []
    skipped: dict[str, str] = {}
    if prefixes:
        if candidates is None:
            cands, skipped = prefix_candidates(model, found, seqs)
        else:
            cands = [(str(name), tuple(int(t) for t in ids)) for name, ids in candidates]
        base_ctx = arrange_context((), bos, has_bos)
        words = [s[len(base_ctx):] for s in seqs]  # each text's own tokens, its BOS removed
        if all(len(w) < 1 for w in words):
            raise InputError("every text is empty after its BOS: there is nothing to prefix")

        def trial(name: str, prefix: tuple[int, ...], reuse: list[list[tuple[int, int, float, float]]] | None = None) -> PrefixTrial:
            ctx = arrange_context(prefix, bos, has_bos)
            start = len(ctx) + (0 if has_bos else 1)  # the text tokens the baseline predicts
            prefixed = [torch.cat([torch.tensor(ctx, dtype=torch.long), w.long()]) for w in words]
            if reuse is None:
                hits, _ = find_outlier_tokens(token_maxima(model, prefixed, batch_size=batch_size), eta)
            else:
                hits = reuse
            later = _later_counts(hits, start)
            later_max = max((r for h in hits for p, _, r, _ in h if p >= start), default=0.0)
            ppl = perplexity(model, Tokenized(prefixed, list(tok.texts)), kl=False, batch_size=batch_size,
                             score_from=start)
            return PrefixTrial(
                name=name, prefix=prefix, prefix_strings=tuple(string(t) for t in prefix), context=ctx,
                later_outliers=sum(len({p for p, _, _, _ in h if p >= start}) for h in hits),
                later_max_ratio=later_max,
                context_outliers=sum(len({p for p, _, _, _ in h if p < len(ctx)}) for h in hits),
                later_by_block=dict(later), perplexity=ppl,
            )

        baseline = trial("none", (), found)
        trials = [trial(name, prefix) for name, prefix in cands]
    return OutlierTokens(
        model=model_name(model), n_layers=n_layers, eta=float(eta), hook=act_name(SITE, 0).replace(".0.", ".{l}."),
        n_texts=len(seqs), n_tokens=tok.n_tokens, bos=has_bos, outliers=outliers, max_ratio=best.float(),
        n_by_block=n_by_block, per_sequence=[len({p for p, _, _, _ in h}) for h in found],
        defects_checked=defects is not None, baseline=baseline, trials=trials, skipped=skipped,
        seconds=time.perf_counter() - t0,
    )
