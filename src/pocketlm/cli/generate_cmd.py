"""Placeholder: filled in by the runtime / export work."""

from __future__ import annotations


def register(subparsers) -> None:
    """Not yet available."""
