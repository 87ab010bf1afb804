"""Activation outliers: the channels whose values stand out by orders of magnitude, and who carries them.

For every block and two sites — the residual stream after the block (``resid_post``, d_model
channels) and the input of the FFN's down-projection (``blocks.l.mlp.hook_post``, d_mlp channels) —
the corpus is streamed once and, per channel, the largest magnitudes are kept with where they occur
(text row, position, token id), together with a median magnitude.

**Massive activation** (Sun et al., *Massive Activations in Large Language Models*, 2024, §2): a
value whose magnitude is above ``absolute`` (100 in the paper; ``None`` drops this test) and at least
``relative`` (1000 in the paper) times a median magnitude. Which median is the ``median`` argument:

* ``"block"`` (default, as in the paper): the median of ``|value|`` over every channel and token of
  that site at that block;
* ``"channel"``: the median of ``|value|`` of that channel over tokens — a value then counts only
  when it stands out within its own channel (a channel large for every token is not an outlier).

**Carriers.** Per channel the ``top_k`` largest magnitudes over *distinct carriers* are kept, a
carrier being "the initial token" (position 0: its state is the same in every text that starts with
BOS) or a token id elsewhere; each is classed as An et al., *Systematic Outliers in Large Language
Models* (ICLR 2025), §3, class tokens: ``"initial"`` (position 0), ``"delimiter"`` (the decoded
string is whitespace only or punctuation only, newline included), ``"weak_semantic"`` (one of
:data:`WEAK_SEMANTIC`, case-insensitive, stripped) or ``"other"``.

**Memory.** Nothing grows with tokens × d_model. Maxima are running (``top_k`` × channels per site and
block). The median is the *exact median over a fixed, deterministic subsample* of at most
``median_tokens`` token states: every token gets a pseudo-random key, a hash of its token prefix
(which fixes its state exactly in a causal model) and of its occurrence count among identical
prefixes; the ``median_tokens`` smallest keys are the sample. The sample therefore does not depend
on the order of the texts nor on the batch size (unlike a combination of per-batch medians, which
changes with how tokens fall into batches and has no error bound), it is a uniform random sample of
the token states (so its median is a consistent estimate, with a known sampling error — about
±1.25 σ/√n — negligible against a ratio of 1000), and when the corpus has at most
``median_tokens`` tokens it is the exact median over all of them.

Reference code: github.com/locuslab/massive-activations and github.com/an-yongqi/systematic-outliers
(read for the method; nothing here is copied or tuned to a model).
"""

from __future__ import annotations

import hashlib
import math
import time
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.corpus import default_corpus
from sd_lens.errors import InputError, NonFiniteActivationError, UnsupportedArchitectureError
from sd_lens.models.metadata import model_name
from sd_lens.runtime.engine import Batch, Pass, run_passes
from sd_lens.runtime.hooks import act_name
from sd_lens.runtime.tokens import Tokenized, decode_one, tokenize
from sd_lens.types import HookedModel

__all__ = [
    "SITES",
    "TOKEN_CLASSES",
    "WEAK_SEMANTIC",
    "ActivationOutliers",
    "OutlierEntry",
    "activation_outliers",
    "activation_outliers_pass",
    "defect_channels",
    "token_class",
]

#: the two sites: TransformerLens hook-point kinds (``act_name(site, layer)``)
SITES = ("resid_post", "mlp_post")
TOKEN_CLASSES = ("initial", "delimiter", "weak_semantic", "other")
#: function words An et al. call weak-semantic tokens (lower case; compared stripped, case-insensitive)
WEAK_SEMANTIC = frozenset(
    "the a an of and or but to in on at for with by from as is are was were be been it its that this "
    "these those which who".split()
)
_INITIAL_KEY = -1  # carrier key of position 0 (token ids are >= 0)
_EMPTY_KEY = -2


def token_class(token: str, position: int) -> str:
    """An et al.'s class of a token: ``initial``, ``delimiter``, ``weak_semantic`` or ``other``.

    ``delimiter``: the decoded string is empty after stripping whitespace (space, newline, tab) or
    every remaining character is Unicode punctuation (category ``P*``).
    """
    if position == 0:
        return "initial"
    s = token.strip()
    if not s or all(unicodedata.category(ch).startswith("P") for ch in s):
        return "delimiter"
    if s.lower() in WEAK_SEMANTIC:
        return "weak_semantic"
    return "other"


