"""The benchmark scripts run end to end on the tiny CPU case (a smoke test: no timing is asserted)."""

from __future__ import annotations

import json
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


@pytest.fixture
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)
    import awq_quality
    import awq_speed

    return awq_speed, awq_quality


def test_speed_benchmark_tiny_cpu(bench_modules, tmp_path):
    awq_speed, _ = bench_modules
    summary = awq_speed.main(["--case", "tiny-cpu", "--results-dir", str(tmp_path), "--workdir", str(tmp_path)])
    saved = json.loads((tmp_path / "awq_speed_tiny-cpu.json").read_text())
    assert saved["summary"]["case"] == "tiny-cpu" and len(saved["runs"]) == 3
    agreement = summary["agreement"]
    assert agreement["mappings"] > 0 and agreement["same_share"] == 1.0  # float32: the fast search is exact
    assert summary["perplexity"]["stock"] == pytest.approx(summary["perplexity"]["fast"], rel=1e-6)
    assert summary["search"]["stock_fallbacks"] == []
    assert set(summary["smoothing_s"]) == {"stock", "fast", "fast-nocapture"}
    assert "AWQ smoothing step" in awq_speed.markdown(summary)


def test_quality_benchmark_tiny_cpu(bench_modules, tmp_path):
    _, awq_quality = bench_modules
    table = awq_quality.main(["--case", "tiny-cpu", "--sizes", "8", "--seq-len", "64",
                              "--rows", "unquantized,rtn,stock-awq,fast,fast+search",
                              "--results-dir", str(tmp_path), "--workdir", str(tmp_path)])
    rows = table["sizes"][8]
    assert rows["fast"]["perplexity"] == pytest.approx(rows["stock-awq"]["perplexity"], rel=1e-6)
    assert rows["fast+search"]["clip_s"] > 0
    assert table["baselines"]["unquantized"]["perplexity"] < table["baselines"]["rtn"]["perplexity"]
    assert (tmp_path / "awq_quality_tiny-cpu.json").exists()
    assert "| 8 | fast+search |" in awq_quality.markdown(table)
