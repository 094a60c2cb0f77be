"""The machine's background load around a training stage, and when it makes a result
unrepresentative: a busy machine gives fewer tokens in the same minutes, hence a worse model
(seen: 2.9 bits per byte instead of 1.5 for the default quickstart), and the report says so."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from pocketlm.common.cpu_load import measure_others_load, others_busy_cores, sample_cpu
from pocketlm.common.device import usable_cores

LOAD_FILE = "machine_load.json"
# Other programs' CPU use (cores) above which a run's numbers are not what the machine gives.
BUSY_CORES = 0.25


@contextlib.contextmanager
def machine_load(path: Path, probe_s: float = 1.0) -> Iterator[None]:
    """Measure other programs' load before, during and after the block; write it to `path`."""
    before = measure_others_load(probe_s)
    start = sample_cpu()
    yield
    during = others_busy_cores(start, sample_cpu())
    after = measure_others_load(probe_s)
    record = {"cores": usable_cores(), "before": before, "during": during, "after": after}
    path.write_text(json.dumps({k: round(v, 3) for k, v in record.items()}) + "\n")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a stage reused from an older run has no record


def load_row(path: Path) -> str:
    """The report's table row for the machine's load (or a row saying it was not measured)."""
    load = _read(path)
    if load is None:
        return "| machine load | not measured |"
    return (
        f"| machine load | other programs used {load['before']:.2f} / {load['during']:.2f} / "
        f"{load['after']:.2f} of {load['cores']} cores before / during / after training |"
    )


def load_warning(path: Path) -> str | None:
    """A sentence for the report and the terminal when other programs' load made the run's
    numbers unrepresentative, else None."""
    load = _read(path)
    if load is None:
        return None
    busiest = max(load["before"], load["during"], load["after"])
    if busiest < BUSY_CORES:
        return None
    return (
        f"other programs used up to {busiest:.1f} of this machine's {load['cores']} cores while "
        "the model trained, so it saw fewer tokens and reached worse bits per byte than this "
        "machine gives when idle; for a representative result, run again when it is idle"
    )
