"""Defect finder: group high-norm states into *defects* that share a direction and an explosion block.

Definitions (all relative to the probed corpus, nothing tuned to a model):

* A state (token, block) is **high-norm** when its resid_post norm exceeds ``threshold`` times the
  block's median norm over the corpus.
* An **episode** is a maximal run of blocks where one token's norm stays above ``threshold / 2``
  times the median and that contains at least one high-norm state (hysteresis, so one dip does
  not split it). Its *onset block* is the block inside the run whose update grows the norm most.
* Episodes with the same onset block are split by direction (greedy, ``split_angle_deg``): each
  group is a **defect**. Its **direction** is the normalised mean of its states' unit vectors.
* The **explosion block** of a defect is the block whose update adds the most to its states'
  component along the direction (measured on re-run carrier prefixes, within each episode).
* Its **decay blocks** are the blocks after the explosion, up to one past the last high-norm state,
  whose update removes at least ``decay_fraction`` of the peak component.

The authors' code (github.com/haoqiwang/singular_defect) takes the empirical direction as the mean of
every state above a fixed, per-model norm; here the threshold is relative to the corpus and the states
are grouped into defects first.

Reference: singular defects and their explosion and decay layers, Wang et al., *Demystifying Singular
Defects in Large Language Models* (ICML 2025), observations (i) and (ii).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sd_lens.analyses.probe import NormProbe
from sd_lens.linalg import acute_angle_deg, unit
from sd_lens.runtime.engine import make_batch, run_batch
from sd_lens.runtime.hooks import act_name
from sd_lens.runtime.reducers import last_token
from sd_lens.types import HookedModel


@dataclass(frozen=True, eq=False)
class Episode:
    """One token's run of high-norm blocks (inclusive), with its onset block."""

    row: int
    seq: int
    position: int
    token_id: int
    start: int
    end: int
    onset: int
    direction: Tensor | None = None

    @property
    def initial(self) -> bool:
        return self.position == 0


@dataclass(frozen=True, eq=False)
class Defect:
    """A singular defect: high-norm episodes sharing a direction and an explosion block."""

    index: int
    direction: Tensor
    explosion_layer: int
    decay_layers: list[int]
    first_layer: int
    last_layer: int
    peak_norm: float
    peak_layer: int
    typical_norm: float
    initial_token: bool
    noninitial_tokens: list[tuple[str, int]]
    n_episodes: int
    n_states: int
    mean_angle_deg: float
    component: Tensor  # mean component along the direction at resid_post of each block (traced carriers)
    update: Tensor  # mean per-block update of that component (within the carriers' episodes)
    episodes: list[Episode] = field(default_factory=list, repr=False)

    def carriers(self, max_items: int = 8) -> str:
        toks = ["the initial token"] if self.initial_token else []
        toks += [repr(t) for t, _ in self.noninitial_tokens[:max_items]]
        return ", ".join(toks) if toks else "no token"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "explosion_layer": self.explosion_layer,
            "decay_layers": self.decay_layers,
            "first_layer": self.first_layer,
            "last_layer": self.last_layer,
            "peak_norm": round(self.peak_norm, 3),
            "peak_layer": self.peak_layer,
            "typical_norm": round(self.typical_norm, 3),
            "initial_token": self.initial_token,
            "noninitial_tokens": [t for t, _ in self.noninitial_tokens],
            "noninitial_token_counts": {t: c for t, c in self.noninitial_tokens},
            "n_episodes": self.n_episodes,
            "n_states": self.n_states,
            "mean_angle_deg": round(self.mean_angle_deg, 3),
        }


@dataclass(frozen=True, eq=False)
class DefectReport:
    """All defects of a model on a corpus (possibly none: an explicit empty list)."""

    model: str
    n_layers: int
    threshold: float
    typical_norm: Tensor
    n_high_states: int
    defects: list[Defect]
    n_undirected_episodes: int = 0  # high-norm episodes left out: the probe kept none of their vectors

    def __len__(self) -> int:
        return len(self.defects)

    def __iter__(self):
        return iter(self.defects)

    def __getitem__(self, i: int) -> Defect:
        return self.defects[i]

    def summary(self) -> str:
        """The defects in a few lines (written by :func:`sd_lens.report.prose.defects_summary`)."""
        from sd_lens.report.prose import defects_summary

        return defects_summary(self)


