"""The options of :func:`~sd_lens.pipeline.run_analysis`: :class:`AnalysisConfig`, one frozen dataclass.

Each field carries its help text; the ``sd-lens analyze`` / ``report`` flags are generated from them
(:func:`sd_lens.cli.add_config_arguments`). A late stage reads the options through its
:class:`~sd_lens.stages.StageInputs`; its own option, if it has one, is a field here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from sd_lens.analyses.causal_score import INERT_KL
from sd_lens.analyses.ffn_fit import METHODS, R2_GROUPS, Method
from sd_lens.analyses.outlier_tokens import DEFAULT_ETA
from sd_lens.corpus import DEFAULT_N_LINES
from sd_lens.errors import InputError
from sd_lens.runtime.precision import DTYPES

__all__ = ["DEFAULT_TRIGGER_TEXT", "AnalysisConfig"]

DEFAULT_TRIGGER_TEXT = "The cat sat on the mat because it was warm."


def _option(default: Any, help: str, **cli: Any) -> Any:
    """A config field; ``help`` and ``cli`` (argparse overrides such as ``flag``) drive the CLI."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class AnalysisConfig:
    """Every option of :func:`run_analysis`, checked when constructed.

    The ``sd-lens analyze`` / ``report`` flags are generated from these fields
    (:func:`sd_lens.cli.add_config_arguments`): a new option is one field here.
    """

    seed: int = _option(0, "seeds every random choice (Monte-Carlo fit, random control direction)")
    fit_method: Method = _option("gaussian", "FFN linearisation for the spectra", flag="--fit")
    ffn_r2_samples: int = _option(
        256,
        "held-out Gaussian inputs per block for the R^2 of its FFN fit, reported with its standard error (ffn_r2, "
        "ffn_r2_se); each costs a forward of the FFN: 0 skips R^2, 1024 halves its error (the Gaussian fits only)",
    )
    vocab: bool = _option(False, "also sweep the whole vocabulary at each explosion block (slow)")
    vocab_limit: int | None = _option(None, "sweep only the first N token ids")
    trigger_text: str = _option(DEFAULT_TRIGGER_TEXT, "the text of the causal checks")
    threshold: float = _option(4.0, "high-norm threshold, in multiples of the block's median norm")
    batch_size: int = _option(16, "texts per forward pass of the norm probe")
    max_tokens_per_text: int | None = _option(64, "truncate each text to this many tokens")
    progress: bool = _option(False, "show progress bars")
    channels: bool = _option(
        False,
        "also the channel-level lens: massive activations, weight and norm-scale outliers, attention sinks, "
        "per-block attention/FFN attribution and a lever",
    )
    sink_epsilon: float = _option(0.3, "a head sinks on a key that later queries attend to more than this on average")
    local_checks: bool = _option(
        False,
        "also linearise each defect's FFNs where its carrier is (local Jacobian) and run causal checks from it "
        "and from the Gaussian fit, on the defect's own carriers, with matched random controls (slow)",
    )
    interventions: bool = _option(
        False,
        "also set the massive activations to zero and to their mean at the block where they emerge (Sun et al.) "
        "and measure perplexity and KL to the clean model on held-out text (slow)",
    )
    quantize: bool = _option(
        False,
        "also the W8A8 quantization experiment (Wang et al. 2025, sec. 6): perplexity of held-out text under "
        "fake-quantized RTN, per-token and SmoothQuant, with the defect blocks' down-projection kept in float "
        "against random and all blocks kept (slow; sd-lens quantize runs it alone)",
    )
    forward_dtype: Literal["float32", "bfloat16", "float16"] | None = _option(
        None,
        "run the model's forwards in this dtype for the analysis (e.g. float32 on a float16 or bfloat16 model: "
        "the weights are cast and restored exactly afterwards; needs their bytes once more); default: the "
        "model's own dtype",
    )
    exact_spectra: bool = _option(
        False,
        "compute the spectra's leading singular triplets and the decay checks' eigenvalues by exact float64 "
        "decompositions (slow; the default is a residual-checked float32 iteration that falls back to them "
        "where it cannot certify its answer, agreeing within 0.05 deg and 1e-4 relative)",
    )
    dtype_check: bool = _option(
        True,
        "on a float16 or bfloat16 forward, also run the norm probe in float32 (weights cast and restored) and say "
        "which defects float32 does not have, or has and this dtype misses",
    )
    outlier_tokens: bool = _option(
        False,
        "also PrefixQuant's outlier tokens (a token whose largest |value| at the FFN down-projection input is more "
        "than --outlier-eta times the median over its text's tokens), which defects they carry, and the prefixes "
        "(BOS, the most frequent outlier token, '.', newline, PrefixQuant's) that take them out of the text, with "
        "the perplexity each costs",
    )
    outlier_eta: float = _option(DEFAULT_ETA, "the outlier-token threshold on max|h| over its median (PrefixQuant: 64)")
    rotation: bool = _option(
        False,
        "also the rotation check (QuaRot/SpinQuant): run the model in a random orthogonal and a randomized Hadamard "
        "residual basis (hooks, logits unchanged) and report each defect's norm ratio and each massive channel's "
        "max/median before and after: defects survive, channels vanish",
    )
    causal_ranking: bool = _option(
        False,
        "also score every defect and massive activation by removing it (perplexity ratio and KL on held-out text, "
        "against matched random controls) and rank them; below --inert-kl a finding is 'massive but inert' (slow)",
    )
    inert_kl: float = _option(INERT_KL, "KL (nats per token) below which a removed finding is called 'massive but inert'")
    super_weights: bool = _option(
        False,
        "also find each defect's super weights (Yu et al. 2024): the down-projection entries that write and cancel "
        "its channel on its carriers (ranked after any post-FFN norm's gain), searched iteratively, checked against "
        "the defect's channel and blocks, and verified by perplexity and KL on held-out text against zeroing random "
        "same-size entries and against restoring the activation (slow)",
    )
    super_weight_seeds: int = _option(5, "random same-magnitude entries zeroed as the super weights' control")
    held_out_lines: int = _option(
        DEFAULT_N_LINES,
        "lines of the default corpus, none of them among the analysed texts, on which the perplexity and KL "
        "experiments measure (interventions, quantization, causal ranking, super weights); their cost grows with "
        "it, their noise shrinks",
    )

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> InputError:
            return InputError(f"{name}={getattr(self, name)!r}: {why}")

        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise bad("seed", "give an integer in 0..2**63-1")
        if self.fit_method not in METHODS:
            raise bad("fit_method", f"choose one of {', '.join(METHODS)}")
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold) and self.threshold > 1):
            raise bad("threshold", "give a finite multiple of the median norm above 1 (the default is 4)")
        for name in ("batch_size", "vocab_limit", "max_tokens_per_text"):
            value = getattr(self, name)
            if value is None and name != "batch_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "give a positive integer" + ("" if name == "batch_size" else " (or None for no limit)"))
        n_r2 = self.ffn_r2_samples
        if isinstance(n_r2, bool) or not isinstance(n_r2, int) or not (n_r2 == 0 or n_r2 >= 2 * R2_GROUPS):
            raise bad("ffn_r2_samples", "give 0 (no R^2) or at least 32 held-out inputs (the default is 256)")
        n_held = self.held_out_lines
        if isinstance(n_held, bool) or not isinstance(n_held, int) or n_held < 1:
            raise bad("held_out_lines", f"give a positive number of lines (the default is {DEFAULT_N_LINES})")
        seeds = self.super_weight_seeds
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise bad("super_weight_seeds", "give a positive integer (the default is 5)")
        if not isinstance(self.trigger_text, str) or not self.trigger_text.strip():
            raise bad("trigger_text", "give a non-empty text")
        if self.forward_dtype is not None and self.forward_dtype not in DTYPES:
            raise bad("forward_dtype", f"choose one of {', '.join(DTYPES)} (or None for the model's own dtype)")
        eps = self.sink_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and 0 < eps < 1):
            raise bad("sink_epsilon", "give a mean attention between 0 and 1 (the default is 0.3)")
        eta = self.outlier_eta
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (math.isfinite(eta) and eta > 0):
            raise bad("outlier_eta", "give a positive ratio (PrefixQuant's is 64)")
        ikl = self.inert_kl
        if isinstance(ikl, bool) or not isinstance(ikl, (int, float)) or not (math.isfinite(ikl) and ikl > 0):
            raise bad("inert_kl", f"give a positive number of nats (the default is {INERT_KL})")

    @property
    def needs_unfolded_weights(self) -> bool:
        """Whether a model should be loaded without folding its norm scales into the weights: the
        ``"reference"`` FFN fit works in the reference code's convention (isotropic after the pre-FFN
        norm's scale γ₂), which a model with γ₂ folded into ``W_in`` cannot express. The command line
        loads the model unfolded when this is true; the other analyses read both conventions."""
        return self.fit_method == "reference"

    @classmethod
    def options(cls) -> list[str]:
        return [f.name for f in fields(cls)]
