"""Defect finder: group high-norm states into *defects*, and tell major defects from minor groups.

Definitions (all relative to the probed corpus, nothing tuned to a model):

* A state (token, block) is **high-norm** when its resid_post norm exceeds ``threshold`` times the
  block's median norm over the corpus.
* An **episode** is a maximal run of blocks where one token's norm stays above ``threshold / 2``
  times the median and that contains at least one high-norm state (hysteresis, so one dip does
  not split it).
* At each block, the states of all episodes are clustered by direction (within
  ``split_angle_deg``, sign-free; :mod:`sd_lens.analyses.state_directions`). Clusters of consecutive
  blocks are **linked** when they share at least half the states of the smaller one (the same tokens
  go on, in the same cluster). A **defect** is a connected set of linked clusters: tokens that share
  blocks and directions form one defect even when their episodes start in different blocks, and a
  direction that turns slowly from block to block stays one defect (its **turn** is measured).
  Its **direction** is the normalised mean of all its states' sign-aligned unit vectors; its
  **spread** is the arccos of their mean cosine to their own block's direction.
* The **explosion block** is the block whose update adds the most to the carriers' component along
  the direction (measured on the traced carriers' residual streams, within each carrier's blocks: kept
  by the direction pass within ``TRACE_BUDGET_BYTES``, else from re-run prefixes); the **decay
  blocks** are the blocks after it, up to one past its last high-norm state, whose update removes at
  least ``decay_fraction`` of the peak component.
* **Severity.** A defect is *major* when it peaks at least ``major_ratio`` (default twice the
  threshold) times its block's median, is high-norm in at least two blocks, is carried by more than
  one token occurrence (or by the initial token, whose state is the same in every text), and its
  states are not looser than ``split_angle_deg``. Everything else is a *minor group*, kept apart with
  the reasons; the downstream analyses run on the major defects.

Nothing here depends on how many states a corpus has: directions are exact sums over every state,
with no storage cap (memory grows with tokens x blocks, not with d_model).

The authors' code (github.com/haoqiwang/singular_defect) takes the empirical direction as the mean of
every state above a fixed, per-model norm; here the threshold is relative to the corpus and the states
are grouped into defects first.

Reference: singular defects and their explosion and decay layers, Wang et al., *Demystifying Singular
Defects in Large Language Models* (ICML 2025), observations (i) and (ii).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sd_lens.analyses.probe import NormProbe
from sd_lens.analyses.state_directions import TRACE_BUDGET_BYTES, StateClusters, cluster_state_directions
from sd_lens.errors import InputError
from sd_lens.linalg import acute_angle_deg, unit
from sd_lens.runtime.engine import stream
from sd_lens.runtime.hooks import act_name
from sd_lens.runtime.reducers import last_token
from sd_lens.types import HookedModel


@dataclass(frozen=True, eq=False)
class Episode:
    """One token's run of high-norm blocks (inclusive), with its onset block (largest norm growth)."""

    row: int
    seq: int
    position: int
    token_id: int
    start: int
    end: int
    onset: int

    @property
    def initial(self) -> bool:
        return self.position == 0


