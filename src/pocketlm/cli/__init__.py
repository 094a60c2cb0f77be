"""Thin CLI commands: parse, call one library function, print the artifact path. Never imports torch at import time."""
