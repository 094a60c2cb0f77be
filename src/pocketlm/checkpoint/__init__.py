"""Checkpoints: safetensors weights + model config + tokenizer + manifest; train state for exact resume."""
