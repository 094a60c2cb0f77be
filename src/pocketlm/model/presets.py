"""Named model sizes from ~1M to ~150M parameters (deep-and-thin per MobileLLM for the larger ones)."""

from __future__ import annotations

import dataclasses
import difflib

from pocketlm.common.errors import ConfigError
from pocketlm.model.config import ModelConfig

# Shapes only; vocab_size and max_seq_len come from the tokenizer and the run.
PRESETS: dict[str, dict] = {
    "pico-1m": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, ffn_dim=384),
    "nano-3m": dict(dim=192, n_layers=6, n_heads=6, n_kv_heads=3, ffn_dim=512),
    "micro-6m": dict(dim=256, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=704),
    # From here on deep and thin (MobileLLM): more layers rather than width.
    "mini-15m": dict(dim=288, n_layers=14, n_heads=6, n_kv_heads=3, ffn_dim=768),
    "small-30m": dict(dim=448, n_layers=12, n_heads=8, n_kv_heads=4, ffn_dim=1216),
    "base-50m": dict(dim=512, n_layers=16, n_heads=8, n_kv_heads=4, ffn_dim=1408),
    "medium-85m": dict(dim=576, n_layers=22, n_heads=9, n_kv_heads=3, ffn_dim=1536),
    # SmolLM2-135M's shape; its own 49k vocabulary applies only when you ask for it
    "smollm2-135m": dict(
        dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536, rope_theta=100000.0
    ),
    "large-150m": dict(dim=640, n_layers=32, n_heads=10, n_kv_heads=5, ffn_dim=1728),
}
SMOLLM2_VOCAB = 49152


def preset_config(name: str, **overrides: object) -> ModelConfig:
    """ModelConfig for a named preset; overrides (vocab_size, max_seq_len, ...) win."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown model preset '{name}'{hint} (presets: {', '.join(PRESETS)})")
    values = {**PRESETS[name], **overrides}
    return ModelConfig(
        **{
            k: v
            for k, v in values.items()
            if k in {f.name for f in dataclasses.fields(ModelConfig)}
        }
    )
