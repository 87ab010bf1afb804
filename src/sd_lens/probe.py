"""Norm probe: ‖x‖ of every token at every residual hook point of every block.

Streams over the texts in right-padded batches. Hooks reduce each activation to one float32
norm per token before anything is stored, so memory grows with tokens × blocks, never with
d_model. No block after the deepest one asked for runs, and the unembedding never runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from sd_lens.errors import InputError, NonFiniteActivationError
from sd_lens.loading import model_name
from sd_lens.tokens import Tokenized, model_device, run_hooked, tokenize

HOOK_POINTS = ("resid_pre", "resid_mid", "resid_post")


@dataclass
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
    #: resid_post vectors of candidate high-norm states: layer -> (token rows [k], vectors [k, d])
    state_vectors: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)
    _typical: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def n_tokens(self) -> int:
        return int(self.norms.shape[0])

    def hook(self, name: str = "resid_post") -> Tensor:
        """Norms at one hook point: float32 [n_tokens, n_layers]."""
        if name not in self.hook_points:
            raise InputError(f"unknown hook point {name!r}; choose one of {self.hook_points}")
        return self.norms[:, :, self.hook_points.index(name)]

    def typical_norm(self, name: str = "resid_post") -> Tensor:
        """Median norm of each block over all tokens: float32 [n_layers]."""
        if name not in self._typical:
            self._typical[name] = self.hook(name).median(dim=0).values
        return self._typical[name]

    def ratio(self, name: str = "resid_post") -> Tensor:
        """Norm divided by the block's typical (median) norm: [n_tokens, n_layers]."""
        return self.hook(name) / self.typical_norm(name)

    def token_string(self, token_id: int) -> str:
        return self.token_strings.get(int(token_id), f"<{int(token_id)}>")

    def rows_of(self, seq: int) -> Tensor:
        """Row indices of one text's tokens, in position order."""
        return torch.nonzero(self.seq_index == seq).flatten()


def _hook_names(model: Any, layer: int) -> list[str | None]:
    names: list[str | None] = []
    for hp in HOOK_POINTS:
        name = f"blocks.{layer}.hook_{hp}"
        names.append(name if name in model.hook_dict else None)
    return names


