"""One experiment engine for every causal check: sites × edits × matched random controls × seeds.

After TransformerLens's ``generic_activation_patch`` and its ``partial`` specialisations
(``get_act_patch_resid_pre`` = the generic patch with a setter, a hook name and its index axes): one
function, :func:`sweep`, walks the product of some named axes (``{"site": ..., "edit": ...}``), asks
the specialisation for the :class:`Trial` at each point (forward hooks, and optionally a
weight edit), runs it through the runtime (:mod:`sd_lens.runtime`, the only code that runs a model),
and, for every point the specialisation chooses, runs one matched random control per seed. It
returns a :class:`Sweep`: the measured values and one number per point (the *effect*, e.g. the
reduction of a peak norm) in tensors whose dimensions are the named axes, plus ``"seed"`` for the
controls, with the control statistics (:class:`ControlStats`: mean, min, max, and whether the edit
beats every control) computed once, here.

What the engine guarantees, so that no experiment has to: nothing an experiment does survives it.
Hooks go through :func:`sd_lens.runtime.forward` (each forward removes exactly the hooks it attached,
also on error); a weight edit is a context manager (``Trial.weights``) that the engine enters
around the one measurement that needs it and leaves even when the measurement raises (e.g.
:func:`sd_lens.quantize.fake.fake_quantize`, which restores every weight it changed); and after each
measurement the engine checks that the model carries no hook it did not carry before
(:class:`~sd_lens.errors.SdLensError` otherwise, after removing them).

The random controls are drawn by :func:`random_direction`: seed ``s`` gives the same unit vector
whatever else runs (its own generator), so a control depends only on its seed.

The specialisations: :func:`~sd_lens.analyses.causal.trigger.verify_trigger` (ablation, random
control and patching of v₀), :func:`~sd_lens.analyses.causal.lever.find_lever` (the lever and its
matched control), :func:`~sd_lens.analyses.causal.local_checks.local_causal_checks` (interventions at
the FFN input, one forward for all the edits of a site and one for all their controls),
:func:`~sd_lens.analyses.causal.massive.outlier_intervention` (zero / mean) and
:func:`sd_lens.quantize.evaluate.quantization_experiment` (W8A8 rows and their random-block controls).
"""

from __future__ import annotations

import itertools
import math
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Mapping, Sequence, TypeVar

import torch
from torch import Tensor

from sd_lens.errors import InputError, SdLensError
from sd_lens.linalg import unit
from sd_lens.types import HookedModel, HookFn

__all__ = [
    "ControlStats", "Hooks", "Sweep", "Trial", "attached_hooks", "random_direction", "sweep",
]

Hooks = Sequence[tuple[str, HookFn]]
M = TypeVar("M")


def random_direction(d: int, seed: int) -> Tensor:
    """The random unit vector of ``seed`` (float32 ``[d]``, a fresh generator: the same draw whatever ran
    before) — every matched random control of sd_lens draws its direction here."""
    return unit(torch.randn(d, generator=torch.Generator().manual_seed(seed)))


@dataclass
class Trial:
    """What a specialisation does at one point of a sweep (an edit, or its control).

    Attributes:
        hooks: forward hooks for the measurement (ordinary TransformerLens hooks).
        weights: a context manager factory for a weight edit; the engine enters it around this
            measurement only and leaves it even on error. What it yields (a list of extra hooks, or None)
            is added to ``hooks``.
        spec: anything the specialisation's batched measurement reads (``measure_rows``).
        record: what the measurement notes down (e.g. the norm a hook removed), read by the control.
    """

    hooks: Hooks = ()
    weights: Callable[[], AbstractContextManager[Any]] | None = None
    spec: Any = None
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ControlStats:
    """An edit's effect against its matched random controls (one per seed)."""

    effect: float
    mean: float
    min: float
    max: float
    n: int

    @property
    def specific(self) -> bool:
        """The edit's effect is larger than every control's."""
        return self.effect > self.max

    def to_dict(self) -> dict[str, Any]:
        return {"effect": self.effect, "mean": self.mean, "min": self.min, "max": self.max, "n": self.n,
                "specific": self.specific}