@dataclass(frozen=True, eq=False)
class Defect:
    """A singular defect (or a minor high-norm group): linked direction clusters over a run of blocks.

    ``major`` says which; ``minor_reasons`` says why not, in words. ``peak_ratio`` is the largest
    norm over its block's median among its states; ``spread_deg`` the arccos of its states' mean
    cosine to the direction of their own block (``block_directions``); ``turn_deg`` the angle between
    its directions at its first and last blocks. ``direction`` is the mean over all its states.
    """

    index: int
    direction: Tensor
    explosion_layer: int
    decay_layers: list[int]
    first_layer: int
    last_layer: int
    peak_norm: float
    peak_layer: int
    typical_norm: float
    peak_ratio: float
    initial_token: bool
    noninitial_tokens: list[tuple[str, int]]
    n_episodes: int
    n_states: int
    spread_deg: float
    turn_deg: float
    major: bool
    minor_reasons: list[str]
    component: Tensor  # mean component along the direction at resid_post of each block (traced carriers)
    update: Tensor  # mean per-block update of that component (within the carriers' blocks)
    block_directions: dict[int, Tensor] = field(default_factory=dict, repr=False)
    episodes: list[Episode] = field(default_factory=list, repr=False)

    @property
    def n_blocks(self) -> int:
        """Blocks from the first to the last high-norm state."""
        return self.last_layer - self.first_layer + 1

    @property
    def label(self) -> str:
        return f"D{self.index}" if self.major else f"m{self.index}"

    def carriers(self, max_items: int = 8) -> str:
        toks = ["the initial token"] if self.initial_token else []
        toks += [repr(t) for t, _ in self.noninitial_tokens[:max_items]]
        return ", ".join(toks) if toks else "no token"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "major": self.major,
            "minor_reasons": list(self.minor_reasons),
            "explosion_layer": self.explosion_layer,
            "decay_layers": self.decay_layers,
            "first_layer": self.first_layer,
            "last_layer": self.last_layer,
            "peak_norm": round(self.peak_norm, 3),
            "peak_layer": self.peak_layer,
            "typical_norm": round(self.typical_norm, 3),
            "peak_ratio": round(self.peak_ratio, 3),
            "initial_token": self.initial_token,
            "noninitial_tokens": [t for t, _ in self.noninitial_tokens],
            "noninitial_token_counts": {t: c for t, c in self.noninitial_tokens},
            "n_episodes": self.n_episodes,
            "n_states": self.n_states,
            "spread_deg": round(self.spread_deg, 3),
            "turn_deg": round(self.turn_deg, 3),
        }


@dataclass(frozen=True, eq=False)
class DefectReport:
    """All defects of a model on a corpus: the major ones (possibly none) and the minor groups apart.

    Iterating, ``len`` and indexing go over the major defects, which the downstream analyses use.
    """

    model: str
    n_layers: int
    threshold: float
    typical_norm: Tensor
    n_high_states: int
    defects: list[Defect]
    minor: list[Defect] = field(default_factory=list)
    major_ratio: float = 8.0
    clusters: StateClusters | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.defects)

    def __iter__(self):
        return iter(self.defects)

    def __getitem__(self, i: int) -> Defect:
        return self.defects[i]

    @property
    def all(self) -> list[Defect]:
        """Major defects, then minor groups."""
        return [*self.defects, *self.minor]


def find_episodes(probe: NormProbe, threshold: float = 4.0) -> list[Episode]:
    """High-norm episodes of every token (see the module docstring)."""
    ratio = probe.ratio("resid_post")
    post = probe.hook("resid_post")
    pre = probe.hook("resid_pre")
    low = threshold / 2
    episodes: list[Episode] = []
    for row in torch.nonzero(ratio.max(dim=1).values > threshold).flatten().tolist():
        above = (ratio[row] > low).tolist()
        layer = 0
        while layer < probe.n_layers:
            if not above[layer]:
                layer += 1
                continue
            start = layer
            while layer + 1 < probe.n_layers and above[layer + 1]:
                layer += 1
            end = layer
            layer += 1
            if bool((ratio[row, start : end + 1] > threshold).any()):
                growth = post[row, start : end + 1] - pre[row, start : end + 1]
                episodes.append(
                    Episode(
                        row=row,
                        seq=int(probe.seq_index[row]),
                        position=int(probe.positions[row]),
                        token_id=int(probe.token_ids[row]),
                        start=start,
                        end=end,
                        onset=start + int(growth.argmax()),
                    )
                )
    return episodes


