"""Causal verification (analysis 7 in docs/analyses.md): does v₀ trigger the defect?

:func:`verify_trigger` runs one text three times with an intervention at block ``layer``'s FFN
input — v₀ projected out (ablation), a random unit direction projected out (control), and one
non-initial token's v₀ coefficient set to the initial token's (patching) — and reports the
resid_post norms of that block. The interventions themselves are ordinary TransformerLens hooks
from :mod:`sd_lens.interventions`, usable on their own with ``run_with_hooks``. It is a specialisation
of the experiment engine (:func:`~sd_lens.analyses.causal.engine.sweep`): one site (the block), two
edits (ablation, patching), one random control of the ablation.

Reference: Wang et al., *Demystifying Singular Defects in Large Language Models* (ICML 2025),
observation (iv), tested by intervening on activations as Sun et al., *Massive Activations in Large
Language Models* (2024), do.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from sd_lens.analyses.causal.engine import Trial, random_direction, sweep
from sd_lens.errors import InputError
from sd_lens.interventions import ablation_hooks, patching_hooks
from sd_lens.linalg import unit
from sd_lens.runtime.engine import run
from sd_lens.runtime.hooks import act_name, ffn_input
from sd_lens.runtime.reducers import coefficient, first_row, token_norms
from sd_lens.runtime.tokens import context_length, decode, encode
from sd_lens.types import HookedModel, HookFn

__all__ = ["CausalCheck", "trigger_tokens", "verify_trigger"]


@dataclass(frozen=True, eq=False)
class CausalCheck:
    """Ablation, random control and patching at one block (norms at that block's resid_post)."""

    layer: int
    tokens: list[str]
    norms_clean: Tensor  # [T] resid_post norms, no intervention
    norms_ablated: Tensor  # [T] v0 projected out of the FFN input at every position
    norms_random: Tensor  # [T] a random direction projected out instead
    norms_patched: Tensor  # [T] patched position's v0 coefficient set to the initial token's
    coefficients: Tensor  # [T] v0 coefficient of each token's FFN input (clean)
    position: int
    initial_coefficient: float
    random_seed: int

    @property
    def norm_before(self) -> float:
        return float(self.norms_clean[0])

    @property
    def norm_after(self) -> float:
        return float(self.norms_ablated[0])

    @property
    def random_control_after(self) -> float:
        return float(self.norms_random[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "ablation": {
                "layer": self.layer,
                "norm_before": round(self.norm_before, 3),
                "norm_after": round(self.norm_after, 3),
                "random_control_after": round(self.random_control_after, 3),
            },
            "patching": {
                "layer": self.layer,
                "position": self.position,
                "token": self.tokens[self.position],
                "norm_before": round(float(self.norms_clean[self.position]), 3),
                "norm_after": round(float(self.norms_patched[self.position]), 3),
                "coefficient_before": round(float(self.coefficients[self.position]), 4),
                "coefficient_after": round(self.initial_coefficient, 4),
            },
        }


def _norms_and_coefs(
    model: HookedModel, tokens: Tensor, layer: int, v0: Tensor, interventions: list[tuple[str, HookFn]]
) -> tuple[Tensor, Tensor]:
    """resid_post norms and FFN-input v0 coefficients of block ``layer`` (one row) under ``interventions``."""
    norm_at, coef_at = act_name("resid_post", layer), ffn_input(layer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*edited hook_scale/hook_normalized.*")
        out = run(
            model, tokens,
            {coef_at: first_row(coefficient(v0)), norm_at: first_row(token_norms)},
            fwd_hooks=interventions,
        )
    return out[norm_at], out[coef_at]


def trigger_tokens(model: HookedModel, text: str) -> Tensor:
    """The token ids ``[1, T]`` of the causal checks' text, checked: a non-empty text of at least one
    token besides BOS that fits the model's context (never truncated: the checks need all of it).

    :func:`~sd_lens.pipeline.run_analysis` calls it before any analysis runs.

    Raises:
        InputError: naming the trigger text (``trigger_text``, sd-lens ``--trigger-text``), not a corpus text.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError("the trigger text (trigger_text, sd-lens --trigger-text) is empty; give a sentence")
    tokens = encode(model, text)
    n_ctx = context_length(model)
    if len(tokens) > n_ctx:
        raise InputError(
            f"the trigger text (trigger_text, sd-lens --trigger-text) has {len(tokens)} tokens but the model's "
            f"context holds {n_ctx}; give a shorter one (a sentence is enough: the checks read its first tokens)"
        )
    if len(tokens) < 2:
        raise InputError(
            "the trigger text (trigger_text, sd-lens --trigger-text) needs at least one token besides BOS; "
            "give a sentence"
        )
    return tokens[None]


def verify_trigger(
    model: HookedModel,
    layer: int,
    v0: Float[Tensor, " d_model"],
    text: str = "The cat sat on the mat because it was warm.",
    *,
    position: int | None = None,
    seed: int = 0,
) -> CausalCheck:
    """Ablate v₀ at block ``layer`` (with a random-direction control) and patch it into a token.

    Args:
        model: the model.
        layer: the explosion block.
        v0: the trigger direction in the FFN's normalised-input space (e.g. ``fit.v0``).
        text: the text to run (BOS is prepended; position 0 is the initial token).
        position: the token to patch (default: the lowest-norm non-initial token among the first four).
        seed: seeds the random control direction.
    """
    if not 0 <= layer < int(model.cfg.n_layers):
        raise InputError(f"block {layer} does not exist: the model has blocks 0..{model.cfg.n_layers - 1}")
    tokens = trigger_tokens(model, text)
    v = unit(v0.detach().float().cpu())
    if v.ndim != 1 or not bool(torch.isfinite(v).all()) or not bool(v.any()):
        raise InputError(
            f"v0 must be a finite, non-zero vector of d_model={model.cfg.d_model} numbers (e.g. fit_ffn(...).v0); "
            f"got shape {tuple(v0.shape)}" + ("" if bool(torch.isfinite(v0).all()) else " with NaN or inf entries")
        )

    def measure(iv: Trial) -> tuple[Tensor, Tensor]:
        return _norms_and_coefs(model, tokens, layer, v, list(iv.hooks))

    clean, coefs = clean_run = measure(Trial())
    if position is None:
        cand = list(range(1, min(4, tokens.shape[1])))
        position = min(cand, key=lambda p: float(clean[p]))
    if not 0 < position < tokens.shape[1]:
        raise InputError(f"position {position} is not a non-initial token of a {tokens.shape[1]}-token input")
    init_coef = float(coefs[0])
    edits = {"ablation": ablation_hooks(layer, v), "patching": patching_hooks(layer, v, init_coef, position)}
    def control(trial: Trial, seed: int, edit: str) -> Trial | None:
        """The ablation's control: a random unit direction projected out instead of v0."""
        return Trial(ablation_hooks(layer, random_direction(v.shape[0], seed))) if edit == "ablation" else None

    out = sweep(
        model, {"edit": tuple(edits)}, lambda edit: Trial(edits[edit]), measure=measure, clean=clean_run,
        control=control, seeds=[seed],
    )
    ablated, _ = out.value(edit="ablation")
    patched, _ = out.value(edit="patching")
    randomed, _ = out.control_values(edit="ablation")[0]
    strs = decode(model, tokens[0])
    return CausalCheck(
        layer=layer,
        tokens=strs,
        norms_clean=clean,
        norms_ablated=ablated,
        norms_random=randomed,
        norms_patched=patched,
        coefficients=coefs,
        position=position,
        initial_coefficient=init_coef,
        random_seed=seed,
    )
