"""reuse_freed_memory: a freed block's pages serve the next allocation, no new page faults."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, resource, sys, torch
from pocketlm.common.allocator import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "reuse" else None
def churn(n):  # a training step in small: 10 x 8 MiB alive at once, touched, then all freed
    for _ in range(n):
        blocks = [torch.empty(2 << 20).add_(1.0) for _ in range(10)]
        del blocks
churn(3)  # the heap grows once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn(10)
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only"
)
def test_freed_blocks_are_reused_without_page_faults() -> None:
    default, reused = _faults("default"), _faults("reuse")
    assert reused["applied"] is True
    assert default["faults"] > 2000  # glibc trims the freed 80 MiB: re-faulted each time
    assert reused["faults"] < default["faults"] / 10, (default, reused)
