"""Explosion subspace (analysis 6 in docs/analyses.md): what input makes the explosion block's FFN explode.

* :func:`explosion_subspace`: FFN output norm (the real, nonlinear FFN) for normalised inputs
  ``±√d · v_k`` along each right singular vector of the linearised FFN ``F``, against random
  unit directions. Claim (iv) predicts that v₀ dominates.
* :func:`vocab_coefficients`: the v₀ coefficient of the FFN input of every vocabulary token, as
  the initial token (alone, position 0) and as the second token (after BOS, position 1).
* :func:`noninitial_pathway`: with every attention update up to the block zeroed, run every
  vocabulary token alone and list those that still explode (claim iii: no attention needed).

The vocabulary sweeps run the model up to the block only, batched, and report their throughput
against a bare forward of the same depth.

Reference: Wang et al., *Demystifying Singular Defects in Large Language Models* (ICML 2025),
observation (iii) (initial and noninitial tokens reach high norms by different pathways) and (iv) (high
norms are triggered by the right leading singular vector).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.analyses.ffn_fit import FFNFit, fit_ffn
from sd_lens.linalg import unit
from sd_lens.models.view import ModelOrView, resolve_block
from sd_lens.runtime.engine import Batch, Reducer, forward, run
from sd_lens.runtime.hooks import act_name, ffn_input
from sd_lens.runtime.reducers import resident
from sd_lens.runtime.tokens import decode_one
from sd_lens.types import HookedModel, HookFn


@dataclass(frozen=True, eq=False)
class ExplosionSubspace:
    """FFN output norms along the right singular vectors of ``F`` at one block."""

    layer: int
    singular_values: Tensor  # [k] of F
    plus_norms: Tensor  # [k] ‖f(+√d v_k)‖
    minus_norms: Tensor  # [k] ‖f(−√d v_k)‖
    random_norms: Tensor  # [n_random] ‖f(√d r)‖ for random unit r
    v: Tensor  # [k, d] the right singular vectors

    @property
    def dominant(self) -> int:
        """Index k of the singular vector with the largest output norm (either sign)."""
        return int(torch.maximum(self.plus_norms, self.minus_norms).argmax())

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "singular_values": [round(float(x), 4) for x in self.singular_values],
            "plus_norms": [round(float(x), 3) for x in self.plus_norms],
            "minus_norms": [round(float(x), 3) for x in self.minus_norms],
            "random_norm_mean": round(float(self.random_norms.mean()), 3),
            "random_norm_max": round(float(self.random_norms.max()), 3),
            "dominant": self.dominant,
        }


def explosion_subspace(
    model_or_view: ModelOrView, layer: int, *, fit: FFNFit | None = None, k: int = 8, n_random: int = 64, seed: int = 0
) -> ExplosionSubspace:
    """Output norm of the block's real FFN along ``±v_k`` (k = 0..k-1) and random directions."""
    view = resolve_block(model_or_view, layer)
    layer = view.layer  # a negative index counts from the end
    fit = fit or fit_ffn(view, layer, n_eval=0)
    _, S, Vh = fit.svd()
    k = min(k, Vh.shape[0])
    scale = math.sqrt(Vh.shape[1])  # a normalised input has RMS 1, i.e. norm √d
    v = Vh[:k]
    with torch.no_grad():
        plus = view.ffn_out(scale * v).norm(dim=-1)
        minus = view.ffn_out(-scale * v).norm(dim=-1)
        gen = torch.Generator().manual_seed(seed)
        r = unit(torch.randn(n_random, Vh.shape[1], generator=gen))
        rand = view.ffn_out(scale * r).norm(dim=-1)
    return ExplosionSubspace(layer, S[:k].clone(), plus, minus, rand, v.clone())


@dataclass(frozen=True, eq=False)
class VocabCoefficients:
    """v₀ coefficient of every vocabulary token's FFN input at one block."""

    layer: int
    initial: Tensor  # [vocab] token alone at position 0
    second: Tensor  # [vocab] token at position 1, after BOS
    seconds: float
    tokens_per_second: float
    bare_tokens_per_second: float

    def top(self, k: int = 10, which: str = "initial") -> list[tuple[int, float]]:
        vals = self.initial if which == "initial" else self.second
        idx = vals.abs().argsort(descending=True)[:k]
        return [(int(i), float(vals[i])) for i in idx]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "initial_mean_abs": round(float(self.initial.abs().mean()), 4),
            "second_mean_abs": round(float(self.second.abs().mean()), 4),
            "initial_median_abs": round(float(self.initial.abs().median()), 4),
            "second_median_abs": round(float(self.second.abs().median()), 4),
            "seconds": round(self.seconds, 2),
            "tokens_per_second": round(self.tokens_per_second, 1),
            "bare_tokens_per_second": round(self.bare_tokens_per_second, 1),
        }


