"""The registry of late stages: what each computes from which inputs, and where its results go in the JSON.

:func:`~sd_lens.pipeline.run_analysis` first computes the core (the norm probe, the defects, the spectra
and each defect's findings), then runs every registered :class:`Stage` whose option is on, in
registration order. A stage reads its typed inputs (:class:`StageInputs`: the model, the texts, the
options, the core results and the results of the stages before it) and gives one result per name in
``gives``; each becomes an attribute of the :class:`~sd_lens.pipeline.AnalysisResult`
(``result.<name>``, None when the stage did not run or failed). A :class:`ResultEntry` says where a
result is written in :meth:`~sd_lens.pipeline.AnalysisResult.to_dict`, in registration order.

So a new analysis is one call, ``register_analysis(Stage(...), ResultEntry(...))``; the report shows it
once its section, views and sentence are registered on the report's floor
(:func:`sd_lens.report.registry.register_report`). The built-in stages are registered in
:mod:`sd_lens.stages.builtin`.

An application that sits above the pipeline provides a stage's computation by name instead
(:func:`register_stage`; :data:`STAGE_PROVIDERS` names the module that does, imported on demand).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from sd_lens.analyses.defects import DefectReport
from sd_lens.analyses.probe import NormProbe
from sd_lens.config import AnalysisConfig
from sd_lens.corpus import held_out_texts
from sd_lens.errors import InputError
from sd_lens.models.view import ModelView
from sd_lens.types import HookedModel

__all__ = [
    "STAGE_PROVIDERS",
    "ResultEntry",
    "Stage",
    "StageInputs",
    "register_analysis",
    "register_result",
    "register_stage",
    "registered_results",
    "registered_stage",
    "registered_stages",
    "result_names",
]


@dataclass(frozen=True, eq=False)
class StageInputs:
    """What a late stage may read.

    Attributes:
        model: the model under analysis (its forwards run in the analysis's dtype).
        texts: the corpus.
        config: the analysis's options.
        probe: the norm probe of the corpus.
        defects: the defects found in it.
        view: the float32 per-block weight view of the model.
        results: the results of the stages that ran before, by name (None when a stage failed).
    """

    model: HookedModel
    texts: list[str]
    config: AnalysisConfig
    probe: NormProbe
    defects: DefectReport
    view: ModelView
    results: Mapping[str, Any]

    @property
    def held_out(self) -> list[str]:
        """``config.held_out_lines`` lines of the default corpus that are not in :attr:`texts` (for the
        perplexity experiments)."""
        return held_out_texts(self.texts, self.config.held_out_lines)

    def result(self, name: str) -> Any:
        """An earlier stage's result (None when that stage did not run, or failed)."""
        return self.results.get(name)


def _always(config: AnalysisConfig) -> bool:
    return True


@dataclass(frozen=True, eq=False)
class Stage:
    """One late stage of :func:`~sd_lens.pipeline.run_analysis`.

    Attributes:
        name: its name in ``timings_s`` and, when it fails, in ``errors`` / ``failed_stages``.
        run: ``run(inputs) -> result`` (a tuple, one per name, when it gives several).
        gives: the names of its results: attributes of the ``AnalysisResult``.
        when: whether it runs under the options (default: always).
        needs: stages whose failure skips it (recorded as ``"skipped: needs X, which failed"``).
        revises: earlier stages' results it replaces, returned after its own (None leaves one as it is; if
            the stage fails, they stay as they were).
    """

    name: str
    run: Callable[[StageInputs], Any]
    gives: tuple[str, ...]
    when: Callable[[AnalysisConfig], bool] = _always
    needs: tuple[str, ...] = ()
    revises: tuple[str, ...] = ()

    @property
    def returns(self) -> tuple[str, ...]:
        """The names of what :attr:`run` returns, in order: its own results, then those it revises."""
        return self.gives + self.revises


def _to_dict(value: Any, result: Any) -> Any:
    return value.to_dict()


@dataclass(frozen=True, eq=False)
class ResultEntry:
    """Where a late result is written in the JSON (:meth:`~sd_lens.pipeline.AnalysisResult.to_dict`).

    Attributes:
        name: the result it writes (a name in some stage's ``gives``).
        key: its key in the JSON.
        group: the key of the object it goes in (``"channels"``), or None for the top level.
        to_json: ``to_json(value, analysis_result) -> JSON value`` (default ``value.to_dict()``); written
            only when the value is not None.
    """

    name: str
    key: str
    group: str | None = None
    to_json: Callable[[Any, Any], Any] = _to_dict


_STAGES: list[Stage] = []
_RESULTS: list[ResultEntry] = []


def register_analysis(stage: Stage, *entries: ResultEntry) -> Stage:
    """Add ``stage`` after the registered stages and ``entries`` after the JSON's registered keys.

    Raises:
        InputError: a stage of that name, or a result of one of its names, is already registered, or an
            entry writes a result that no stage gives.
    """
    taken = {s.name for s in _STAGES}
    given = {name for s in _STAGES for name in s.gives}
    if stage.name in taken:
        raise InputError(f"a stage {stage.name!r} is already registered")
    clash = sorted(given & set(stage.gives))
    if clash:
        raise InputError(f"stage {stage.name!r}: results {clash} are already given by another stage")
    if not callable(stage.run) or not stage.gives:
        raise InputError(f"stage {stage.name!r}: give a callable run and at least one result name")
    unknown = sorted(set(stage.revises) - given)
    if unknown:
        raise InputError(f"stage {stage.name!r}: it revises {unknown}, which no earlier stage gives")
    orphans = [e.name for e in entries if e.name not in given | set(stage.gives)]
    if orphans:
        raise InputError(f"stage {stage.name!r}: no stage gives {orphans}")
    _STAGES.append(stage)
    _RESULTS.extend(entries)
    return stage


def register_result(entry: ResultEntry) -> ResultEntry:
    """Add a JSON entry on its own, for a result whose stage is (or will be) registered separately: the
    built-in stages register their JSON keys first, since the JSON's order is not their run order."""
    _RESULTS.append(entry)
    return entry


def registered_stages() -> list[Stage]:
    """The registered stages, in run order (a copy)."""
    return list(_STAGES)


def registered_results() -> list[ResultEntry]:
    """The registered JSON entries, in the JSON's order (a copy)."""
    return list(_RESULTS)


def result_names() -> set[str]:
    """Every name a registered stage gives (the late attributes of an ``AnalysisResult``)."""
    return {name for s in _STAGES for name in s.gives}


# ------------------------------------------------------------------------------------------------
# computations an application provides: the pipeline imports no application (tests/unit/test_layers.py)
# ------------------------------------------------------------------------------------------------
#: ``stage(model, texts, held_out, *, report, config) -> result``: a provided stage's computation
StageFn = Callable[..., Any]
_PROVIDED: dict[str, StageFn] = {}
#: the module that provides each such stage, imported by name when its option is on (an entry point,
#: not an import: the stage's code sits on the applications floor, above this module)
STAGE_PROVIDERS: dict[str, str] = {"quantization": "sd_lens.quantize"}


def register_stage(name: str, fn: StageFn) -> None:
    """Provide ``fn`` as the computation of the stage ``name`` (an application calls this when it is
    imported: :mod:`sd_lens.quantize` provides ``"quantization"``)."""
    if not callable(fn):
        raise InputError(f"stage {name!r}: expected a callable, got {type(fn).__name__}")
    _PROVIDED[name] = fn


def registered_stage(name: str) -> StageFn:
    """The computation provided for ``name``, importing its provider (:data:`STAGE_PROVIDERS`) on demand."""
    if name not in _PROVIDED and name in STAGE_PROVIDERS:
        importlib.import_module(STAGE_PROVIDERS[name])
    try:
        return _PROVIDED[name]
    except KeyError:
        raise InputError(f"no stage {name!r} is registered (register_stage); known: {sorted(_PROVIDED)}") from None
