"""The singular-defect report: one self-contained HTML page (plus the JSON) per analysis run.

Subpackage layout: :mod:`~sd_lens.report.build` lays out the page, :mod:`~sd_lens.report.views`
and :mod:`~sd_lens.report.figures` draw, :mod:`~sd_lens.report.page` writes the offline HTML.
"""

from sd_lens.report.build import *  # noqa: F401,F403
from sd_lens.report.build import __all__  # noqa: F401