def _vocab_size(model: HookedModel) -> int:
    return int(model.cfg.d_vocab)


def _sweep(
    model: HookedModel, batch_size: int, prefix: list[int], reducers: Mapping[str, Reducer],
    fwd_hooks: Sequence[tuple[str, HookFn]], limit: int | None, progress: bool | str = False,
) -> Tensor:
    """Run every vocabulary token (after ``prefix``) up to the deepest block a reducer reads; one value per token.

    ``reducers`` has one entry; its value for a batch is ``[batch]``.
    """
    vocab = _vocab_size(model) if limit is None else min(limit, _vocab_size(model))
    (name,) = reducers
    out = torch.empty(vocab)
    starts: Any = range(0, vocab, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=progress if isinstance(progress, str) else "vocabulary", unit="batch")
    for start in starts:
        ids = torch.arange(start, min(start + batch_size, vocab))
        tokens = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(len(ids), len(prefix)), ids[:, None]], 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[start : start + len(ids)] = run(model, tokens, reducers, fwd_hooks=fwd_hooks)[name]
    return out


def _bare_rate(model: HookedModel, layer: int, batch_size: int, seq_len: int) -> float:
    tokens = torch.randint(0, _vocab_size(model), (batch_size, seq_len))
    forward(model, tokens, stop_at_layer=layer + 1)  # warm-up
    t0 = time.perf_counter()
    for _ in range(3):
        forward(model, tokens, stop_at_layer=layer + 1)
    return 3 * batch_size * seq_len / (time.perf_counter() - t0)


def vocab_coefficients(
    model: HookedModel, layer: int, v0: Float[Tensor, " d_model"], *, batch_size: int = 1024, limit: int | None = None,
    progress: bool = False,
) -> VocabCoefficients:
    """v₀ coefficient of the FFN input at block ``layer`` for every vocabulary token (see module doc)."""
    v_on = resident(unit(v0.detach().float()))
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    if bos is None:
        bos = 0

    def last_coefficient(act: Tensor, batch: Batch) -> Tensor:
        return act[:, -1].float() @ v_on(act.device)

    reducers = {ffn_input(layer): last_coefficient}
    t0 = time.perf_counter()
    initial = _sweep(model, batch_size, [], reducers, [], limit, progress and "vocabulary at position 0")
    second = _sweep(model, batch_size, [int(bos)], reducers, [], limit, progress and "vocabulary after BOS")
    seconds = time.perf_counter() - t0
    n_tok = len(initial) * 1 + len(second) * 2
    bare = (_bare_rate(model, layer, batch_size, 1) + _bare_rate(model, layer, batch_size, 2)) / 2
    return VocabCoefficients(layer, initial, second, seconds, n_tok / seconds, bare)


@dataclass(frozen=True, eq=False)
class NoninitialPathway:
    """Tokens that explode at block ``layer`` alone and with all attention up to it zeroed."""

    layer: int
    norms: Tensor  # [vocab] resid_post norm of each token alone, attention zeroed
    threshold: float
    exploding: list[tuple[int, str, float]]  # (id, string, norm), largest first
    seconds: float
    tokens_per_second: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "threshold": round(self.threshold, 3),
            "n_exploding": len(self.exploding),
            "exploding": [{"token": s, "norm": round(n, 2)} for _, s, n in self.exploding[:50]],
            "seconds": round(self.seconds, 2),
            "tokens_per_second": round(self.tokens_per_second, 1),
        }


def noninitial_pathway(
    model: HookedModel, layer: int, threshold: float, *, batch_size: int = 1024, limit: int | None = None,
    progress: bool = False,
) -> NoninitialPathway:
    """Every vocabulary token alone with attention zeroed in blocks ``0..layer``; norm > ``threshold`` explodes.

    ``threshold`` is an absolute norm, e.g. ``4 × typical norm`` of the block from the probe.
    """

    def zero(act: Tensor, hook: Any) -> Tensor:
        return torch.zeros_like(act)

    def last_norm(act: Tensor, batch: Batch) -> Tensor:
        return act[:, -1].float().norm(dim=-1)

    zero_attention = [(act_name("attn_out", b), zero) for b in range(layer + 1)]
    t0 = time.perf_counter()
    norms = _sweep(
        model, batch_size, [], {act_name("resid_post", layer): last_norm}, zero_attention, limit,
        progress and "vocabulary, attention off",
    )
    seconds = time.perf_counter() - t0
    idx = torch.nonzero(norms > threshold).flatten()
    idx = idx[norms[idx].argsort(descending=True)]
    exploding = [(int(i), decode_one(model, int(i)), float(norms[i])) for i in idx]
    return NoninitialPathway(layer, norms, threshold, exploding, seconds, len(norms) / seconds)