_UNDIRECTED_FIX = (
    "run probe_norms with keep_vectors_ratio set (and a larger max_vectors_per_layer for a big corpus)"
)


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


def _state_lookup(probe: NormProbe) -> dict[tuple[int, int], Tensor]:
    out: dict[tuple[int, int], Tensor] = {}
    for layer, (rows, vecs) in probe.state_vectors.items():
        for r, v in zip(rows.tolist(), vecs):
            out[(r, layer)] = v
    return out


def residual_trajectories(
    model: HookedModel, prefixes: list[Int[Tensor, " pos"]], n_layers: int | None = None
) -> Float[Tensor, "k n_layers_plus_1 d_model"]:
    """Residual stream of the last token of each prefix: [K, n_layers + 1, d_model] float32.

    Index 0 is resid_pre of block 0, index l + 1 is resid_post of block l, for the first
    ``n_layers`` blocks (default all). One padded batch; the forward stops there (no unembedding).
    """
    n_layers = int(model.cfg.n_layers) if n_layers is None else int(n_layers)
    names = [act_name("resid_pre", 0)] + [act_name("resid_post", layer) for layer in range(n_layers)]
    batch = make_batch(model, prefixes, range(len(prefixes)))
    out = run_batch(model, batch, {name: last_token for name in names})
    return torch.stack([out[name] for name in names], dim=1)


def _cluster_by_direction(episodes: list[Episode], max_angle: float) -> list[list[Episode]]:
    clusters: list[tuple[Tensor, list[Episode]]] = []
    for ep in sorted(episodes, key=lambda e: (e.start - e.end, e.row)):  # long episodes seed clusters
        if ep.direction is None:
            continue
        best, best_angle = None, max_angle
        for i, (centroid, _) in enumerate(clusters):
            angle = float(acute_angle_deg(centroid, ep.direction))
            if angle <= best_angle:
                best, best_angle = i, angle
        if best is None:
            clusters.append((ep.direction.clone(), [ep]))
        else:
            centroid, members = clusters[best]
            sign = 1.0 if float(centroid @ ep.direction) >= 0 else -1.0
            members.append(ep)
            clusters[best] = (unit(centroid * (len(members) - 1) + sign * ep.direction), members)
    return [members for _, members in clusters]


def find_defects(
    model: HookedModel,
    probe: NormProbe,
    *,
    threshold: float = 4.0,
    split_angle_deg: float = 30.0,
    decay_fraction: float = 0.1,
    max_traces: int = 8,
) -> DefectReport:
    """Group the probe's high-norm states into defects (see the module docstring).

    Args:
        model: the model the probe ran on (carrier prefixes are re-run to trace components).
        probe: a :class:`~sd_lens.analyses.probe.NormProbe` with kept state vectors.
        threshold: high-norm means above ``threshold`` x the block's median norm.
        split_angle_deg: episodes with one onset block but directions further apart than this
            form separate defects.
        decay_fraction: a decay block removes at least this fraction of the peak component.
        max_traces: carrier prefixes re-run per defect to measure the component profile.
    """
    typical = probe.typical_norm("resid_post")
    episodes = find_episodes(probe, threshold)
    states = _state_lookup(probe)
    episodes = [_with_direction(ep, states) for ep in episodes]
    by_onset: dict[int, list[Episode]] = {}
    for ep in episodes:
        by_onset.setdefault(ep.onset, []).append(ep)
    groups = [g for onset in sorted(by_onset) for g in _cluster_by_direction(by_onset[onset], split_angle_deg)]
    n_undirected = sum(ep.direction is None for ep in episodes)
    if n_undirected:
        warnings.warn(
            f"{n_undirected} of {len(episodes)} high-norm episodes have no kept state vector and are left out "
            f"of the defects; {_UNDIRECTED_FIX}",
            stacklevel=2,
        )

    defects = []
    for members in groups:
        defects.append(_make_defect(model, probe, members, states, typical, threshold, decay_fraction, max_traces))
    defects.sort(key=lambda d: (d.explosion_layer, -d.peak_norm))
    defects = [replace(d, index=i) for i, d in enumerate(defects)]
    n_high = int((probe.ratio("resid_post") > threshold).sum())
    return DefectReport(probe.model, probe.n_layers, threshold, typical, n_high, defects, n_undirected)


