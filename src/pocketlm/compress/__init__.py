"""Compression: quantization (int8 / int4 / bf16) and, later, pruning."""
