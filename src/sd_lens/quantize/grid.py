"""What the per-tensor quantization grid looks like at every linear input (why RTN breaks where it does).

Per-tensor RTN gives a sequence's activation tensor one step ``max|x| / 127``; every entry smaller than
half a step becomes 0. :func:`quantization_grid` measures, per block and site
(:data:`~sd_lens.quantize.fake.SITES`), over the real tokens of each text:

* ``range_ratio``: ``max|x| / median|x|`` (the mean over texts) — how many typical entries one step is
  worth is ``127 / range_ratio``;
* ``zeroed``: the fraction of entries that per-tensor RTN rounds to 0 (``|x| < step / 2``);
* ``zeroed_token``: the same under per-token scales, for comparison.

A massive activation in a tensor (Sun et al. 2024; the singular defect's F2 hidden unit at its
explosion and decay blocks, Wang et al. 2025) shows as a range ratio in the thousands and most entries
zeroed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from sd_lens.corpus import validate_texts
from sd_lens.errors import InputError
from sd_lens.models.metadata import model_name
from sd_lens.quantize.fake import SITES, site_hook
from sd_lens.runtime.engine import Batch, stream
from sd_lens.runtime.tokens import Tokenized, tokenize
from sd_lens.types import HookedModel

__all__ = ["QuantGrid", "quantization_grid"]


@dataclass(frozen=True, eq=False)
class QuantGrid:
    """Per (block, site) grid statistics of 8-bit per-tensor RTN (see the module docstring).

    ``range_ratio``, ``zeroed``, ``zeroed_token``: float ``[n_layers, n_sites]`` (sites in ``sites`` order).
    """

    model: str
    sites: tuple[str, ...]
    bits: int
    range_ratio: Tensor
    zeroed: Tensor
    zeroed_token: Tensor
    n_texts: int

    def at(self, block: int, site: str) -> dict[str, float]:
        j = self.sites.index(site)
        return {"range_ratio": float(self.range_ratio[block, j]), "zeroed": float(self.zeroed[block, j]),
                "zeroed_token": float(self.zeroed_token[block, j])}

    def table(self, blocks: Sequence[int] | None = None) -> str:
        rows = range(self.range_ratio.shape[0]) if blocks is None else blocks
        head = " | ".join(f"{s} max/median, zeroed" for s in self.sites)
        lines = [f"| block | {head} |", "|---:|" + "---|" * len(self.sites)]
        for b in rows:
            cells = " | ".join(f"{float(self.range_ratio[b, j]):.0f}, {float(self.zeroed[b, j]):.0%}"
                               for j in range(len(self.sites)))
            lines.append(f"| {b} | {cells} |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "sites": list(self.sites), "bits": self.bits, "n_texts": self.n_texts,
            "range_ratio": [[round(float(v), 1) for v in row] for row in self.range_ratio],
            "zeroed": [[round(float(v), 4) for v in row] for row in self.zeroed],
            "zeroed_token": [[round(float(v), 4) for v in row] for row in self.zeroed_token],
        }


def quantization_grid(
    model: HookedModel,
    texts: Sequence[str] | Tokenized,
    *,
    sites: Sequence[str] = SITES,
    bits: int = 8,
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
) -> QuantGrid:
    """Grid statistics of per-tensor (per-sequence) and per-token RTN at every block's ``sites``."""
    sites = tuple(sites)
    if not sites or any(s not in SITES for s in sites):
        raise InputError(f"sites must be names from {SITES}, got {list(sites)!r}")
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise InputError(f"bits must be an integer in 2..16, got {bits!r}")
    qmax = 2 ** (bits - 1) - 1
    tok = texts if isinstance(texts, Tokenized) else tokenize(model, validate_texts(texts),
                                                            max_tokens_per_text=max_tokens_per_text)
    n = int(model.cfg.n_layers)

    def reduce(act: Tensor, batch: Batch) -> tuple[Tensor, int]:
        # per real row: range ratio, zeroed fraction per-tensor and per-token; summed on the device
        a = act.reshape(act.shape[0], act.shape[1], -1).abs().float()
        rows = []
        for r, length in enumerate(batch.lengths.tolist()):  # lengths live on the host: no sync
            x = a[r, :length]
            step = x.max() / qmax
            tstep = x.amax(-1, keepdim=True) / qmax
            rows.append(torch.stack([
                x.max() / x.median().clamp(min=1e-30), (x < step / 2).float().mean(), (x < tstep / 2).float().mean(),
            ]))
        return torch.stack(rows).double().sum(0), len(rows)

    names = {(b, s): site_hook(b, s) for b in range(n) for s in sites}
    sums = torch.zeros(3, n, len(sites), dtype=torch.float64)
    total = 0
    for _, out in stream(model, tok.sequences, {v: reduce for v in names.values()}, batch_size=batch_size):
        for (b, s), name in names.items():
            values, count = out[name]
            sums[:, b, sites.index(s)] += values
        total += count
    mean = (sums / max(total, 1)).float()
    return QuantGrid(model=model_name(model), sites=sites, bits=bits, range_ratio=mean[0], zeroed=mean[1],
                     zeroed_token=mean[2], n_texts=len(tok.sequences))
