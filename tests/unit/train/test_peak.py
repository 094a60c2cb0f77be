"""The matmul peak probe behind MFU: best of repeats, and a final re-probe that only raises it."""

from __future__ import annotations

import pytest

from pocketlm.train import peak


def test_probe_measures_a_plausible_cpu_rate() -> None:
    flops = peak.probe_peak_flops("cpu", size=128, min_seconds=0.05)
    assert 1e8 < flops < 1e14  # 0.1 GFLOP/s .. 100 TFLOP/s: a real measurement, not a constant


def test_remeasured_keeps_the_higher_of_the_two_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([180e9, 340e9, 150e9])  # start-up probe at a busy moment, then two re-probes
    monkeypatch.setattr(peak, "probe_peak_flops", lambda *a, **k: next(readings))
    peak.measured_peak_flops.cache_clear()
    try:
        assert peak.measured_peak_flops("cpu", "float32") == 180e9
        assert peak.remeasured_peak_flops("cpu") == 340e9  # a busy start no longer inflates MFU
        assert peak.remeasured_peak_flops("cpu") == 180e9  # never below the start-up probe
    finally:
        peak.measured_peak_flops.cache_clear()