def residual_trajectories(
    model: HookedModel, prefixes: list[Int[Tensor, " pos"]], n_layers: int | None = None, batch_size: int = 16
) -> Float[Tensor, "k n_layers_plus_1 d_model"]:
    """Residual stream of the last token of each prefix: [K, n_layers + 1, d_model] float32.

    Index 0 is resid_pre of block 0, index l + 1 is resid_post of block l, for the first
    ``n_layers`` blocks (default all). Streamed in padded batches of ``batch_size``; the forward
    stops there (no unembedding).
    """
    n_layers = int(model.cfg.n_layers) if n_layers is None else int(n_layers)
    names = [act_name("resid_pre", 0)] + [act_name("resid_post", layer) for layer in range(n_layers)]
    out = torch.zeros(len(prefixes), n_layers + 1, int(model.cfg.d_model))
    for batch, values in stream(model, prefixes, {name: last_token for name in names}, batch_size=batch_size):
        out[batch.index] = torch.stack([values[name].float().cpu() for name in names], dim=1)
    return out


def _components(clusters: StateClusters, link_fraction: float) -> list[list[tuple[int, int]]]:
    """Linked clusters (block, id): consecutive blocks sharing >= link_fraction of the smaller one's states."""
    nodes = [(layer, k) for layer in range(clusters.n_layers) for k in range(clusters.n_clusters(layer))]
    parent = {n: n for n in nodes}

    def find(n: tuple[int, int]) -> tuple[int, int]:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    a_all = clusters.assignment
    for layer in range(clusters.n_layers - 1):
        a, b = a_all[:, layer].long(), a_all[:, layer + 1].long()
        both = (a >= 0) & (b >= 0)
        if not bool(both.any()):
            continue
        pairs, shared = torch.unique(torch.stack([a[both], b[both]], dim=1), dim=0, return_counts=True)
        for (i, j), n in zip(pairs.tolist(), shared.tolist()):
            smaller = min(float(clusters.counts[layer][i]), float(clusters.counts[layer + 1][j]))
            if n >= link_fraction * smaller:
                parent[find((layer, i))] = find((layer + 1, j))
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for n in nodes:
        groups.setdefault(find(n), []).append(n)
    return sorted(groups.values())


def _orient(component: list[tuple[int, int]], clusters: StateClusters) -> dict[tuple[int, int], float]:
    """A sign per cluster so that their sums point the same way (each relative to the nearest already placed)."""
    ordered = sorted(component, key=lambda n: (-float(clusters.counts[n[0]][n[1]]), n))
    signs = {ordered[0]: 1.0}
    acc = clusters.sums[ordered[0][0]][ordered[0][1]].double().clone()
    for n in ordered[1:]:
        s = clusters.sums[n[0]][n[1]].double()
        signs[n] = 1.0 if float(acc @ s) >= 0 else -1.0
        acc += signs[n] * s
    return signs


