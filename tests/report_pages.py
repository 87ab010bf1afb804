"""What the report tests share (tests/unit/test_report.py, tests/integration/test_report_real.py)."""

from __future__ import annotations

import re

#: a report of a tiny or bundled model stays below this size (circuitsvis's bundle is embedded once)
MAX_REPORT_BYTES = 3_000_000
#: user text that must come out escaped
EVIL_TEXT = "<script>alert(1)</script> & <img src=x onerror=alert(2)>"
TEXTS = ["The cat sat on the mat.", "Hello world, this is a test.", EVIL_TEXT]
VIEW_DIV = re.compile(r'<div id="(sd-view-\d+)" class="[^"]*" data-component="(\w+)"></div>')


def view_components(html: str) -> dict[str, str]:
    """Mount element id -> circuitsvis component, from the written page."""
    return dict(VIEW_DIV.findall(html))
