"""Norm probe: ‖x‖ of every token at every residual hook point of every block.

Streams over the texts in right-padded batches. Hooks reduce each activation to one float32
norm per token before anything is stored, so memory grows with tokens × blocks, never with
d_model. No block after the deepest one asked for runs, and the unembedding never runs.

Reference: the high-norm tokens of Wang et al., *Demystifying Singular Defects in Large Language Models*
(ICML 2025), Fig. 1, judged against the median as Sun et al., *Massive Activations in Large Language
Models* (2024), judge activations.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sd_lens.errors import InputError, NonFiniteActivationError
from sd_lens.models.metadata import model_dtype, model_name
from sd_lens.runtime.engine import stream
from sd_lens.runtime.hooks import act_name
from sd_lens.runtime.reducers import token_norms
from sd_lens.runtime.tokens import Tokenized, decode_one, tokenize
from sd_lens.types import HookedModel

HOOK_POINTS = ("resid_pre", "resid_mid", "resid_post")


@dataclass(frozen=True, eq=False)
class NormProbe:
    """Norms of the residual stream, one row per (text, position) token.

    Attributes:
        norms: float32 [n_tokens, n_layers, 3]; the last axis follows :data:`HOOK_POINTS`
            (``resid_mid`` is NaN for parallel-block models, which have none).
        seq_index, positions, token_ids: long [n_tokens], where each token comes from.
        sequences: the token ids of each text (with BOS), to re-run prefixes later.
    """

    model: str
    n_layers: int
    norms: Tensor
    seq_index: Tensor
    positions: Tensor
    token_ids: Tensor
    sequences: list[Tensor]
    texts: list[str]
    token_strings: dict[int, str]
    seconds: float
    hook_points: tuple[str, ...] = HOOK_POINTS
    #: texts cut to the probe's ``max_tokens_per_text`` (0 for none or unknown)
    n_truncated: int = 0
    #: memo of typical_norm (not an init field: ``dataclasses.replace`` starts a fresh one)
    _typical: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_tokens(self) -> int:
        return int(self.norms.shape[0])

    def hook(self, name: str = "resid_post") -> Float[Tensor, "n_tokens n_layers"]:
        """Norms at one hook point: float32 [n_tokens, n_layers]."""
        if name not in self.hook_points:
            raise InputError(f"unknown hook point {name!r}; choose one of {self.hook_points}")
        return self.norms[:, :, self.hook_points.index(name)]

    def typical_norm(self, name: str = "resid_post") -> Float[Tensor, " n_layers"]:
        """Median norm of each block over all tokens: float32 [n_layers]."""
        if name not in self._typical:
            self._typical[name] = self.hook(name).median(dim=0).values
        return self._typical[name]

    def ratio(self, name: str = "resid_post") -> Float[Tensor, "n_tokens n_layers"]:
        """Norm divided by the block's typical (median) norm: [n_tokens, n_layers]."""
        return self.hook(name) / self.typical_norm(name)

    def token_string(self, token_id: int) -> str:
        return self.token_strings.get(int(token_id), f"<{int(token_id)}>")

    def rows_of(self, seq: int) -> Int[Tensor, " rows"]:
        """Row indices of one text's tokens, in position order."""
        return torch.nonzero(self.seq_index == seq).flatten()


