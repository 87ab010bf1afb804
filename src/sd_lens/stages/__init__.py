"""The late stages of the analysis as a registry: each stage declares once its inputs, its results and their JSON keys.

Importing this package registers the built-in stages (:mod:`~sd_lens.stages.builtin`); register your
own with :func:`register_analysis` (:mod:`~sd_lens.stages.registry` explains the pieces).
"""

from sd_lens.stages import builtin as _builtin_stages  # noqa: F401  (registers the built-ins)
from sd_lens.stages.registry import (
    STAGE_PROVIDERS,
    ResultEntry,
    Stage,
    StageInputs,
    register_analysis,
    register_result,
    register_stage,
    registered_results,
    registered_stage,
    registered_stages,
    result_names,
)

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