def _median(x: Tensor, dim: int | None = None) -> Tensor:
    """Exact median along ``dim`` (None: of all entries); the mean of the two middle values for an even count."""
    return torch.from_numpy(np.asarray(np.median(x.numpy(), axis=dim), dtype=np.float32))


def _ratio(value: float, median: float) -> float:
    return value / median if median > 0 else math.inf


@dataclass(frozen=True, eq=False)
class OutlierEntry:
    """One massive activation: a carrier's largest value in one channel at one site of one block.

    ``value`` is signed; ``ratio`` is ``|value|`` over the median the criterion used (``median``);
    ``seq`` the text index, ``position`` the token's position (0: the initial token).
    """

    block: int
    site: str
    channel: int
    value: float
    ratio: float
    median: float
    token: str
    token_id: int
    position: int
    seq: int
    token_class: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "site": self.site,
            "channel": self.channel,
            "value": round(self.value, 3),
            "ratio": round(self.ratio, 1) if math.isfinite(self.ratio) else None,
            "median": round(self.median, 6),
            "token": self.token,
            "token_id": self.token_id,
            "position": self.position,
            "seq": self.seq,
            "token_class": self.token_class,
        }


@dataclass(frozen=True, eq=False)
class ActivationOutliers:
    """Massive activations of a model on a corpus (see the module docstring for the definitions).

    Attributes:
        entries: every outlier (block, site, channel, carrier), largest ratio first within a block.
        max_abs, max_value: per site, float32 [n_layers, n_channels]: each channel's largest
            ``|value|`` over the corpus and its signed value.
        max_seq, max_position, max_token: per site, long [n_layers, n_channels]: where it occurs.
        channel_median: per site, float32 [n_layers, n_channels]: median ``|value|`` over the sample.
        block_median: per site, float32 [n_layers]: median ``|value|`` over channels and sampled tokens.
        n_median_tokens: size of the median's token sample (all tokens when the corpus is smaller).
    """

    model: str
    n_layers: int
    sites: tuple[str, ...]
    relative: float
    absolute: float | None
    median: str
    top_k: int
    entries: list[OutlierEntry]
    max_abs: dict[str, Tensor]
    max_value: dict[str, Tensor]
    max_seq: dict[str, Tensor]
    max_position: dict[str, Tensor]
    max_token: dict[str, Tensor]
    channel_median: dict[str, Tensor]
    block_median: dict[str, Tensor]
    n_tokens: int
    n_texts: int
    n_median_tokens: int
    token_strings: dict[int, str]
    seconds: float

    def __len__(self) -> int:
        return len(self.entries)

    def _check_site(self, site: str) -> None:
        if site not in self.sites:
            raise InputError(f"unknown site {site!r}; this result has {self.sites}")

    def channels(self, site: str = "resid_post", blocks: Iterable[int] | None = None) -> list[int]:
        """Distinct outlier channels at ``site`` (optionally only in ``blocks``), most frequent first."""
        self._check_site(site)
        keep = None if blocks is None else set(blocks)
        counts = Counter(e.channel for e in self.entries if e.site == site and (keep is None or e.block in keep))
        return [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    def by_block(self, site: str | None = None) -> dict[int, list[OutlierEntry]]:
        """Outlier entries grouped by block (only blocks that have some), optionally at one site."""
        if site is not None:
            self._check_site(site)
        out: dict[int, list[OutlierEntry]] = {}
        for e in self.entries:
            if site is None or e.site == site:
                out.setdefault(e.block, []).append(e)
        return out

    def by_class(self, site: str | None = None) -> dict[str, int]:
        """How many entries each token class carries (An et al.'s table of outlier tokens)."""
        counts = Counter(e.token_class for e in self.entries if site is None or e.site == site)
        return {c: counts.get(c, 0) for c in TOKEN_CLASSES}

    def blocks_of(self, channel: int, site: str = "resid_post") -> list[int]:
        """Blocks where ``channel`` is an outlier at ``site``."""
        self._check_site(site)
        return sorted({e.block for e in self.entries if e.site == site and e.channel == channel})

    def outlier_share(
        self, direction: Float[Tensor, " d_model"], *, blocks: Iterable[int] | None = None
    ) -> float:
        """Share of ``direction``'s squared norm in the residual-stream outlier channels:
        ``sum_c d[c]^2 / |d|^2`` over the distinct ``resid_post`` outlier channels (of ``blocks``).
        A defect direction (Wang et al., ICML 2025) carried by massive activations has a share near 1.
        """
        d = torch.as_tensor(direction, dtype=torch.float32).flatten()
        width = self.max_abs["resid_post"].shape[1] if "resid_post" in self.sites else None
        if width is None:
            raise InputError("outlier_share needs the resid_post site")
        if d.numel() != width:
            raise InputError(f"direction has {d.numel()} entries; the residual stream has {width}")
        total = float(d.pow(2).sum())
        if total == 0:
            raise InputError("direction is zero")
        chans = self.channels("resid_post", blocks)
        return float(d[chans].pow(2).sum()) / total if chans else 0.0

    def channel_defects(self, defects: Iterable[Any]) -> dict[int, tuple[str, float]]:
        """For each residual-stream outlier channel: the defect (anything with ``.direction`` and
        ``.label``, e.g. a :class:`~sd_lens.analyses.defects.Defect`) whose direction puts most of its
        squared norm on that channel, and that share ``d[c]^2 / |d|^2``."""
        dirs = [(str(getattr(x, "label", i)), torch.as_tensor(x.direction, dtype=torch.float32)) for i, x in enumerate(defects)]
        out: dict[int, tuple[str, float]] = {}
        for c in self.channels("resid_post"):
            best = max(((lab, float(d[c] ** 2 / d.pow(2).sum())) for lab, d in dirs), key=lambda t: t[1], default=None)
            if best is not None:
                out[c] = best
        return out

    def summary(self) -> str:
        lines = [
            f"{len(self.entries)} massive activations (|v| > {self.absolute} and >= {self.relative:g} x {self.median} median) "
            f"on {self.n_tokens} tokens of {self.n_texts} texts"
        ]
        for site in self.sites:
            by = self.by_block(site)
            if by:
                lines.append(
                    f"  {site}: channels {self.channels(site)[:8]} in blocks {min(by)}..{max(by)}; "
                    f"carriers {self.by_class(site)}"
                )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n_layers": self.n_layers,
            "sites": list(self.sites),
            "relative": self.relative,
            "absolute": self.absolute,
            "median": self.median,
            "top_k": self.top_k,
            "n_tokens": self.n_tokens,
            "n_texts": self.n_texts,
            "n_median_tokens": self.n_median_tokens,
            "entries": [e.to_dict() for e in self.entries],
            "channels": {s: self.channels(s) for s in self.sites},
            "by_class": {s: self.by_class(s) for s in self.sites},
            "block_median": {s: [round(float(v), 6) for v in self.block_median[s]] for s in self.sites},
            "max_abs": {s: [round(float(v), 3) for v in self.max_abs[s].max(dim=1).values] for s in self.sites},
            "seconds": round(self.seconds, 3),
        }


