"""Causal experiments: one engine and its specialisations, by role (as tuned-lens's ``causal/``).

* :mod:`~sd_lens.analyses.causal.engine` — :func:`sweep`: sites × edits × matched random controls ×
  seeds, through the runtime, into a typed :class:`Sweep` over named axes;
* :mod:`~sd_lens.analyses.causal.trigger` — does v₀ trigger the defect? (:func:`verify_trigger`);
* :mod:`~sd_lens.analyses.causal.jacobian` — the FFN's local Jacobian at a defect token (math only);
* :mod:`~sd_lens.analyses.causal.local_checks` — interventions at the FFN input from it;
* :mod:`~sd_lens.analyses.causal.lever` — a lever on the sublayer outputs, from the attribution;
* :mod:`~sd_lens.analyses.causal.massive` — massive activations set to zero or to their mean.

``sd_lens.analyses.causal`` keeps the names it had as a module (``verify_trigger``, ``CausalCheck``,
``trigger_tokens``) and adds the engine's.
"""

from sd_lens.analyses.causal.engine import ControlStats, Sweep, Trial, random_direction, sweep
from sd_lens.analyses.causal.trigger import CausalCheck, trigger_tokens, verify_trigger

__all__ = [
    "CausalCheck", "ControlStats", "Trial", "Sweep", "random_direction", "sweep", "trigger_tokens",
    "verify_trigger",
]
