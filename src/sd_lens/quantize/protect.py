"""Which blocks keep their down-projection (F2) in high precision, and the random control.

Wang et al. (*Demystifying Singular Defects in LLMs*, ICML 2025, §6) keep F2 in full precision at the
blocks where the singular defect is *created* (the explosion block: its FFN writes the massive
activation through one hidden unit of F2) and *removed* (the decay blocks: their FFN writes it back
out), and measure that this recovers most of W8A8's perplexity loss (LLaMA2-7B: blocks 2 and 31).

:func:`defect_blocks` reads those blocks off a :class:`~sd_lens.analyses.defects.DefectReport` (the
explosion and decay blocks of every major defect; never hand-coded). :func:`random_blocks` draws the
control: as many blocks, uniformly among the others, for a seed.
"""

from __future__ import annotations

import random
from typing import Any, Iterable

from sd_lens.analyses.defects import DefectReport
from sd_lens.errors import InputError

__all__ = ["defect_blocks", "random_blocks"]


def defect_blocks(report: DefectReport | Any, *, include_minor: bool = False) -> list[int]:
    """The explosion and decay blocks of every major defect of ``report`` (sorted, distinct).

    ``report``: a :class:`DefectReport` or anything with a ``.defects`` report (an
    :class:`~sd_lens.pipeline.AnalysisResult`). ``include_minor``: also the minor groups' blocks.
    """
    rep = report if isinstance(report, DefectReport) else getattr(report, "defects", None)
    if not isinstance(rep, DefectReport):
        raise InputError(f"expected a DefectReport or an AnalysisResult, got {type(report).__name__}")
    defects = list(rep.defects) + (list(rep.minor) if include_minor else [])
    out: set[int] = set()
    for d in defects:
        out.add(int(d.explosion_layer))
        out.update(int(b) for b in d.decay_layers)
    return sorted(out)


def random_blocks(n_layers: int, k: int, seed: int, exclude: Iterable[int] = ()) -> list[int]:
    """``k`` distinct blocks of ``0..n_layers-1`` outside ``exclude``, drawn uniformly with ``seed``
    (sorted). The control for :func:`defect_blocks`: the same number of blocks, chosen blind."""
    pool = sorted(set(range(n_layers)) - set(exclude))
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= len(pool):
        raise InputError(f"cannot draw {k!r} blocks from the {len(pool)} not excluded")
    return sorted(random.Random(seed).sample(pool, k))