@dataclass(frozen=True, eq=False)
class Sweep(Generic[M]):
    """The result of :func:`sweep`, over named axes.

    Attributes:
        axes: the axes' names, in the order they were walked (e.g. ``("site", "edit")``).
        coords: each axis's values (and ``"seed"``: the control seeds).
        clean: the measurement without any edit (None when the sweep was told not to take one).
        values: ``{point: value}`` of every point measured (a point is a tuple of coordinates, one per axis).
        trials: ``{point: Trial}`` of every point measured (their ``record`` filled).
        controls: ``{(point, seed): value}`` of every control measured.
        effect: float64 tensor over ``axes``: each point's effect (NaN where not measured).
        control_effect: float64 tensor over ``axes + ("seed",)`` (NaN where no control ran).
        stats: ``{point: ControlStats}`` of every point with controls, computed once from the two tensors.
    """

    axes: tuple[str, ...]
    coords: dict[str, tuple[Any, ...]]
    clean: M | None
    values: dict[tuple[Any, ...], M]
    trials: dict[tuple[Any, ...], Trial]
    controls: dict[tuple[tuple[Any, ...], int], M]
    effect: Tensor
    control_effect: Tensor
    stats: dict[tuple[Any, ...], ControlStats]

    @property
    def control_axes(self) -> tuple[str, ...]:
        return self.axes + ("seed",)

    @property
    def points(self) -> list[tuple[Any, ...]]:
        """The measured points, in the order they ran."""
        return list(self.values)

    def index(self, point: tuple[Any, ...]) -> tuple[int, ...]:
        """The tensor index of ``point`` in :attr:`effect`."""
        return tuple(self.coords[a].index(c) for a, c in zip(self.axes, point))

    def point(self, **coords: Any) -> tuple[Any, ...]:
        """The point named by keyword coordinates (every axis)."""
        missing = [a for a in self.axes if a not in coords]
        if missing or set(coords) - set(self.axes):
            raise InputError(f"name every axis of {self.axes} once, got {sorted(coords)}")
        return tuple(coords[a] for a in self.axes)

    def value(self, **coords: Any) -> M:
        return self.values[self.point(**coords)]

    def control_values(self, **coords: Any) -> list[M]:
        """The controls of one point, in seed order."""
        p = self.point(**coords)
        return [self.controls[(p, s)] for s in self.coords["seed"] if (p, s) in self.controls]


def attached_hooks(model: HookedModel) -> dict[str, tuple[int, ...]]:
    """The hooks on the model's hook points: ``{hook name: ids of its forward and backward handles}``
    (the engine's check; hook points without hooks are left out)."""
    out = {}
    for name, h in model.hook_dict.items():
        ids = tuple(id(x) for x in getattr(h, "fwd_hooks", ())) + tuple(id(x) for x in getattr(h, "bwd_hooks", ()))
        if ids:
            out[name] = ids
    return out


def _measure_one(
    model: HookedModel, iv: Trial, measure: Callable[[Trial], M], before: dict[str, tuple[int, ...]]
) -> M:
    try:
        with ExitStack() as stack:
            if iv.weights is not None:
                extra = stack.enter_context(iv.weights())
                if extra:
                    iv = Trial(list(iv.hooks) + list(extra), None, iv.spec, iv.record)
            return measure(iv)
    finally:
        _check_clean(model, before)


def _check_clean(model: HookedModel, before: dict[str, tuple[int, ...]]) -> None:
    """Raise (after removing them) when hooks are left that were not there ``before``."""
    if attached_hooks(model) == before:
        return
    n = 0
    for name, h in model.hook_dict.items():
        keep = before.get(name, ())
        for attr in ("fwd_hooks", "bwd_hooks"):
            handles = getattr(h, attr, None)
            if not isinstance(handles, list):
                continue
            for x in [x for x in handles if id(x) not in keep]:
                n += 1
                getattr(getattr(x, "hook", None), "remove", lambda: None)()
            handles[:] = [x for x in handles if id(x) in keep]
    raise SdLensError(f"a measurement left {n} hook(s) on the model (now removed); run models through "
                     "sd_lens.runtime, which removes them")


