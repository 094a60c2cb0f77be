"""Byte-level BPE tokenizer: training, loading, special tokens and THE chat template."""