def defect_channels(direction: Float[Tensor, " d_model"], k: int = 3) -> list[tuple[int, float]]:
    """The ``k`` channels holding most of a direction's squared norm: ``[(channel, d[c]^2/|d|^2)]``."""
    d = torch.as_tensor(direction, dtype=torch.float32).flatten()
    if k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    total = float(d.pow(2).sum())
    if total == 0:
        raise InputError("direction is zero")
    share = d.pow(2) / total
    top = share.topk(min(k, d.numel()))
    return [(int(c), float(s)) for s, c in zip(top.values, top.indices)]


# ------------------------------------------------------------------------------------------------
# streaming state
# ------------------------------------------------------------------------------------------------
def _sample_slots(seqs: Sequence[Tensor], n_sample: int) -> dict[tuple[int, int], int]:
    """(text, position) -> slot of the tokens in the median's deterministic sample (see module doc)."""
    seen: Counter[bytes] = Counter()
    keys: list[tuple[bytes, int, int]] = []
    for i, s in enumerate(seqs):
        h = hashlib.blake2b(digest_size=16)
        for p, tok in enumerate(s.tolist()):
            h.update(int(tok).to_bytes(8, "little", signed=True))
            prefix = h.copy().digest()
            occurrence = seen[prefix]
            seen[prefix] += 1
            key = hashlib.blake2b(prefix + occurrence.to_bytes(8, "little"), digest_size=8).digest()
            keys.append((key, i, p))
    keys.sort()
    return {(i, p): slot for slot, (_, i, p) in enumerate(keys[:n_sample])}


