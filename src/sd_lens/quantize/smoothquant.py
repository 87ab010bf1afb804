"""SmoothQuant smoothing factors, calibrated on text (Xiao et al., *SmoothQuant*, ICML 2023, §4).

Activation outliers live in a few input channels; weights are flat. SmoothQuant moves part of the
difficulty from the activation ``X`` to the weight ``W`` with a per-input-channel factor

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

(``max|X_j|`` over a calibration corpus, ``max|W_j|`` over the input channel ``j`` of every linear that
reads ``X``: q/k/v share one ``s``, gate/up another), then runs ``(X diag(s)^-1) (diag(s) W)``, which is
the same function in exact arithmetic. The official implementation (github.com/mit-han-lab/smoothquant,
``smooth.py``) smooths the linears fed by a norm — q/k/v and the FFN input (fc1 / gate and up), where
``s`` folds into the norm's scale — and clamps both maxima and ``s`` at 1e-5; so does this module by
default (``sites=("qkv", "mlp_in")``). The output projection and F2 are not smoothed there (no
preceding scale to fold ``s`` into); a fake-quantized model could, so ``sites`` accepts them.

Wang et al. (ICML 2025, §6) report SmoothQuant W8A8 on LLaMA2-7B at 13.87 perplexity (FP16 5.47) and
6.78 once F2 of the explosion and decay blocks stays in high precision: the smoothing cannot touch the
down-projection input, where the singular defect's massive hidden activation sits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.corpus import default_corpus, validate_texts
from sd_lens.errors import InputError
from sd_lens.models.linears import SITES, linear_weights, site_hook
from sd_lens.runtime.engine import Batch, stream
from sd_lens.runtime.tokens import Tokenized, tokenize
from sd_lens.types import HookedModel

__all__ = ["SmoothScales", "channel_maxima", "smoothquant_scales"]

#: the official implementation's clamp of both maxima and of the factor
CLAMP = 1e-5


@dataclass(frozen=True, eq=False)
class SmoothScales:
    """SmoothQuant factors per (block, site): ``scales[(b, site)]`` float32 ``[d_in]``, with the
    calibration maxima ``act_max`` and ``weight_max`` they came from."""

    alpha: float
    n_layers: int
    scales: dict[tuple[int, str], Float[Tensor, " d_in"]]
    act_max: dict[tuple[int, str], Float[Tensor, " d_in"]]
    weight_max: dict[tuple[int, str], Float[Tensor, " d_in"]]
    n_texts: int
    n_tokens: int

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(s for s in SITES if any(k[1] == s for k in self.scales))

    def to_dict(self) -> dict[str, Any]:
        def stats(t: Tensor) -> dict[str, float]:
            return {"min": round(float(t.min()), 4), "median": round(float(t.median()), 4), "max": round(float(t.max()), 4)}

        return {
            "alpha": self.alpha,
            "sites": list(self.sites),
            "n_texts": self.n_texts,
            "n_tokens": self.n_tokens,
            "scales": {f"{b}.{s}": stats(t) for (b, s), t in self.scales.items()},
        }


def channel_maxima(
    model: HookedModel,
    texts: Sequence[str] | Tokenized,
    hook_names: Sequence[str],
    *,
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
) -> tuple[dict[str, Float[Tensor, " d_in"]], int]:
    """``max |x_j|`` per feature (trailing dims flattened) of each hook point over the real tokens of
    ``texts`` (one streamed pass, per-batch maxima only), and the number of tokens seen."""
    tok = texts if isinstance(texts, Tokenized) else tokenize(model, validate_texts(texts),
                                                            max_tokens_per_text=max_tokens_per_text)

    def reduce(act: Tensor, batch: Batch) -> Tensor:
        a = act.reshape(act.shape[0], act.shape[1], -1).abs().float()
        a = a.masked_fill(~batch.mask[:, :, None], 0.0)
        return a.amax((0, 1))

    out: dict[str, Tensor] = {}
    for _, values in stream(model, tok.sequences, {n: reduce for n in hook_names}, batch_size=batch_size):
        for n, v in values.items():
            out[n] = v if n not in out else torch.maximum(out[n], v)
    return out, int(tok.n_tokens)


def smoothquant_scales(
    model: HookedModel,
    texts: Sequence[str] | Tokenized | None = None,
    *,
    alpha: float = 0.5,
    sites: Sequence[str] = ("qkv", "mlp_in"),
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
) -> SmoothScales:
    """Calibrate SmoothQuant's ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` on ``texts`` (default: the
    default corpus, i.e. the analysis corpus, never the held-out texts) for every block's ``sites``.

    Raises:
        InputError: alpha outside [0, 1], unknown or repeated sites, bad texts (before any forward).
    """
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0 <= alpha <= 1):
        raise InputError(f"alpha must be in [0, 1], got {alpha!r}")
    sites = tuple(sites)
    if not sites or any(s not in SITES for s in sites) or len(set(sites)) != len(sites):
        raise InputError(f"sites must be distinct names from {SITES}, got {list(sites)!r}")
    linears = linear_weights(model)
    keys = [(b, s) for (b, s) in linears if s in sites]
    names = {k: site_hook(*k) for k in keys}
    maxima, n_tokens = channel_maxima(
        model, default_corpus() if texts is None else texts, list(names.values()),
        batch_size=batch_size, max_tokens_per_text=max_tokens_per_text,
    )
    scales, act_max, w_max = {}, {}, {}
    for k in keys:
        lins = linears[k]
        with torch.no_grad():
            wm = torch.stack([
                lin.matrix(lin.param.detach()).abs().float().amax(1 - lin.in_axis).cpu() for lin in lins
            ]).amax(0)
        xm = maxima[names[k]]
        if xm.numel() != wm.numel():
            raise InputError(f"block {k[0]} {k[1]!r}: the activation has {xm.numel()} features, the weights {wm.numel()}")
        s = (xm.clamp(min=CLAMP).pow(alpha) / wm.clamp(min=CLAMP).pow(1 - alpha)).clamp(min=CLAMP)
        scales[k], act_max[k], w_max[k] = s, xm, wm
    n_texts = len(texts.sequences) if isinstance(texts, Tokenized) else len(default_corpus() if texts is None else texts)
    return SmoothScales(alpha=float(alpha), n_layers=int(model.cfg.n_layers), scales=scales, act_max=act_max,
                        weight_max=w_max, n_texts=n_texts, n_tokens=n_tokens)