def find_defects(
    model: HookedModel,
    probe: NormProbe,
    *,
    threshold: float = 4.0,
    split_angle_deg: float = 30.0,
    decay_fraction: float = 0.1,
    major_ratio: float | None = None,
    link_fraction: float = 0.5,
    max_traces: int = 8,
    batch_size: int = 16,
    progress: bool = False,
) -> DefectReport:
    """Group the probe's high-norm states into defects and minor groups (see the module docstring).

    Args:
        model: the model the probe ran on (texts with high-norm tokens are re-run for directions; that
            pass also keeps the traced carriers' residual streams, within ``TRACE_BUDGET_BYTES``).
        probe: a :class:`~sd_lens.analyses.probe.NormProbe`.
        threshold: high-norm means above ``threshold`` x the block's median norm.
        split_angle_deg: at one block, states further apart than this are different directions;
            a defect whose states are looser than this is a minor group.
        decay_fraction: a decay block removes at least this fraction of the peak component.
        major_ratio: a major defect peaks at least this many times its block's median (default
            ``2 * threshold``).
        link_fraction: clusters of consecutive blocks are one defect when they share at least this
            fraction of the smaller one's states.
        max_traces: carriers traced per defect to measure the component profile.
        batch_size: texts per forward of the second pass.
        progress: tqdm bars for the passes.

    Example:
        >>> import sd_lens
        >>> model = sd_lens.tiny_model("llama")
        >>> report = sd_lens.find_defects(model, sd_lens.probe_norms(model, ["The cat sat on the mat."]))
        >>> len(report.defects), report.threshold  # a random tiny model has none
        (0, 4.0)
    """
    for name, value in (("threshold", threshold), ("split_angle_deg", split_angle_deg)):
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{name} must be a positive number, got {value}")
    if not 0 < split_angle_deg <= 90:
        raise InputError(f"split_angle_deg must be in (0, 90], got {split_angle_deg}")
    major_ratio = 2.0 * threshold if major_ratio is None else float(major_ratio)
    typical = probe.typical_norm("resid_post")
    ratio = probe.ratio("resid_post")
    post = probe.hook("resid_post")
    episodes = find_episodes(probe, threshold)
    marked = torch.zeros(probe.n_tokens, probe.n_layers, dtype=torch.bool)
    for ep in episodes:
        marked[ep.row, ep.start : ep.end + 1] = True
    clusters = cluster_state_directions(
        model, probe, marked, max_angle_deg=split_angle_deg, batch_size=batch_size,
        progress=progress and "high-norm directions", trace_budget_bytes=TRACE_BUDGET_BYTES,
    )
    # component id of every state
    comps = _components(clusters, link_fraction)
    lookup = [torch.full((clusters.n_clusters(layer) + 1,), -1, dtype=torch.long) for layer in range(probe.n_layers)]
    for g, comp in enumerate(comps):
        for layer, k in comp:
            lookup[layer][k] = g
    group_of = torch.full((probe.n_tokens, probe.n_layers), -1, dtype=torch.long)
    for layer in range(probe.n_layers):
        group_of[:, layer] = lookup[layer][clusters.assignment[:, layer].long()]  # -1 indexes the trailing -1
    high = ratio > threshold

    drafts = []
    for g, comp in enumerate(comps):
        mine = group_of == g
        mine_high = mine & high
        if not bool(mine_high.any()):
            continue  # the shoulder of an episode whose high-norm states lie elsewhere: not a defect
        drafts.append((g, _draft(probe, clusters, comp, mine, mine_high, ratio, post, typical, episodes)))

    majors: list[tuple[int, Defect]] = []
    minors: list[tuple[int, Defect]] = []
    for g, d in drafts:
        reasons = _minor_reasons(d, major_ratio, split_angle_deg)
        (minors if reasons else majors).append((g, replace(d, major=not reasons, minor_reasons=reasons)))
    traced = _trace(model, probe, [*majors, *minors], group_of, decay_fraction, max_traces, batch_size, clusters)
    major = sorted(traced[: len(majors)], key=lambda d: (d.explosion_layer, -d.peak_norm))
    minor = sorted(traced[len(majors) :], key=lambda d: (-d.peak_ratio, d.first_layer))
    return DefectReport(
        model=probe.model,
        n_layers=probe.n_layers,
        threshold=threshold,
        typical_norm=typical,
        n_high_states=int(high.sum()),
        defects=[replace(d, index=i) for i, d in enumerate(major)],
        minor=[replace(d, index=i) for i, d in enumerate(minor)],
        major_ratio=major_ratio,
        clusters=clusters,
    )


def _minor_reasons(d: Defect, major_ratio: float, split_angle_deg: float) -> list[str]:
    reasons = []
    if d.peak_ratio < major_ratio:
        reasons.append(f"peaks at {d.peak_ratio:.1f}x its block's median (a major defect reaches {major_ratio:g}x)")
    if d.n_blocks < 2:
        reasons.append(f"high-norm in one block only (block {d.first_layer})")
    if not d.initial_token and d.n_episodes < 2:
        reasons.append("carried by a single token occurrence")
    if d.spread_deg > split_angle_deg:
        reasons.append(f"loose: its states lie {d.spread_deg:.1f} deg from their block's direction (mean cosine)")
    return reasons


