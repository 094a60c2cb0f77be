"""Corpus building (sources, cleaning, dedup, split, report), token shards and the resumable loader."""
