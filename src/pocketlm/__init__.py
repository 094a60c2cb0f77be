"""PocketLM: build, shrink and run small language models on your own hardware, offline."""

__version__ = "0.1.0"
