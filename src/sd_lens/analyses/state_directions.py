"""Directions of the high-norm states, clustered block by block, without storing the vectors.

The norm probe keeps one float per state, so it knows *which* states are high-norm but not their
directions. This second pass re-runs only what it must: each text up to its last high-norm token
(identical prefixes once: every text's initial token is the same state), to the deepest block
with one. At every block, each state of a high-norm episode joins, online, the nearest direction
cluster of that block within ``max_angle_deg`` (sign-free: a line, not an arrow) or opens a new one;
within a batch the largest norms come first, so the strongest states seed the clusters.

A cluster keeps the sum of its members' sign-aligned unit vectors and their count, a state keeps
only its cluster's id: memory is tokens x blocks small integers plus blocks x clusters x d_model
floats — never tokens x d_model, and there is no cap that stops keeping states part-way through a
corpus (the cap on stored vectors that split one defect in two on long corpora).

The same forwards can keep the whole residual stream of some episode rows (``trace_budget_bytes``, at
most :data:`TRACE_BUDGET_BYTES`): the defect finder's carrier traces, which otherwise re-ran each carrier's
prefix in a forward of its own (a row's state equals its prefix's last token's: attention is causal).

Because the sums are kept, the mean cosine of any set of clusters' states to any direction is
exact: ``sum_c sign_c (S_c . d) / sum_c n_c``.

Reference: the empirical high-norm direction of Wang et al., *Demystifying Singular Defects in Large
Language Models* (ICML 2025), Sec. 3 — there the mean of every state above a fixed norm; here per
block and per direction cluster, so that several defects and turning directions can be told apart.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sd_lens.analyses.probe import NormProbe
from sd_lens.runtime.engine import Batch, Reducer, stream
from sd_lens.runtime.hooks import act_name
from sd_lens.types import HookedModel

__all__ = ["TRACE_BUDGET_BYTES", "StateClusters", "cluster_state_directions"]

#: bytes of carrier trajectories (``[rows, blocks + 1, d_model]`` float32) the direction pass may keep for
#: the defect finder's explosion/decay tracing; rows beyond it are re-run as prefixes there
TRACE_BUDGET_BYTES = 64 * 2**20


@dataclass(frozen=True, eq=False)
class StateClusters:
    """Direction clusters of the high-norm states at each block.

    Attributes:
        sums: per block, float32 ``[k, d_model]``: the sum of each cluster's sign-aligned unit vectors.
        raw_sums: per block, ``[k, d_model]``: the same sum without sign alignment (says which way the
            states themselves point).
        counts: per block, float64 ``[k]``: the states in each cluster.
        assignment: int32 ``[n_tokens, n_layers]``: each state's cluster at its block, -1 for states
            outside every episode.
        sign: int8 ``[n_tokens, n_layers]``: +1 or -1, how each state was aligned with its cluster.
        n_forward_tokens: tokens the second pass ran (after removing repeated prefixes).
        traces: float32 ``[k, n + 1, d_model]``: the residual stream (resid_pre of block 0, then
            resid_post of blocks ``0..n-1``) of up to :data:`TRACE_BUDGET_BYTES` of episode rows, read in
            the same forwards (a row's state is the same as its prefix's last token's: causal attention).
        trace_rows: token row -> index into ``traces``.
    """

    max_angle_deg: float
    sums: list[Tensor]
    raw_sums: list[Tensor]
    counts: list[Tensor]
    assignment: Tensor
    sign: Tensor
    n_forward_tokens: int
    seconds: float
    traces: Tensor | None = field(default=None, repr=False)
    trace_rows: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def n_layers(self) -> int:
        return len(self.sums)

    def n_clusters(self, layer: int) -> int:
        return int(self.counts[layer].shape[0])

    def direction(self, layer: int, k: int) -> Float[Tensor, " d_model"]:
        s = self.sums[layer][k]
        return s / s.norm()

    def spread_deg(self, layer: int, k: int) -> float:
        """arccos of the mean cosine between the cluster's states and its own direction."""
        cos = float(self.sums[layer][k].norm()) / float(self.counts[layer][k])
        return math.degrees(math.acos(min(1.0, cos)))


@dataclass(frozen=True)
class _Targets:
    """What one prefix contributes at one block: positions, and the token rows each position stands for."""

    positions: Tensor  # [q] positions to read
    rows: Tensor  # [r] token rows of the probe
    owner: Tensor  # [r] index into positions
    weights: Tensor  # [q] how many rows each position stands for


class _Bank:
    """Online direction clusters of one block."""

    def __init__(self, max_angle_deg: float) -> None:
        self.cos_min = math.cos(math.radians(max_angle_deg))
        self.sums: Tensor | None = None
        self.raw: Tensor | None = None
        self.counts: list[float] = []

    def add(self, units: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """Assign ``units`` [m, d] (largest norm first) with multiplicities ``weights`` [m]; return ids and signs."""
        m = units.shape[0]
        ids = torch.full((m,), -1, dtype=torch.long)
        signs = torch.ones(m, dtype=torch.int8)
        if self.sums is not None:  # join existing clusters in one matmul
            cos = units @ (self.sums / self.sums.norm(dim=1, keepdim=True)).T
            best = cos.abs().max(dim=1)
            hit = (best.values >= self.cos_min).cpu()
            ids[hit] = best.indices.cpu()[hit]
            signs[hit] = torch.where(cos.gather(1, best.indices[:, None])[:, 0] >= 0, 1, -1).to(torch.int8).cpu()[hit]
        fresh: list[Tensor] = []  # directions opened in this batch (by the states no old cluster took)
        base = len(self.counts)
        for i in torch.nonzero(ids < 0).flatten().tolist():
            u = units[i]
            if fresh:
                cos = torch.stack(fresh) @ u
                j = int(cos.abs().argmax())
                if float(cos[j].abs()) >= self.cos_min:
                    ids[i] = base + j
                    signs[i] = 1 if float(cos[j]) >= 0 else -1
                    continue
            fresh.append(u)
            ids[i] = base + len(fresh) - 1
        k_total = base + len(fresh)
        d = units.shape[1]
        sums = torch.zeros(k_total, d, dtype=units.dtype, device=units.device)
        raw = torch.zeros_like(sums)
        if self.sums is not None and self.raw is not None:
            sums[:base], raw[:base] = self.sums, self.raw
        w = weights.to(units.device, units.dtype)[:, None]
        idx = ids.to(units.device)
        sums.index_add_(0, idx, units * w * signs.to(units.device, units.dtype)[:, None])
        raw.index_add_(0, idx, units * w)
        self.sums, self.raw = sums, raw
        counts = torch.zeros(k_total, dtype=torch.float64)
        counts[: len(self.counts)] = torch.tensor(self.counts, dtype=torch.float64)
        counts.index_add_(0, ids, weights.to(torch.float64))
        self.counts = counts.tolist()
        return ids, signs


def cluster_state_directions(
    model: HookedModel,
    probe: NormProbe,
    states: Int[Tensor, "n_tokens n_layers"] | Tensor,
    *,
    max_angle_deg: float = 30.0,
    batch_size: int = 16,
    progress: bool | str = False,
    trace_budget_bytes: int = 0,
) -> StateClusters:
    """Cluster the directions of the states marked in ``states`` (bool ``[n_tokens, n_layers]``), block by block.

    Args:
        model: the model the probe ran on.
        probe: the :class:`~sd_lens.analyses.probe.NormProbe` whose rows ``states`` indexes.
        states: True at each (token row, block) to cluster (the states of the high-norm episodes).
        max_angle_deg: a state joins a cluster whose direction is at most this far from it.
        batch_size: the probe's texts per forward; prefixes are batched to about as many tokens.
        progress: a tqdm bar (a string is its label).
        trace_budget_bytes: also keep the residual trajectories of episode rows, up to this many bytes
            (0: none), through the block after the deepest marked one — the defect finder's carrier
            traces, read here instead of in a forward of their own (see :func:`_trace_priority`).
    """
    t0 = time.perf_counter()
    states = states.bool()
    n_tokens, n_layers = probe.n_tokens, probe.n_layers
    assignment = torch.full((n_tokens, n_layers), -1, dtype=torch.int32)
    sign = torch.zeros((n_tokens, n_layers), dtype=torch.int8)
    banks = [_Bank(max_angle_deg) for _ in range(n_layers)]
    active_rows = torch.nonzero(states.any(dim=1)).flatten()
    deepest = int(torch.nonzero(states.any(dim=0)).flatten().max()) + 1 if len(active_rows) else 0

    # one forward per distinct prefix: text up to its last marked token
    prefixes: list[Tensor] = []
    members: list[list[int]] = []  # texts sharing each prefix
    seen: dict[tuple[int, ...], int] = {}
    text_need: dict[int, int] = {}
    for row in active_rows.tolist():
        seq, pos = int(probe.seq_index[row]), int(probe.positions[row])
        text_need[seq] = max(text_need.get(seq, 0), pos + 1)
    for seq in sorted(text_need):
        prefix = probe.sequences[seq][: text_need[seq]]
        key = tuple(prefix.tolist())
        if key not in seen:
            seen[key] = len(prefixes)
            prefixes.append(prefix)
            members.append([])
        members[seen[key]].append(seq)

    # per prefix and block: the positions to read and the token rows (one per member text) each stands for
    firsts = torch.tensor([0] + [len(seq) for seq in probe.sequences[:-1]]).cumsum(0)
    targets: list[dict[int, _Targets]] = []
    for i, seq_list in enumerate(members):
        n = len(prefixes[i])
        rows = firsts[torch.tensor(seq_list)][:, None] + torch.arange(n)[None, :]  # [m, n]: members share the prefix
        marked = states[rows]  # [m, n, n_layers]
        per_layer: dict[int, _Targets] = {}
        for layer in torch.nonzero(marked.any(dim=(0, 1))).flatten().tolist():
            mk = marked[:, :, layer]
            where = torch.nonzero(mk.any(dim=0)).flatten()
            member, col = torch.nonzero(mk[:, where], as_tuple=True)  # col indexes where
            per_layer[layer] = _Targets(where, rows[member, where[col]], col, mk[:, where].sum(dim=0).double())
        targets.append(per_layer)

    def parts_of(batch: Batch, layer: int) -> list[tuple[int, _Targets]]:
        return [(b, targets[i][layer]) for b, i in enumerate(batch.index) if layer in targets[i]]

    # carrier trajectories within the budget: (position, slot) per prefix
    d_model = int(model.cfg.d_model)
    trace_depth = min(deepest + 1, n_layers) if len(active_rows) else 0
    row_bytes = (trace_depth + 1) * d_model * 4
    n_slots = min(len(active_rows), trace_budget_bytes // row_bytes) if trace_budget_bytes > 0 else 0
    trace_rows: dict[int, int] = {}
    trace_at: list[tuple[Tensor, Tensor]] = [(torch.zeros(0, dtype=torch.long),) * 2 for _ in prefixes]
    traces = None
    if n_slots:
        prefix_of = {seq: i for i, seq_list in enumerate(members) for seq in seq_list}
        at: dict[int, list[tuple[int, int]]] = {}
        for row in _trace_priority(probe, active_rows)[:n_slots]:
            seq, pos = int(probe.seq_index[row]), int(probe.positions[row])
            trace_rows[row] = len(trace_rows)
            at.setdefault(prefix_of[seq], []).append((pos, trace_rows[row]))
        for i, pairs in at.items():
            trace_at[i] = (torch.tensor([p for p, _ in pairs]), torch.tensor([s for _, s in pairs]))
        traces = torch.zeros(len(trace_rows), trace_depth + 1, d_model)

    def gather(act: Tensor, b_idx: Tensor, p_idx: Tensor) -> Tensor:
        dev = act.device  # index copies that do not wait for the device
        return act[b_idx.to(dev, non_blocking=True), p_idx.to(dev, non_blocking=True)].float()

    def traced(act: Tensor, batch: Batch) -> Tensor | None:
        parts = [(b, trace_at[i][0]) for b, i in enumerate(batch.index) if len(trace_at[i][0])]
        if not parts:
            return None
        return gather(act, torch.cat([torch.full_like(p, b) for b, p in parts]), torch.cat([p for _, p in parts]))

    def reducer(layer: int) -> Reducer:
        # on the device: only gather the marked states (and traced rows); the clustering runs on the host
        def reduce(act: Tensor, batch: Batch) -> tuple[Tensor | None, Tensor | None]:
            trace = traced(act, batch) if n_slots and layer < trace_depth else None
            parts = parts_of(batch, layer)
            if not parts:
                return None, trace
            b_idx = torch.cat([torch.full_like(t.positions, b) for b, t in parts])
            p_idx = torch.cat([t.positions for _, t in parts])
            return gather(act, b_idx, p_idx), trace

        return reduce

    def store(batch: Batch, index: int, vecs: Tensor | None) -> None:
        if vecs is None or traces is None:
            return
        slots = torch.cat([trace_at[i][1] for i in batch.index if len(trace_at[i][1])])
        traces[slots, index] = vecs

    def assign(batch: Batch, layer: int, vecs: Tensor) -> None:
        parts = parts_of(batch, layer)
        weights = torch.cat([t.weights for _, t in parts])
        offsets = torch.tensor([0] + [len(t.positions) for _, t in parts[:-1]]).cumsum(0)
        rows = torch.cat([t.rows for _, t in parts])
        owner = torch.cat([t.owner + off for (_, t), off in zip(parts, offsets.tolist())])
        norms = vecs.norm(dim=1)
        order = torch.argsort(norms, descending=True, stable=True)
        units = (vecs / norms.clamp_min(torch.finfo(torch.float32).tiny)[:, None])[order]
        ids_sorted, signs_sorted = banks[layer].add(units, weights[order])
        ids = torch.empty_like(ids_sorted)
        signs = torch.empty_like(signs_sorted)
        ids[order], signs[order] = ids_sorted, signs_sorted
        assignment[rows, layer] = ids[owner].to(torch.int32)
        sign[rows, layer] = signs[owner]

    names = {act_name("resid_post", layer): layer for layer in range(max(deepest, trace_depth))}
    reducers: dict[str, Reducer] = {name: reducer(layer) for name, layer in names.items()}
    first = act_name("resid_pre", 0)
    if n_slots:
        reducers[first] = traced
    if prefixes:
        # the same tokens per forward as the probe's batches: prefixes are shorter than whole texts
        mean_text = probe.n_tokens / max(1, len(probe.sequences))
        mean_prefix = sum(len(p) for p in prefixes) / len(prefixes)
        per_batch = max(batch_size, int(batch_size * mean_text / mean_prefix))
        for batch, out in stream(model, prefixes, reducers, batch_size=per_batch, progress=progress):
            if n_slots:
                store(batch, 0, out[first])
            for name, layer in names.items():  # block order, as the forward read them
                vecs, trace = out[name]
                store(batch, layer + 1, trace)
                if vecs is not None:
                    assign(batch, layer, vecs)
    empty = torch.zeros(0, d_model)
    return StateClusters(
        max_angle_deg=max_angle_deg,
        sums=[b.sums.cpu() if b.sums is not None else empty for b in banks],
        raw_sums=[b.raw.cpu() if b.raw is not None else empty for b in banks],
        counts=[torch.tensor(b.counts, dtype=torch.float64) for b in banks],
        assignment=assignment,
        sign=sign,
        n_forward_tokens=sum(len(p) for p in prefixes),
        seconds=time.perf_counter() - t0,
        traces=traces,
        trace_rows=trace_rows,
    )


def _trace_priority(probe: NormProbe, rows: Tensor) -> list[int]:
    """Episode rows in the order the defect finder picks carriers to trace (``carrier_order``): the first
    initial token, then the earliest occurrence of each token (most frequent tokens first), then the
    second occurrences, and so on — so a budget that cannot hold every row holds the ones it will read."""
    ordered = sorted(rows.tolist(), key=lambda r: (int(probe.positions[r]), r))
    initial = [r for r in ordered if int(probe.positions[r]) == 0]
    by_token: dict[int, list[int]] = {}
    for r in ordered:
        if int(probe.positions[r]) > 0:
            by_token.setdefault(int(probe.token_ids[r]), []).append(r)
    freq = Counter({t: len(rs) for t, rs in by_token.items()})
    queues = [by_token[t] for t, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))]
    rounds = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
    return initial[:1] + rounds + initial[1:]

