"""W8A8 fake quantization and the singular-defect blocks (Wang et al., ICML 2025, §6).

* :mod:`~sd_lens.quantize.fake` — the quantizer, the schemes and :func:`fake_quantize` (reversible);
* :mod:`~sd_lens.quantize.smoothquant` — SmoothQuant's smoothing factors (Xiao et al., ICML 2023);
* :mod:`~sd_lens.quantize.protect` — the defect blocks whose F2 stays in high precision, random controls;
* :mod:`~sd_lens.quantize.evaluate` — the perplexity experiment and its result;
* :mod:`~sd_lens.quantize.figures` — the bar chart; :mod:`~sd_lens.quantize.cli` — ``sd-lens quantize``.
"""

from typing import Any, Sequence

from sd_lens.pipeline import register_stage
from sd_lens.quantize.evaluate import KEPT, QuantizationResult, QuantRow, quantization_experiment
from sd_lens.quantize.fake import (
    PER_TOKEN,
    RTN,
    SCHEMES,
    SITES,
    SMOOTHQUANT,
    LinearWeight,
    Scheme,
    fake_quantize,
    linear_weights,
    quantize_activation,
    quantize_weight,
    rtn,
    site_hook,
)
from sd_lens.quantize.protect import defect_blocks, random_blocks
from sd_lens.quantize.smoothquant import SmoothScales, channel_maxima, smoothquant_scales

__all__ = [
    "KEPT",
    "PER_TOKEN",
    "RTN",
    "SCHEMES",
    "SITES",
    "SMOOTHQUANT",
    "LinearWeight",
    "QuantRow",
    "QuantizationResult",
    "Scheme",
    "SmoothScales",
    "channel_maxima",
    "defect_blocks",
    "fake_quantize",
    "linear_weights",
    "quantization_experiment",
    "quantize_activation",
    "quantize_weight",
    "random_blocks",
    "rtn",
    "site_hook",
    "smoothquant_scales",
]


def _analysis_stage(model: Any, texts: Sequence[str], held_out: Sequence[str], *, report: Any, config: Any) -> Any:
    """``run_analysis(..., quantize=True)``'s stage: the experiment with the analysis's defects and batches."""
    return quantization_experiment(
        model, texts, held_out, analysis=report, batch_size=config.batch_size,
        max_tokens_per_text=config.max_tokens_per_text, progress=config.progress,
    )


register_stage("quantization", _analysis_stage)
