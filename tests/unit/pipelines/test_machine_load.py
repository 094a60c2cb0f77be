"""The quickstart's account of the machine's load: measured around the training stage, shown in
the report, and a warning when other programs took cores."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from pocketlm.pipelines.machine_load import load_row, load_warning, machine_load


def test_an_idle_record_gives_a_row_and_no_warning(tmp_path):
    path = tmp_path / "load.json"
    path.write_text(json.dumps({"cores": 2, "before": 0.02, "during": 0.1, "after": 0.0}))
    assert load_row(path) == (
        "| machine load | other programs used 0.02 / 0.10 / 0.00 of 2 cores before / during / "
        "after training |"
    )
    assert load_warning(path) is None
    assert load_row(tmp_path / "missing.json") == "| machine load | not measured |"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_busy_program_during_training_is_measured_and_warned_about(tmp_path):
    path = tmp_path / "load.json"
    with machine_load(path, probe_s=0.3):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(1.0)  # "training" while another program spins
        finally:
            spinner.kill()
            spinner.wait()
    load = json.loads(path.read_text())
    assert load["during"] >= 0.5
    warning = load_warning(path)
    assert warning and "run again when it is idle" in warning