def probe_norms(
    model: HookedModel,
    texts: Sequence[str] | Tokenized,
    *,
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
    layers: int | None = None,
    progress: bool = False,
) -> NormProbe:
    """Measure the residual norm of every token at every hook point of blocks ``0..layers-1``.

    Args:
        model: a TransformerLens model (see :func:`sd_lens.load_model`).
        texts: strings (BOS is prepended to each) or an already tokenised :class:`Tokenized`.
        batch_size: texts per forward pass.
        max_tokens_per_text: truncate longer texts (``None``: error if over the context).
        layers: probe only the first ``layers`` blocks (the forward stops there); default all.
        progress: show a tqdm progress bar.

    Raises:
        InputError: empty texts, over-long text, bad ``layers``.
        NonFiniteActivationError: a NaN or inf norm (names the block and hook point).

    Example:
        >>> import sd_lens
        >>> probe = sd_lens.probe_norms(sd_lens.tiny_model("llama"), ["The cat sat on the mat."])
        >>> tuple(probe.norms.shape[1:])  # (blocks, hook points) per token
        (2, 3)
    """
    n_layers = int(model.cfg.n_layers) if layers is None else int(layers)
    if not 1 <= n_layers <= int(model.cfg.n_layers):
        raise InputError(f"layers must be in 1..{model.cfg.n_layers}, got {layers}")
    tok = texts if isinstance(texts, Tokenized) else tokenize(model, texts, max_tokens_per_text=max_tokens_per_text)
    if tok.n_truncated:
        warnings.warn(
            f"{tok.n_truncated} of {len(tok.texts)} texts were cut to their first {tok.max_tokens_per_text} tokens "
            "(BOS included); pass max_tokens_per_text (sd-lens: --max-tokens-per-text N, or none) to keep more",
            stacklevel=2,
        )
    seqs = tok.sequences
    offsets = torch.tensor([0] + [len(s) for s in seqs]).cumsum(0)
    n_tokens = int(offsets[-1])
    norms = torch.full((n_tokens, n_layers, len(HOOK_POINTS)), float("nan"), dtype=torch.float32)
    t0 = time.perf_counter()
    hook_dict = model.hook_dict
    post = HOOK_POINTS.index("resid_post")

    # resid_pre of block l is resid_post of block l-1: hook it at block 0 only and copy.
    names = {
        (layer, k): act_name(hp, layer)
        for layer in range(n_layers)
        for k, hp in enumerate(HOOK_POINTS)
        if (k != 0 or layer == 0) and act_name(hp, layer) in hook_dict
    }
    reducers = {name: token_norms for name in names.values()}
    for batch, out in stream(model, seqs, reducers, batch_size=batch_size, progress=progress and "norm probe"):
        buf = torch.full((*batch.tokens.shape, n_layers, len(HOOK_POINTS)), float("nan"))
        for (layer, k), name in names.items():
            buf[:, :, layer, k] = out[name]
        buf[:, :, 1:, 0] = buf[:, :, :-1, post]
        for row, (i, length) in enumerate(zip(batch.index, batch.lengths.tolist())):
            norms[offsets[i] : offsets[i] + length] = buf[row, :length]

    measured = norms if not torch.isnan(norms[..., 1]).all() else norms[..., [0, 2]]
    if not torch.isfinite(measured).all():
        bad = torch.nonzero(~torch.isfinite(measured))[0].tolist()
        raise NonFiniteActivationError(
            f"non-finite residual norm at block {bad[1]} (token row {bad[0]}): the model's {model_dtype(model)} "
            "activations overflowed or are NaN. Run the forward in float32 (run_analysis(..., "
            "forward_dtype='float32'), sd-lens --forward-dtype float32), or load the model with "
            "dtype=torch.float32 or torch.bfloat16 (float32's range); if it persists in float32, check the weights"
        )
    seq_index = torch.repeat_interleave(torch.arange(len(seqs)), torch.tensor([len(s) for s in seqs]))
    positions = torch.cat([torch.arange(len(s)) for s in seqs])
    token_ids = torch.cat(seqs)
    strings = {int(t): decode_one(model, int(t)) for t in token_ids.unique().tolist()}
    return NormProbe(
        model=model_name(model),
        n_layers=n_layers,
        norms=norms,
        seq_index=seq_index,
        positions=positions,
        token_ids=token_ids,
        sequences=seqs,
        texts=tok.texts,
        token_strings=strings,
        seconds=time.perf_counter() - t0,
        n_truncated=tok.n_truncated,
    )

