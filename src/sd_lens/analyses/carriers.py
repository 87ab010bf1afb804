"""The positions an SAE or a patching pipeline must leave out: the first token (BOS) and every high-norm carrier.

Singular defects live on a few tokens (the initial token, and delimiters or weak-semantic tokens that
carry one); their norms are tens to thousands of times the others', so an SAE trained on them, or a
patching sweep averaged over them, mostly describes them. :func:`carrier_mask` marks those positions,
per token, from a :class:`~sd_lens.analyses.probe.NormProbe`, with the same threshold as
:func:`~sd_lens.analyses.defects.find_defects` (a multiple of each block's median norm).
"""

from __future__ import annotations

import torch
from jaxtyping import Bool
from torch import Tensor

from sd_lens.analyses.probe import NormProbe
from sd_lens.errors import InputError

__all__ = ["carrier_mask"]


def carrier_mask(
    probe: NormProbe, *, threshold: float = 4.0, first: bool = True, hook: str = "resid_post"
) -> Bool[Tensor, "texts pos"]:
    """``True`` at each position that is the first token (with ``first``: BOS when the model adds one)
    or whose norm at ``hook`` exceeds ``threshold`` times its block's median at any block.

    Rows follow ``probe.texts``, columns the positions of ``probe.sequences`` (the model's tokens,
    BOS included); positions past a text's end are ``False``. ``~mask`` selects the positions to keep.

    >>> import sd_lens
    >>> probe = sd_lens.probe_norms(sd_lens.tiny_model("llama"), ["a b c d", "e f"])
    >>> sd_lens.carrier_mask(probe)[:, 0].tolist()
    [True, True]
    """
    if not threshold > 0:
        raise InputError(f"threshold must be positive, got {threshold!r}")
    lengths = [int(s.numel()) for s in probe.sequences]
    mask = torch.zeros(len(lengths), max(lengths, default=0), dtype=torch.bool)
    high = (probe.ratio(hook) > threshold).any(dim=1)  # NaN (no resid_mid) compares False
    mask[probe.seq_index, probe.positions] = high
    if first and mask.shape[1]:
        mask[torch.tensor(lengths) > 0, 0] = True
    return mask
