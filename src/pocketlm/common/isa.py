"""The instruction-set cap for PocketLM's native CPU kernels.

Each kernel family (the engine's decode kernels, the training attention kernels) picks the best
set the CPU runs, at or below a cap: `POCKETLM_ISA=portable|avx2|avx512|avx512bf16` (default
`auto`, no cap). Below avx512bf16, bf16 also counts as not native, so `--precision auto` picks
fp32 as on a CPU without AVX512-BF16. The cap lets one machine run, and the test suite check,
every kernel set and precision path it can execute, not only the best one; it is also the switch
to try when a kernel misbehaves on some CPU.
"""

from __future__ import annotations

from pocketlm.common.env import env_str
from pocketlm.common.errors import ConfigError

# In order: each runs wherever the next one does. avx512 = F/BW/VL/DQ (+ VNNI for the engine).
ISA_LEVELS = ("portable", "avx2", "avx512", "avx512bf16")
ISA_ENV = "POCKETLM_ISA"


def check_isa(cap: str, where: str = ISA_ENV) -> str:
    """`cap` normalised ("auto" or one of ISA_LEVELS), or a ConfigError naming `where`."""
    value = (cap or "auto").strip().lower()
    if value != "auto" and value not in ISA_LEVELS:
        raise ConfigError(f"{where}={cap!r}: use auto, {', '.join(ISA_LEVELS)}")
    return value


def isa_cap() -> str:
    """The cap this process runs under: POCKETLM_ISA, read now (not at import), or "auto"."""
    return check_isa(env_str(ISA_ENV) or "auto")


def isa_allows(level: str, cap: str) -> bool:
    """True when kernels of `level` may run under `cap`."""
    return cap == "auto" or ISA_LEVELS.index(level) <= ISA_LEVELS.index(check_isa(cap))
