"""User-facing error types: each carries a message that says what is wrong and how to fix it."""

from __future__ import annotations

import errno
import re
from pathlib import Path


class PocketLMError(Exception):
    """An error caused by the user's input or environment; the CLI prints it without a traceback."""


class ConfigError(PocketLMError):
    """A configuration value or key is invalid."""


class InputError(PocketLMError):
    """A bad record in an input file, located by file, line and byte offset where known."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        byte_offset: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.byte_offset = byte_offset
        self.reason = message
        self.hint = hint
        super().__init__(self._format())

    def location(self) -> str:
        """`file:line (byte N)` as far as it is known."""
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.byte_offset is not None:
            parts.append(f"byte offset {self.byte_offset}")
        return ", ".join(parts)

    def _format(self) -> str:
        where = self.location()
        text = f"{where}: {self.reason}" if where else self.reason
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class ArtifactError(PocketLMError):
    """An artifact directory is missing, incomplete, of the wrong kind, or corrupt."""


class UnsupportedModelError(ArtifactError):
    """A model (architecture, or one feature of its config) that PocketLM does not implement."""


class MissingDependencyError(PocketLMError):
    """An optional dependency is not installed."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the optional package '{module}', which is not installed.\n"
            f"  install it with: pip install 'pocketlm[{extra}]'  (or: pip install {module})"
        )


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency lazily or raise MissingDependencyError with an install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module.split(".")[0], extra, purpose) from exc


class OutOfSpaceError(PocketLMError):
    """A write failed because the disk (or the quota, or the file-size limit) is full."""


# ENOSPC (no space), EDQUOT (quota), EFBIG (file-size limit): the disk cannot take the write.
_OUT_OF_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def is_out_of_space(exc: BaseException) -> bool:
    """True for an OSError, or a library's wrapped I/O error ("... (os error 28)"), that says
    the disk, quota or file-size limit is full."""
    if isinstance(exc, OSError) and exc.errno in _OUT_OF_SPACE_ERRNOS:
        return True
    match = re.search(r"os error (\d+)", str(exc))
    return match is not None and int(match.group(1)) in _OUT_OF_SPACE_ERRNOS