def _with_direction(ep: Episode, states: dict[tuple[int, int], Tensor]) -> Episode:
    """The episode with its direction: the normalised mean of its kept states' unit vectors (None if none kept)."""
    vecs = [states[(ep.row, layer)] for layer in range(ep.start, ep.end + 1) if (ep.row, layer) in states]
    return replace(ep, direction=unit(unit(torch.stack(vecs)).mean(0))) if vecs else ep


def _make_defect(
    model: HookedModel,
    probe: NormProbe,
    members: list[Episode],
    states: dict[tuple[int, int], Tensor],
    typical: Tensor,
    threshold: float,
    decay_fraction: float,
    max_traces: int,
) -> Defect:
    vecs = [states[(e.row, layer)] for e in members for layer in range(e.start, e.end + 1) if (e.row, layer) in states]
    units = unit(torch.stack(vecs))
    ref = members[0].direction
    assert ref is not None
    signs = torch.where(units @ ref >= 0, 1.0, -1.0)
    direction = unit((units * signs[:, None]).mean(0))
    if float(direction @ unit(torch.stack(vecs).mean(0))) < 0:  # point along the states themselves
        direction = -direction
    mean_angle = float(acute_angle_deg(units, direction).mean())

    post = probe.hook("resid_post")
    peak_norm, peak_layer = 0.0, members[0].start
    for e in members:
        seg = post[e.row, e.start : e.end + 1]
        if float(seg.max()) > peak_norm:
            peak_norm, peak_layer = float(seg.max()), e.start + int(seg.argmax())

    # re-run a few carrier prefixes (distinct token sequences) to measure the component profile
    traced, seen = [], set()
    for e in sorted(members, key=lambda e: (not e.initial, e.position, e.row)):
        prefix = probe.sequences[e.seq][: e.position + 1]
        key = tuple(prefix.tolist())
        if key not in seen:
            seen.add(key)
            traced.append((e, prefix))
        if len(traced) >= max_traces:
            break
    traj = residual_trajectories(model, [p for _, p in traced], probe.n_layers)  # [K, L+1, d], the probe's blocks
    comp = traj @ direction  # [K, L+1]
    n_layers = probe.n_layers
    delta = comp[:, 1:] - comp[:, :-1]  # update of block l
    # each carrier counts only inside its own episode (and the block right after it, where it decays)
    window = torch.zeros_like(delta)
    for k, (e, _) in enumerate(traced):
        window[k, e.start : min(e.end + 2, n_layers)] = 1.0
    weight = window.sum(0).clamp(min=1)
    update = (delta * window).sum(0) / weight
    component = (comp[:, 1:] * window).sum(0) / weight
    # only blocks some carrier's episode covers can be the explosion block
    explosion = int(update.masked_fill(window.sum(0) == 0, float("-inf")).argmax())
    ratio = probe.ratio("resid_post")
    high = [
        layer for e in members for layer in range(e.start, e.end + 1) if float(ratio[e.row, layer]) > threshold
    ]
    first, last = (min(high), max(high)) if high else (members[0].start, members[0].end)
    peak_comp = float(component[explosion : max(last, explosion) + 1].max())
    decay = [
        layer
        for layer in range(explosion + 1, min(last + 2, n_layers))
        if float(update[layer]) <= -decay_fraction * peak_comp
    ]
    counts = Counter(probe.token_string(e.token_id) for e in members if not e.initial)
    return Defect(
        index=0,
        direction=direction,
        explosion_layer=explosion,
        decay_layers=decay,
        first_layer=first,
        last_layer=last,
        peak_norm=peak_norm,
        peak_layer=peak_layer,
        typical_norm=float(typical[peak_layer]),
        initial_token=any(e.initial for e in members),
        noninitial_tokens=sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])),
        n_episodes=len(members),
        n_states=len(vecs),
        mean_angle_deg=mean_angle,
        component=component,
        update=update,
        episodes=members,
    )
