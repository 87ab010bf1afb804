"""The executed tutorial page ``docs/channel_tutorial.md`` ("From defect to channel, weight and head")."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_page

ROOT = Path(__file__).resolve().parents[2]


PAGE = ROOT / "docs" / "channel_tutorial.md"


@pytest.mark.real_model
def test_channel_tutorial_runs(smollm2, gemma3, tmp_path, monkeypatch):
    """Run the page's Python blocks in order (the shared real models stand in for ``load_model``)."""
    ns = run_page(PAGE, tmp_path, monkeypatch, {"smollm2-135m-instruct": smollm2, "gemma-3-270m": gemma3})
    # what the page says, checked on what it computed (measured on the default corpus)
    result = ns["result"]
    assert result.findings[0].causal.norm_after > 0.99 * result.findings[0].causal.norm_before  # v0 does nothing
    channels = result.outliers.channel_defects(result.defects)
    assert len(channels) == 2
    first, second = sorted(channels, key=lambda c: min(result.outliers.blocks_of(c)))
    assert all(result.weights.masked_before_ffn(b, first) for b in result.outliers.blocks_of(first))
    assert max(result.weights.max_gain(second).values()) > 500  # measured: 789
    lev = result.lever[0]
    assert lev.achieved and lev.specific  # measured: 72 % removed; controls 38 % .. 60 %
    chk = result.local[0]
    v0 = chk.find("gaussian_v0", chk.blocks)
    assert v0.reduction < 0.02  # measured: 0.8 %
    assert chk.best() is not None and chk.best().reduction > 0.5 and chk.best().specific  # measured: 72.9 %
    assert [lev.specific for lev in ns["smol_result"].lever] == [True, True]
