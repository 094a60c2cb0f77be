"""Evaluation: bits per byte, task accuracy, speed and memory, reports."""