def sweep(
    model: HookedModel,
    axes: Mapping[str, Sequence[Any]],
    intervene: Callable[..., Trial | None],
    *,
    measure: Callable[[Trial], M] | None = None,
    measure_rows: Callable[[list[Trial]], list[M]] | None = None,
    effect: Callable[[M, M | None], float] | None = None,
    control: Callable[..., Trial | None] | None = None,
    seeds: Sequence[int] = (),
    clean: M | None | bool = True,
    stop: Callable[[float], bool] | None = None,
    choose: Callable[[dict[tuple[Any, ...], float]], Sequence[tuple[Any, ...]]] | None = None,
) -> Sweep[M]:
    """Run ``intervene(**point)`` at every point of the product of ``axes`` and its matched controls.

    Args:
        model: the model (every forward goes through :mod:`sd_lens.runtime`).
        axes: ``{name: values}``, walked as nested loops in this order (the last axis innermost).
        intervene: ``intervene(**point) -> Trial`` (None: the point is skipped, its effect NaN).
        measure: ``measure(trial) -> value``, one measurement (also the clean one, with an empty trial).
        measure_rows: instead of ``measure``, ``measure_rows(trials) -> values``: every point that
            differs only in the last axis in one call (e.g. one forward of a batch of copies), and their
            controls in one more (ordered point by point, seed by seed).
        effect: ``effect(value, clean) -> float``, the number the controls are compared on (None: no
            effects; then no statistics).
        control: ``control(trial, seed, **point) -> Trial`` (None: no control for it): the
            matched random control of a measured point (its trial's ``record`` is filled).
        seeds: the controls' seeds (one control per seed per point).
        clean: True: measure the unedited model first (``Sweep.clean``); False: do not; anything
            else: that value is the clean measurement.
        stop: after each point (not with ``measure_rows``), stop the sweep when ``stop(effect)``.
        choose: ``choose({point: effect}) -> points``: which measured points get controls (default: all).

    Returns:
        A :class:`Sweep`.
    """
    if (measure is None) == (measure_rows is None):
        raise InputError("give exactly one of measure and measure_rows")
    names = tuple(axes)
    coords = {a: tuple(v) for a, v in axes.items()}
    if "seed" in coords:
        raise InputError("'seed' is the controls' axis; name the sweep's axes otherwise")
    seeds = tuple(int(s) for s in seeds)
    if len(set(seeds)) != len(seeds):
        raise InputError(f"seeds must be distinct, got {seeds!r}")
    coords["seed"] = seeds
    before = attached_hooks(model)

    def rows(ivs: list[Trial]) -> list[M]:
        if measure_rows is not None:
            try:
                out = measure_rows(ivs)
            finally:
                _check_clean(model, before)
            if len(out) != len(ivs):
                raise InputError(f"measure_rows returned {len(out)} values for {len(ivs)} trials")
            return out
        assert measure is not None
        return [_measure_one(model, iv, measure, before) for iv in ivs]

    base: M | None
    if clean is True:
        base = rows([Trial()])[0]
    elif clean is False:
        base = None
    else:
        base = clean

    values: dict[tuple[Any, ...], M] = {}
    ivs: dict[tuple[Any, ...], Trial] = {}
    effects: dict[tuple[Any, ...], float] = {}
    points = list(itertools.product(*(coords[a] for a in names)))
    groups = _groups(points, batched=measure_rows is not None)
    stopped = False
    for group in groups:
        todo = []
        for p in group:
            iv = intervene(**dict(zip(names, p)))
            if iv is not None:
                todo.append((p, iv))
        if not todo:
            continue
        for (p, iv), v in zip(todo, rows([iv for _, iv in todo])):
            values[p], ivs[p] = v, iv
            if effect is not None:
                effects[p] = float(effect(v, base))
            if stop is not None and effect is not None and stop(effects[p]):
                stopped = True
        if stopped:
            break

    controls: dict[tuple[tuple[Any, ...], int], M] = {}
    if control is not None and seeds:
        chosen = list(ivs) if choose is None else list(choose(dict(effects)))
        for group in _groups(chosen, batched=measure_rows is not None):
            todo_c = []
            for p in group:
                for s in seeds:
                    civ = control(ivs[p], s, **dict(zip(names, p)))
                    if civ is not None:
                        todo_c.append(((p, s), civ))
            if todo_c:
                for key, v in zip(todo_c, rows([c for _, c in todo_c])):
                    controls[key[0]] = v

    shape = tuple(len(coords[a]) for a in names)
    eff = torch.full(shape, math.nan, dtype=torch.float64)
    ceff = torch.full(shape + (len(seeds),), math.nan, dtype=torch.float64)
    stats: dict[tuple[Any, ...], ControlStats] = {}

    def index(p: tuple[Any, ...]) -> tuple[int, ...]:
        return tuple(coords[a].index(c) for a, c in zip(names, p))

    if effect is not None:  # the control statistics, once for every experiment
        for p, e in effects.items():
            eff[index(p)] = e
        for (p, s), v in controls.items():
            ceff[index(p) + (seeds.index(s),)] = float(effect(v, base))
        for p in values:
            c = ceff[index(p)]
            c = c[~torch.isnan(c)]
            if c.numel():
                stats[p] = ControlStats(
                    effect=effects[p], mean=float(c.mean()), min=float(c.min()), max=float(c.max()), n=int(c.numel()),
                )
    return Sweep(names, coords, base, values, ivs, controls, eff, ceff, stats)


def _groups(points: list[tuple[Any, ...]], *, batched: bool) -> list[list[tuple[Any, ...]]]:
    """One group per point, or (batched) the runs of points that differ only in their last coordinate."""
    if not batched:
        return [[p] for p in points]
    out: list[list[tuple[Any, ...]]] = []
    for p in points:
        if out and out[-1][-1][:-1] == p[:-1]:
            out[-1].append(p)
        else:
            out.append([p])
    return out
