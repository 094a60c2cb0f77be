"""Progress bars (tqdm) with one switch to turn them off."""

from __future__ import annotations

from typing import Any

from pocketlm.common.env import progress_disabled


def progress_bar(total: float | None = None, *, desc: str = "", unit: str = "it", **kwargs: Any):
    """A tqdm bar on stderr; unit='B' shows MB/s. Disabled by POCKETLM_NO_PROGRESS=1."""
    from tqdm.auto import tqdm

    if unit == "B":
        kwargs.setdefault("unit_scale", True)
        kwargs.setdefault("unit_divisor", 1000)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    if progress_disabled():
        kwargs["disable"] = True
    return tqdm(total=total, desc=desc, unit=unit, **kwargs)
