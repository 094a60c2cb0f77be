"""Fixtures for the server's unit tests."""

from __future__ import annotations

import logging

import pytest


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def server_log():
    """What the server logs during the test, as formatted lines (with tracebacks), whatever an
    earlier test did to the logging set-up (caplog misses a logger that does not propagate)."""
    logger = logging.getLogger("pocketlm.server")
    handler = _Records()
    saved_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