@dataclass
class _Track:
    """Running top-k carriers per channel and the median sample of one hook point."""

    keys: Tensor  # long [k, D]: carrier key (-1 initial, token id, -2 empty)
    absval: Tensor  # float [k, D] (-1: empty)
    value: Tensor
    seq: Tensor
    pos: Tensor
    sample: Tensor  # float [n_sample, D]

    @classmethod
    def empty(cls, k: int, width: int, n_sample: int) -> "_Track":
        z = torch.zeros(k, width, dtype=torch.long)
        return cls(z - 2, torch.full((k, width), -1.0), torch.zeros(k, width), z.clone(), z.clone(),
                   torch.zeros(n_sample, width))

    def merge(self, cand: tuple[Tensor, Tensor, Tensor, Tensor, Tensor]) -> None:
        keys, absval, value, seq, pos = (torch.cat([a, b]) for a, b in zip(
            (self.keys, self.absval, self.value, self.seq, self.pos), cand))
        # dedupe per column by key, keeping each key's largest value: sort by value (desc), then
        # stably by key, and keep the first of each key group
        order = absval.argsort(dim=0, descending=True, stable=True)
        k_sorted = keys.gather(0, order)
        order = order.gather(0, k_sorted.argsort(dim=0, stable=True))
        k_sorted = keys.gather(0, order)
        first = torch.ones_like(k_sorted, dtype=torch.bool)
        first[1:] = k_sorted[1:] != k_sorted[:-1]
        a_sorted = torch.where(first, absval.gather(0, order), torch.full_like(absval, -math.inf))
        top = a_sorted.topk(self.keys.shape[0], dim=0).indices
        pick = order.gather(0, top)
        self.keys, self.value, self.seq, self.pos = (t.gather(0, pick) for t in (keys, value, seq, pos))
        self.absval = absval.gather(0, pick).clamp_min(-1.0)
        self.keys = torch.where(self.absval < 0, torch.full_like(self.keys, _EMPTY_KEY), self.keys)


def _reducer(k: int, slots: dict[tuple[int, int], int]):
    # what depends only on the batch (its real tokens, carrier keys, median-sample slots) is computed
    # once per batch, not once per hook point
    memo: dict[str, Any] = {"batch": None}

    def tokens_of(batch: Batch, device: Any) -> tuple[Tensor, ...]:
        # the real positions come from the lengths on the host: no nonzero (a device sync) per hook
        if memo["batch"] is not batch:
            width = batch.tokens.shape[1]
            rows, pos = torch.nonzero(torch.arange(width)[None, :] < batch.lengths[:, None], as_tuple=True)
            slot = torch.tensor([slots.get((batch.index[r], p), -1) for r, p in zip(rows.tolist(), pos.tolist())])
            chosen = slot >= 0
            flat = (rows * width + pos).to(device)
            pos_d = pos.to(device)
            tok = batch.tokens.flatten()[flat]
            keys = torch.where(pos_d == 0, torch.full_like(tok, _INITIAL_KEY), tok)
            uniq, inv = keys.unique(return_inverse=True)  # once per batch
            seq_of = torch.as_tensor(batch.index, device=device)[rows.to(device)]
            chosen_d = torch.nonzero(chosen).flatten().to(device)  # indices: a boolean mask would sync per hook
            memo.update(batch=batch, value=(flat, pos_d, uniq, inv, seq_of, slot[chosen], chosen_d))
        return memo["value"]

    def reduce(act: Tensor, batch: Batch) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        flat, pos, uniq, inv, seq_of, slot, chosen = tokens_of(batch, act.device)
        real = act.flatten(0, 1)[flat].float()  # [N, D]: the real tokens, in row-major order
        absval = real.abs()
        n, width = real.shape
        with warnings.catch_warnings():  # index_reduce is "beta"; it is 4-8x faster than scatter_reduce here
            warnings.simplefilter("ignore", UserWarning)
            best = torch.full((len(uniq), width), -1.0, device=real.device).index_reduce_(0, inv, absval, "amax")
            hit = absval == best[inv]
            where = torch.where(hit, torch.arange(n, device=real.device, dtype=torch.float64)[:, None], float(n))
            first = torch.full((len(uniq), width), float(n), dtype=torch.float64, device=real.device)
            first = first.index_reduce_(0, inv, where, "amin").long()
        if len(uniq) > k:  # a key outside this batch's top k (distinct keys) cannot be in the global top k
            keep = best.topk(k, dim=0).indices
            best, first = best.gather(0, keep), first.gather(0, keep)
            ukeys = uniq[keep]
        else:
            ukeys = uniq[:, None].expand(len(uniq), width)
        cand = (ukeys, best, real.gather(0, first), seq_of[first], pos[first])
        return cand, slot, absval[chosen]

    return reduce


