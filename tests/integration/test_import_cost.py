"""What importing sd_lens costs: heavy libraries load on first use, not at import."""
from __future__ import annotations

import subprocess
import sys


def _loaded_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    code = f"import sys; {statement}; print(sorted(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return eval(out.strip())  # a list of module names printed by the child


def test_importing_sd_lens_does_not_import_the_model_libraries():
    """load_model overlaps importing transformers/TransformerLens with its checksum work: a plain
    ``import sd_lens`` must not pay for them first."""
    assert _loaded_after("import sd_lens", ("transformer_lens", "transformers")) == []


def test_defect_prose_does_not_import_the_report_libraries():
    """``sd_lens.defects_summary`` (printed by ``sd-lens analyze``) uses report.prose only."""
    assert _loaded_after("import sd_lens.report.prose", ("matplotlib", "circuitsvis")) == []
