"""Errors: what counts as a full disk, checked on the errors the OS and safetensors really raise."""

from __future__ import annotations

import subprocess
import sys

from pocketlm.common.errors import is_out_of_space

_FILL = r"""
import resource, signal, torch
from safetensors.torch import save_file
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of a signal
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from pocketlm.common.errors import is_out_of_space
for write in (lambda: save_file({"a": torch.zeros(10000)}, sys.argv[1] + "/a.safetensors"),
              lambda: open(sys.argv[1] + "/b.txt", "w").write("x" * 10000)):
    try:
        write()
        print("no error")
    except Exception as exc:
        print(type(exc).__name__, is_out_of_space(exc))
"""


def test_full_disk_errors_are_recognised_from_the_os_and_from_safetensors(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", "import sys\n" + _FILL, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["SafetensorError True", "OSError True"]
    assert not is_out_of_space(OSError(13, "Permission denied"))
    assert not is_out_of_space(ValueError("bad shape (os error 13)"))