def activation_outliers_pass(
    model: HookedModel,
    texts_or_tokenized: Sequence[str] | Tokenized | None = None,
    *,
    max_tokens_per_text: int | None = 64,
    relative: float = 1000.0,
    absolute: float | None = 100.0,
    median: Literal["block", "channel"] = "block",
    top_k: int = 4,
    median_tokens: int = 256,
    sites: Sequence[str] = SITES,
) -> Pass:
    """The streamed pass of :func:`activation_outliers`: run it with :func:`sd_lens.runtime.run_passes`
    (alone or with other passes over the same tokens), then ``.result()`` is the :class:`ActivationOutliers`.

    Args:
        model: a TransformerLens model (see :func:`sd_lens.load_model`).
        texts_or_tokenized: strings, a :class:`Tokenized`, or None for :func:`sd_lens.corpus.default_corpus`.
        max_tokens_per_text: truncate longer texts (BOS included).
        relative: a value must be at least this many times the median (Sun et al.: 1000).
        absolute: and its magnitude above this (Sun et al.: 100); None: no absolute test.
        median: ``"block"`` (the site's median over channels and tokens, as Sun et al.) or ``"channel"``.
        top_k: distinct carriers (initial token, or a token id) kept per channel.
        median_tokens: size of the deterministic token sample the medians are exact over.
        sites: a subset of :data:`SITES`.

    Raises:
        InputError: bad arguments (before any forward).
        NonFiniteActivationError: NaN or inf activations.
    """
    if not (isinstance(relative, (int, float)) and math.isfinite(relative) and relative > 0):
        raise InputError(f"relative must be a positive number, got {relative!r}")
    if absolute is not None and not (isinstance(absolute, (int, float)) and math.isfinite(absolute) and absolute >= 0):
        raise InputError(f"absolute must be a non-negative number or None, got {absolute!r}")
    if median not in ("block", "channel"):
        raise InputError(f"median must be 'block' or 'channel', got {median!r}")
    for name, v in (("top_k", top_k), ("median_tokens", median_tokens)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    sites = tuple(sites)
    if not sites or any(s not in SITES for s in sites) or len(set(sites)) != len(sites):
        raise InputError(f"sites must be distinct names from {SITES}, got {sites!r}")
    n_layers = int(model.cfg.n_layers)
    names = {(site, layer): act_name(site, layer) for site in sites for layer in range(n_layers)}
    missing = [n for n in names.values() if n not in model.hook_dict]
    if missing:
        raise UnsupportedArchitectureError(
            f"the model has no hook point {missing[0]!r}: load it with sd_lens.load_model (compatibility mode on)"
        )
    if texts_or_tokenized is None:
        texts_or_tokenized = default_corpus()
    tok = (
        texts_or_tokenized
        if isinstance(texts_or_tokenized, Tokenized)
        else tokenize(model, texts_or_tokenized, max_tokens_per_text=max_tokens_per_text)
    )
    if tok.n_truncated:
        warnings.warn(
            f"{tok.n_truncated} of {len(tok.texts)} texts were cut to their first {tok.max_tokens_per_text} tokens",
            stacklevel=2,
        )
    t0 = time.perf_counter()
    seqs = tok.sequences
    n_sample = min(median_tokens, tok.n_tokens)
    slots = _sample_slots(seqs, n_sample)
    widths = {"resid_post": int(model.cfg.d_model), "mlp_post": int(model.cfg.d_mlp)}
    tracks = {key: _Track.empty(top_k, widths[key[0]], n_sample) for key in names}
    reducer = _reducer(top_k, slots)
    reducers = {name: reducer for name in names.values()}

    def consume(batch: Batch, out: Mapping[str, Any]) -> None:
        for key, name in names.items():
            cand, slot, vals = out[name]
            if not torch.isfinite(cand[1]).all() or not torch.isfinite(vals).all():
                raise NonFiniteActivationError(
                    f"non-finite activation at {name}: the model overflowed or is NaN; load it in float32 and check the weights"
                )
            tracks[key].merge(cand)
            tracks[key].sample[slot] = vals

    def finish() -> ActivationOutliers:
        token_strings: dict[int, str] = {}

        def string(t: int) -> str:
            if t not in token_strings:
                token_strings[t] = decode_one(model, t)
            return token_strings[t]

        flat = torch.cat(list(seqs)).long()
        starts = torch.tensor([0] + [len(x) for x in seqs[:-1]]).cumsum(0)
        entries: list[OutlierEntry] = []
        res: dict[str, dict[str, Tensor]] = {f: {} for f in ("abs", "val", "seq", "pos", "tok", "cmed", "bmed")}
        for site in sites:
            per = [tracks[(site, layer)] for layer in range(n_layers)]
            res["abs"][site] = torch.stack([t.absval[0] for t in per])
            res["val"][site] = torch.stack([t.value[0] for t in per])
            res["seq"][site] = torch.stack([t.seq[0] for t in per])
            res["pos"][site] = torch.stack([t.pos[0] for t in per])
            res["tok"][site] = torch.stack([flat[starts[t.seq[0]] + t.pos[0]] for t in per])
            res["cmed"][site] = torch.stack([_median(t.sample, 0) for t in per])
            res["bmed"][site] = torch.stack([_median(t.sample) for t in per])
            for layer, t in enumerate(per):
                ref = res["cmed"][site][layer] if median == "channel" else res["bmed"][site][layer].expand(t.absval.shape[1])
                passed = t.absval >= relative * ref
                if absolute is not None:
                    passed &= t.absval > absolute
                passed &= t.absval > 0
                block_entries = []
                for r, c in torch.nonzero(passed).tolist():
                    s, p = int(t.seq[r, c]), int(t.pos[r, c])
                    tid = int(seqs[s][p])
                    text = string(tid)
                    a = float(t.absval[r, c])
                    block_entries.append(OutlierEntry(
                        block=layer, site=site, channel=c, value=float(t.value[r, c]), ratio=_ratio(a, float(ref[c])),
                        median=float(ref[c]), token=text, token_id=tid, position=p, seq=s,
                        token_class=token_class(text, p),
                    ))
                block_entries.sort(key=lambda e: (-e.ratio, e.channel, e.position))
                entries.extend(block_entries)
        return ActivationOutliers(
            model=model_name(model),
            n_layers=n_layers,
            sites=sites,
            relative=float(relative),
            absolute=None if absolute is None else float(absolute),
            median=median,
            top_k=top_k,
            entries=entries,
            max_abs=res["abs"],
            max_value=res["val"],
            max_seq=res["seq"],
            max_position=res["pos"],
            max_token=res["tok"],
            channel_median=res["cmed"],
            block_median=res["bmed"],
            n_tokens=tok.n_tokens,
            n_texts=len(seqs),
            n_median_tokens=n_sample,
            token_strings=token_strings,
            seconds=time.perf_counter() - t0,
        )

    return Pass(seqs, reducers, consume, finish, name="activation outliers")


def activation_outliers(
    model: HookedModel,
    texts_or_tokenized: Sequence[str] | Tokenized | None = None,
    *,
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
    relative: float = 1000.0,
    absolute: float | None = 100.0,
    median: Literal["block", "channel"] = "block",
    top_k: int = 4,
    median_tokens: int = 256,
    sites: Sequence[str] = SITES,
    progress: bool = False,
) -> ActivationOutliers:
    """Find the massive activations of every block at the residual stream and the down-projection input.

    One streamed pass (:func:`activation_outliers_pass`, which can share its forwards with other
    passes through :func:`sd_lens.runtime.run_passes`); the other arguments are documented there.

    Args:
        batch_size: texts per forward pass.
        progress: show a progress bar.

    Example:
        >>> import sd_lens
        >>> found = sd_lens.activation_outliers(sd_lens.tiny_model("llama"), ["The cat sat on the mat."])
        >>> found.n_layers, found.sites
        (2, ('resid_post', 'mlp_post'))
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    p = activation_outliers_pass(
        model, texts_or_tokenized, max_tokens_per_text=max_tokens_per_text, relative=relative, absolute=absolute,
        median=median, top_k=top_k, median_tokens=median_tokens, sites=sites,
    )
    run_passes(model, [p], batch_size=batch_size, progress=progress and "activation outliers")
    result: ActivationOutliers = p.result()
    return result