def probe_norms(
    model: Any,
    texts: Sequence[str] | Tokenized,
    *,
    batch_size: int = 16,
    max_tokens_per_text: int | None = 64,
    layers: int | None = None,
    keep_vectors_ratio: float | None = 2.0,
    max_vectors_per_layer: int = 1024,
    progress: bool = False,
) -> NormProbe:
    """Measure the residual norm of every token at every hook point of blocks ``0..layers-1``.

    Args:
        model: a TransformerLens model (see :func:`sd_lens.load_model`).
        texts: strings (BOS is prepended to each) or an already tokenised :class:`Tokenized`.
        batch_size: texts per forward pass.
        max_tokens_per_text: truncate longer texts (``None``: error if over the context).
        layers: probe only the first ``layers`` blocks (the forward stops there); default all.
        keep_vectors_ratio: also keep the resid_post vector of every state whose norm exceeds
            this multiple of its batch's median norm at that block (the few candidate high-norm
            states, used by :func:`sd_lens.defects.find_defects` for directions); ``None``: keep none.
        max_vectors_per_layer: cap on kept vectors per block (bounds memory on huge corpora).
        progress: show a tqdm progress bar.

    Raises:
        InputError: empty texts, over-long text, bad ``layers``.
        NonFiniteActivationError: a NaN or inf norm (names the block and hook point).
    """
    n_layers = int(model.cfg.n_layers) if layers is None else int(layers)
    if not 1 <= n_layers <= int(model.cfg.n_layers):
        raise InputError(f"layers must be in 1..{model.cfg.n_layers}, got {layers}")
    tok = texts if isinstance(texts, Tokenized) else tokenize(model, texts, max_tokens_per_text=max_tokens_per_text)
    seqs = tok.sequences
    offsets = torch.tensor([0] + [len(s) for s in seqs]).cumsum(0)
    n_tokens = int(offsets[-1])
    norms = torch.full((n_tokens, n_layers, len(HOOK_POINTS)), float("nan"), dtype=torch.float32)
    t0 = time.perf_counter()
    device = model_device(model)
    state: dict[str, Any] = {}

    kept: dict[int, list[tuple[Tensor, Tensor]]] = {}
    n_kept = [0] * n_layers
    post = HOOK_POINTS.index("resid_post")

    def make_hook(layer: int, k: int):
        def hook(act: Tensor, hook: Any) -> None:
            act = act.detach()
            nrm = torch.linalg.vector_norm(act.float(), dim=-1)
            state["buf"][:, :, layer, k] = nrm.cpu()
            if k == post and keep_vectors_ratio is not None and n_kept[layer] < max_vectors_per_layer:
                valid = state["valid"]
                thr = keep_vectors_ratio * nrm[valid].median()
                mask = (nrm > thr) & valid
                if bool(mask.any()):
                    where = torch.nonzero(mask)[: max_vectors_per_layer - n_kept[layer]]
                    n_kept[layer] += len(where)
                    kept.setdefault(layer, []).append((where.cpu(), act[where[:, 0], where[:, 1]].float().cpu()))

        return hook

    # resid_pre of block l is resid_post of block l-1: hook it at block 0 only and copy.
    fwd_hooks = [
        (name, make_hook(layer, k))
        for layer in range(n_layers)
        for k, name in enumerate(_hook_names(model, layer))
        if name is not None and (k != 0 or layer == 0)
    ]
    batches = list(tok.batches(batch_size))
    iterator: Any = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc="norm probe", unit="batch")
    for idx, tokens, lengths in iterator:
        state["buf"] = torch.full((tokens.shape[0], tokens.shape[1], n_layers, len(HOOK_POINTS)), float("nan"))
        state["valid"] = (torch.arange(tokens.shape[1])[None, :] < lengths[:, None]).to(device)
        before = {layer: len(v) for layer, v in kept.items()}
        run_hooked(model, tokens, fwd_hooks, stop_at_layer=n_layers)
        buf = state.pop("buf")
        buf[:, :, 1:, 0] = buf[:, :, :-1, post]
        for row, (i, length) in enumerate(zip(idx, lengths.tolist())):
            norms[offsets[i] : offsets[i] + length] = buf[row, :length]
        # map (batch row, position) of the vectors kept in this batch to global token rows
        row_offset = torch.tensor([int(offsets[i]) for i in idx])
        for layer, items in kept.items():
            for j in range(before.get(layer, 0), len(items)):
                where, vecs = items[j]
                items[j] = (row_offset[where[:, 0]] + where[:, 1], vecs)

    measured = norms if not torch.isnan(norms[..., 1]).all() else norms[..., [0, 2]]
    if not torch.isfinite(measured).all():
        bad = torch.nonzero(~torch.isfinite(measured))[0].tolist()
        raise NonFiniteActivationError(
            f"non-finite residual norm at block {bad[1]} (token row {bad[0]}): the model's activations "
            "overflowed or are NaN; load it in float32 (load_model(..., dtype=torch.float32)) and check the weights"
        )
    seq_index = torch.repeat_interleave(torch.arange(len(seqs)), torch.tensor([len(s) for s in seqs]))
    positions = torch.cat([torch.arange(len(s)) for s in seqs])
    token_ids = torch.cat(seqs)
    strings = {int(t): _decode(model, int(t)) for t in token_ids.unique().tolist()}
    state_vectors = {
        layer: (torch.cat([w for w, _ in items]), torch.cat([v for _, v in items])) for layer, items in kept.items()
    }
    return NormProbe(
        model=model_name(model),
        state_vectors=state_vectors,
        n_layers=n_layers,
        norms=norms,
        seq_index=seq_index,
        positions=positions,
        token_ids=token_ids,
        sequences=seqs,
        texts=tok.texts,
        token_strings=strings,
        seconds=time.perf_counter() - t0,
    )


def _decode(model: Any, token_id: int) -> str:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return f"<{token_id}>"
    return tokenizer.decode([token_id])