def _draft(
    probe: NormProbe,
    clusters: StateClusters,
    comp: list[tuple[int, int]],
    mine: Tensor,
    mine_high: Tensor,
    ratio: Tensor,
    post: Tensor,
    typical: Tensor,
    episodes: list[Episode],
) -> Defect:
    """A defect from one component, without its traced explosion and decay blocks."""
    signs = _orient(comp, clusters)
    total = torch.stack([signs[n] * clusters.sums[n[0]][n[1]].double() for n in comp]).sum(0)
    raw = torch.stack([clusters.raw_sums[n[0]][n[1]].double() for n in comp]).sum(0)
    direction = unit(total)
    if float(direction @ raw) < 0:  # point along the states themselves
        direction = -direction
    n_states = sum(float(clusters.counts[layer][k]) for layer, k in comp)
    block_dirs: dict[int, Tensor] = {}
    resultant = 0.0  # sum over blocks of |sum of the block's aligned unit vectors| = sum of cosines to each block's direction
    for layer in sorted({layer for layer, _ in comp}):
        t = torch.stack([signs[n] * clusters.sums[layer][n[1]].double() for n in comp if n[0] == layer]).sum(0)
        resultant += float(t.norm())
        v = unit(t)
        block_dirs[layer] = (v if float(v @ direction) >= 0 else -v).float()
    # spread within blocks: a direction that turns from block to block is measured by the turn, not here
    spread = math.degrees(math.acos(min(1.0, resultant / n_states)))
    blocks = sorted(block_dirs)
    turn = float(acute_angle_deg(block_dirs[blocks[0]], block_dirs[blocks[-1]]))

    layers_high = torch.nonzero(mine_high.any(dim=0)).flatten()
    first, last = int(layers_high.min()), int(layers_high.max())
    masked_post = torch.where(mine, post, torch.full_like(post, -1.0))
    flat = int(masked_post.argmax())
    peak_row, peak_layer = divmod(flat, probe.n_layers)
    peak_ratio = float(torch.where(mine, ratio, torch.zeros_like(ratio)).max())
    rows = set(torch.nonzero(mine.any(dim=1)).flatten().tolist())
    members = [e for e in episodes if e.row in rows and bool(mine[e.row, e.start : e.end + 1].any())]
    carrier_rows = torch.nonzero(mine_high.any(dim=1)).flatten().tolist()
    counts = Counter(
        probe.token_string(int(probe.token_ids[r])) for r in carrier_rows if int(probe.positions[r]) > 0
    )
    return Defect(
        index=0,
        direction=direction.float(),
        explosion_layer=first,
        decay_layers=[],
        first_layer=first,
        last_layer=last,
        peak_norm=float(post[peak_row, peak_layer]),
        peak_layer=peak_layer,
        typical_norm=float(typical[peak_layer]),
        peak_ratio=peak_ratio,
        initial_token=any(int(probe.positions[r]) == 0 for r in carrier_rows),
        noninitial_tokens=sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])),
        n_episodes=len(members),
        n_states=int(round(n_states)),
        spread_deg=spread,
        turn_deg=turn,
        major=False,
        minor_reasons=[],
        component=torch.zeros(probe.n_layers),
        update=torch.zeros(probe.n_layers),
        block_directions=block_dirs,
        episodes=members,
    )


