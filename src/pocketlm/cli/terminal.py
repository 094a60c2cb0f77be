"""Writing generated text to a terminal that may not show every character."""

from __future__ import annotations

import sys
from typing import TextIO


def write_text(text: str, stream: TextIO | None = None) -> None:
    """Write and flush; characters the stream's encoding lacks become replacement marks."""
    out = stream or sys.stdout
    try:
        out.write(text)
    except UnicodeEncodeError:  # a terminal that cannot show some character
        encoding = out.encoding or "ascii"
        out.write(text.encode(encoding, errors="replace").decode(encoding))
    out.flush()
