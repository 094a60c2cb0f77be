"""ModelConfig: every dimension of the one model, with derived sizes and validation."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pocketlm.common.errors import ArtifactError, ConfigError

# Ceilings that keep every size the C kernels index within a C int, and the RoPE tables (one
# row per position, built at load) within reason.
MAX_DIM = 2**31 - 1
MAX_SEQ_LEN = 2**20


@dataclass(frozen=True)
class ModelConfig:
    """Llama-style decoder shape. Names follow `transformers`' LlamaConfig where one exists."""

    vocab_size: int = 8192
    dim: int = 256  # hidden_size
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int = 4  # grouped-query attention: n_heads must be a multiple
    ffn_dim: int = 0  # intermediate_size; 0 = SwiGLU default (8/3 * dim rounded up to 64)
    head_dim: int = 0  # 0 = dim // n_heads
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2-style bias on q/k/v projections
    init_std: float = 0.02
    dropout: float = (
        0.0  # training only: on attention weights and on each block's output (multi-epoch data)
    )

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("ffn_dim", "head_dim"):
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"model.{name} must be >= 0 (0 = default), got {getattr(self, name)}"
                )
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "ffn_dim", "head_dim"):
            if getattr(self, name) > MAX_DIM:
                raise ConfigError(f"model.{name} must be <= {MAX_DIM}, got {getattr(self, name)}")
        if self.max_seq_len > MAX_SEQ_LEN:
            raise ConfigError(f"model.max_seq_len must be <= {MAX_SEQ_LEN}, got {self.max_seq_len}")
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"model.{name} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.init_std) and self.init_std >= 0):
            raise ConfigError(f"model.init_std must be a finite number >= 0, got {self.init_std}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"model.n_heads ({self.n_heads}) must be a multiple of model.n_kv_heads ({self.n_kv_heads})"
            )
        if not self.head_dim and self.dim % self.n_heads:
            raise ConfigError(
                f"model.dim ({self.dim}) must be divisible by model.n_heads ({self.n_heads}), or set model.head_dim"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.resolved_head_dim % 2:
            raise ConfigError(
                f"head dimension must be even for rotary embeddings, got {self.resolved_head_dim}"
            )
        for name in ("q_dim", "kv_dim", "resolved_ffn_dim"):
            if getattr(self, name) > MAX_DIM:
                raise ConfigError(f"model.{name} must be <= {MAX_DIM}, got {getattr(self, name)}")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    @property
    def resolved_ffn_dim(self) -> int:
        if self.ffn_dim:
            return self.ffn_dim
        hidden = int(8 * self.dim / 3)
        return 64 * ((hidden + 63) // 64)

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.resolved_head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.resolved_head_dim

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count (tied embeddings counted once)."""
        d, f = self.dim, self.resolved_ffn_dim
        attn = d * self.q_dim + 2 * d * self.kv_dim + self.q_dim * d
        if self.qkv_bias:
            attn += self.q_dim + 2 * self.kv_dim
        per_layer = attn + 3 * d * f + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.n_layers * per_layer + d + (emb if include_embeddings else 0)

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """Matmul FLOPs per token: 2N forward (6N training) plus attention over seq_len/2 on average."""
        seq = seq_len or self.max_seq_len
        n_matmul = (
            self.num_params(include_embeddings=False) + self.vocab_size * self.dim
        )  # lm_head matmul always runs
        attn = (
            2 * 2 * self.n_layers * self.q_dim * seq / 2
        )  # QK^T and AV, causal: half the keys on average
        forward = 2 * n_matmul + attn
        return 3 * forward if training else forward

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """KV-cache bytes one token occupies (keys + values, all layers)."""
        return 2 * self.n_layers * self.kv_dim * bytes_per_value

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """A config from plain values (a JSON object): unknown keys and wrong types are refused."""
        if not isinstance(data, dict):
            raise ConfigError(f"a model config must be a JSON object, got {type(data).__name__}")
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        for name, value in data.items():
            _check_type(name, known[name], value)
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        """The config in a model_config.json; ArtifactError naming the file and field when bad."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ArtifactError(f"{path}: missing (every model directory has one)") from exc
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ArtifactError(f"{path}: not a readable JSON model config ({exc})") from exc
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ArtifactError(f"{path}: {exc}") from exc


def _check_type(name: str, kind: str, value: object) -> None:
    """Raise ConfigError unless `value` is of the field's declared kind (bool is not an int)."""
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:  # float: JSON may write a whole number without a point
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
    if not ok:
        raise ConfigError(
            f"model.{name} must be a{'n' if kind == 'int' else ''} {kind}, got {value!r}"
        )