def carrier_order(probe: NormProbe, d: Defect) -> list[Episode]:
    """The defect's episodes in tracing order: the initial token's first (one: its state is the same in
    every text), then one occurrence of each carrier token, most frequent first, then more occurrences —
    so a few traced carriers represent them all, whatever the corpus size."""
    rank = {t: i for i, (t, _) in enumerate(d.noninitial_tokens)}
    by_token: dict[str, list[Episode]] = {}
    initial = []
    for e in sorted(d.episodes, key=lambda e: (e.position, e.row)):
        if e.initial:
            initial.append(e)
        else:
            by_token.setdefault(probe.token_string(e.token_id), []).append(e)
    queues = [by_token[t] for t in sorted(by_token, key=lambda t: rank.get(t, len(rank)))]
    return initial[:1] + [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def _trace(
    model: HookedModel,
    probe: NormProbe,
    drafts: list[tuple[int, Defect]],
    group_of: Tensor,
    decay_fraction: float,
    max_traces: int,
    batch_size: int,
    clusters: StateClusters | None = None,
) -> list[Defect]:
    """Explosion and decay blocks of every draft from carrier trajectories (all drafts at once).

    A carrier's trajectory is read from ``clusters.traces`` when the direction pass kept it (its budget
    allows), else from a re-run of its prefix (one stream for all of those)."""
    n_layers = probe.n_layers
    kept = clusters.traces if clusters is not None and clusters.traces is not None else None
    kept_rows = clusters.trace_rows if kept is not None and clusters is not None else {}
    plans = []  # per draft: [(trajectory key, first block, last block)]
    prefixes: list[Tensor] = []
    index: dict[tuple[int, ...], int] = {}
    from_pass: dict[tuple[int, ...], int] = {}  # prefix -> row of ``kept``
    for g, d in drafts:
        plan, seen = [], set()
        for e in carrier_order(probe, d):
            prefix = probe.sequences[e.seq][: e.position + 1]
            key = tuple(prefix.tolist())
            if key in seen:
                continue
            seen.add(key)
            blocks = torch.nonzero(group_of[e.row] == g).flatten()
            if key not in index and key not in from_pass:
                if e.row in kept_rows:
                    from_pass[key] = kept_rows[e.row]
                else:
                    index[key] = len(prefixes)
                    prefixes.append(prefix)
            plan.append((key, int(blocks.min()), int(blocks.max())))
            if len(plan) >= max_traces:
                break
        plans.append(plan)
    rerun = residual_trajectories(model, prefixes, n_layers, batch_size) if prefixes else None

    def trajectory(key: tuple[int, ...]) -> Tensor:
        if key in from_pass:
            assert kept is not None
            t = torch.zeros(n_layers + 1, kept.shape[-1])
            t[: kept.shape[1]] = kept[from_pass[key]]  # the blocks past the kept ones lie outside every window
            return t
        assert rerun is not None
        return rerun[index[key]]
    out = []
    for (_, d), plan in zip(drafts, plans):
        traj = torch.stack([trajectory(key) for key, _, _ in plan]) if plan else torch.zeros(0, n_layers + 1, 1)
        comp = traj @ d.direction if plan else torch.zeros(0, n_layers + 1)  # [K, L+1]
        delta = comp[:, 1:] - comp[:, :-1]  # update of block l
        # each carrier counts only inside its own blocks (and the block right after, where it decays)
        window = torch.zeros_like(delta)
        for k, (_, lo, hi) in enumerate(plan):
            window[k, lo : min(hi + 2, n_layers)] = 1.0
        weight = window.sum(0).clamp(min=1)
        update = (delta * window).sum(0) / weight
        component = (comp[:, 1:] * window).sum(0) / weight
        explosion = int(update.masked_fill(window.sum(0) == 0, float("-inf")).argmax())
        last = d.last_layer
        peak_comp = float(component[explosion : max(last, explosion) + 1].max())
        decay = [
            layer
            for layer in range(explosion + 1, min(last + 2, n_layers))
            if float(update[layer]) <= -decay_fraction * peak_comp
        ]
        out.append(replace(d, explosion_layer=explosion, decay_layers=decay, component=component, update=update))
    return out
