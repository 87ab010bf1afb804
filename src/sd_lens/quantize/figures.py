"""The quantization chart: perplexity per scheme and kept set, drawn by :mod:`sd_lens.report.figures`.

The drawing lives in the report (:func:`~sd_lens.report.figures.quantization_figure`,
:func:`~sd_lens.report.figures.perplexity_bars_figure`), which must not import an application; this module
keeps the names where :mod:`sd_lens.quantize` users look for them.
:func:`sd_lens.report.figures.fig_to_png` turns a figure into PNG bytes.
"""

from __future__ import annotations

from sd_lens.report.figures import perplexity_bars_figure, quantization_figure

__all__ = ["perplexity_bars_figure", "quantization_figure"]
