"""What importing sd_lens costs: heavy libraries load on first use, not at import."""
from __future__ import annotations


def test_every_report_export_resolves():
    import sd_lens.report as report

    for name in report.__all__:
        assert getattr(report, name) is not None, name
    assert set(report.__all__) == set(report._HOME)
