"""ModelConfig: every dimension of the one model, with derived sizes and validation."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from pocketlm.common.errors import ArtifactError, ConfigError
from pocketlm.model.encoder_checks import bottleneck_layer_params, check_encoder_options

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
    # --- Family options: construction-time choices that imported families need. The defaults are
    # Llama; interop/families/ sets them from a Hugging Face config. Tensor names stay Llama's
    # (checkpoint/weights_spec.py lists what each option adds).
    norm_kind: str = "rms"  # "rms" | "layer" (LayerNorm with a bias: Phi-2) | "affine" (no
    # normalisation, x * w + b: MobileBERT's NoNorm; encoders only)
    norm_offset: float = 0.0  # 1.0 = Gemma's (1 + w) scale, the 1 added in fp32
    activation: str = "silu"  # "silu" | "gelu_tanh" | "gelu" | "relu" (encoders only: MobileBERT)
    mlp_kind: str = "gated"  # "gated" (gate/up/down) | "plain" (up/down: Phi-2's fc1/fc2)
    o_bias: bool = False  # bias on o_proj (Phi-2's dense)
    mlp_bias: bool = False  # biases on the MLP's linears (Phi-2)
    lm_head_bias: bool = False  # Phi-2
    qk_norm: bool = False  # RMSNorm over each head's q and k before rotary (Qwen3, Gemma 3)
    rotary_dim: int = 0  # dimensions of each head that rotate; 0 = all (Phi: partial rotary)
    rope_scaling: str = "none"  # "none" | "linear" | "llama3" | "longrope"
    rope_factor: float = 1.0  # linear / llama3 / longrope scale factor
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    rope_original_max_len: int = 0  # llama3 / longrope: original_max_position_embeddings
    rope_short_factor: tuple[float, ...] = ()  # longrope, one per rotary frequency
    rope_long_factor: tuple[float, ...] = ()  # longrope, used past rope_original_max_len
    rope_local_theta: float = 0.0  # sliding-window layers' own base, unscaled (Gemma 3); 0 = the
    # global rope (and its scaling) in every layer
    sliding_window: int = 0  # keys a sliding layer sees (0 = no sliding layers)
    layer_types: tuple[str, ...] = ()  # per layer "full" | "sliding"; () = all full, or all
    # sliding when sliding_window is set (Mistral)
    parallel_block: bool = False  # x + attn(norm(x)) + mlp(norm(x)), one norm (Phi-2)
    embed_scale: float = 1.0  # embeddings times this, in the model's dtype (Gemma: sqrt(dim))
    attn_scale: float = 0.0  # softmax scale; 0 = head_dim ** -0.5 (Gemma 2's query_pre_attn_scalar)
    attn_softcap: float = 0.0  # tanh soft-cap of attention scores (Gemma 2); 0 = none
    final_softcap: float = 0.0  # tanh soft-cap of the logits (Gemma 2); 0 = none
    sandwich_norms: bool = False  # extra norms on the attention and MLP outputs (Gemma 2/3)
    n_experts: int = 0  # sparse mixture of experts in every layer's MLP; 0 = dense
    n_experts_per_token: int = 0  # top-k
    expert_ffn_dim: int = 0  # each expert's intermediate size
    router: str = "softmax_topk"  # "softmax_topk" (renormalised: Mixtral, Qwen3-MoE with
    # norm_topk_prob) | "softmax_topk_raw" (not renormalised: Qwen2-MoE)
    shared_expert_ffn_dim: int = 0  # a dense expert every token uses, sigmoid-gated (Qwen2-MoE)
    # --- Classification head (model/heads.py): with labels the model is a sequence classifier,
    # forward(..., attention_mask) -> (B, n_labels) logits, and it has no LM head.
    labels: tuple[str, ...] = ()  # class names, in logit order; () = a language model
    pooling: str = "last"  # "last" (last real token: decoders) | "first" (first token: [CLS])
    pooler: str = "none"  # "none" | "tanh" / "relu": a dim x dim dense + activation first (BERT's
    # pooler, DistilBERT's pre_classifier)
    classifier_bias: bool = False  # a bias on the score layer (encoders; not Llama's score)
    # --- Encoder options (BERT, DistilBERT, ALBERT: model/embeddings.py): bidirectional attention,
    # absolute position and token-type embeddings, post-norm blocks. An encoder (causal False) has
    # no LM head: with labels it classifies, without them forward returns the final hidden states
    # (B, T, dim), and a pooler (pooler != "none") is kept for a classifier built on it.
    causal: bool = True  # False: each token attends to every token of its sequence (document)
    position_kind: str = "rope"  # "rope" | "learned": a max_seq_len-row table added to the
    # token embeddings, positions counted from each sequence's first real token (BERT)
    type_vocab_size: int = 0  # token-type (segment) embeddings, type 0 unless given; 0 = none
    embed_norm: bool = False  # a norm over the summed embeddings (BERT's embeddings.LayerNorm)
    embed_dim: int = 0  # factorised embeddings (ALBERT): tables embed_dim wide, then a biased
    # embed_dim -> dim projection; 0 = dim, no projection
    norm_position: str = "pre"  # "pre": x + f(norm(x)), a final norm | "post": norm(x + f(x)),
    # two norms a layer and none after the last (BERT)
    shared_layers: bool = False  # one layer's weights applied n_layers times, stored once (ALBERT)
    embed_trigram: bool = False  # each position's token embedding is the next, this and the
    # previous token's side by side (zeros past a sequence's ends), projected to dim before
    # dim-wide positions and types are added (MobileBERT)
    bottleneck_dim: int = 0  # MobileBERT's layers (model/bottleneck.py): attention and MLPs at
    # this width between a dim -> bottleneck_dim projection in and one out; 0 = none
    n_ffn: int = 1  # MLPs per bottleneck layer, each post-normed (num_feedforward_networks)

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
        if not self.head_dim and self.inner_dim % self.n_heads:
            raise ConfigError(
                f"model.dim ({self.inner_dim}) must be divisible by model.n_heads ({self.n_heads}), or set model.head_dim"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.resolved_head_dim % 2 and self.position_kind == "rope":
            raise ConfigError(
                f"head dimension must be even for rotary embeddings, got {self.resolved_head_dim}"
            )
        _check_family_options(self)
        for name in ("q_dim", "kv_dim", "resolved_ffn_dim"):
            if getattr(self, name) > MAX_DIM:
                raise ConfigError(f"model.{name} must be <= {MAX_DIM}, got {getattr(self, name)}")

    @property
    def has_lm_head(self) -> bool:
        """Whether the model ends in an LM head (not a classifier, not an encoder)."""
        return not self.labels and self.causal

    @property
    def resolved_embed_dim(self) -> int:
        return self.embed_dim or self.dim

    @property
    def embed_sum_dim(self) -> int:
        """Width of the position and type tables and the embedding norm: dim after a trigram
        projection, else the token embeddings' width."""
        return self.dim if self.embed_trigram else self.resolved_embed_dim

    @property
    def embed_proj_in(self) -> int:
        """Input width of the embedding projection to dim (0: none)."""
        if self.embed_trigram:
            return 3 * self.resolved_embed_dim
        return self.embed_dim

    @property
    def inner_dim(self) -> int:
        """The width attention and the MLP work at: bottleneck_dim in bottleneck layers."""
        return self.bottleneck_dim or self.dim

    @property
    def n_layer_weights(self) -> int:
        """How many layers have their own weights (1 when every layer shares one: ALBERT)."""
        return 1 if self.shared_layers else self.n_layers

    @property
    def resolved_rotary_dim(self) -> int:
        return self.rotary_dim or self.resolved_head_dim

    def layer_kind(self, layer: int) -> str:
        """ "full" or "sliding" (attends to the last `sliding_window` keys) for one layer."""
        if self.layer_types:
            return self.layer_types[layer]
        return "sliding" if self.sliding_window else "full"

    def family_features(self) -> tuple[str, ...]:
        """Names of the options set away from plain Llama (for messages: which feature is where)."""
        base = ModelConfig()
        skip = {"vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "head_dim",
                "max_seq_len", "rope_theta", "norm_eps", "tie_embeddings", "init_std", "dropout"}  # fmt: skip
        return tuple(
            f.name for f in fields(self)
            if f.name not in skip and getattr(self, f.name) != getattr(base, f.name)
        )  # fmt: skip

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.inner_dim // self.n_heads

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
        d, f, hd = self.dim, self.resolved_ffn_dim, self.resolved_head_dim
        attn = d * self.q_dim + 2 * d * self.kv_dim + self.q_dim * d
        attn += (self.q_dim + 2 * self.kv_dim) * self.qkv_bias + d * self.o_bias
        attn += 2 * hd * self.qk_norm
        n_mats = 3 if self.mlp_kind == "gated" else 2
        if self.n_experts:
            e = self.expert_ffn_dim
            mlp = self.n_experts * (3 * d * e) + self.n_experts * d
            if self.shared_expert_ffn_dim:
                mlp += 3 * d * self.shared_expert_ffn_dim + d
        else:
            mlp = n_mats * d * f + (f + d) * self.mlp_bias
        per_norm = 1 if self.norm_kind == "rms" else 2  # weight (+ bias)
        norm = d * per_norm
        n_norms = (1 if self.parallel_block else 2) + 2 * self.sandwich_norms
        per_layer = attn + mlp + n_norms * norm
        if self.bottleneck_dim:
            per_layer = bottleneck_layer_params(self, per_norm)
        body = self.n_layer_weights * per_layer + norm * (self.norm_position == "pre")
        e, s = self.resolved_embed_dim, self.embed_sum_dim
        tables = self.vocab_size * e  # tokens, positions, types: the embeddings proper
        tables += s * (self.max_seq_len * (self.position_kind == "learned") + self.type_vocab_size)
        body += s * per_norm * self.embed_norm
        body += (self.embed_proj_in * d + d) * bool(self.embed_proj_in)  # projection to dim
        # the head: an encoder's or classifier's pooler and score layer, or the LM head
        body += (d * d + d) * (self.pooler != "none")
        body += len(self.labels) * (d + self.classifier_bias)
        if self.has_lm_head:
            tables += self.vocab_size * d * (not self.tie_embeddings)
            body += self.vocab_size * self.lm_head_bias
        return body + (tables if include_embeddings else 0)

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """Matmul FLOPs per token: 2N forward (6N training) plus attention over the keys a query
        sees (seq_len / 2 on average, causal; seq_len in an encoder)."""
        seq = seq_len or self.max_seq_len
        unshared = replace(self, shared_layers=False)  # a shared layer runs n_layers times
        n_matmul = unshared.num_params(include_embeddings=False)
        n_matmul += self.vocab_size * self.dim * self.has_lm_head  # the LM head's matmul
        if self.n_experts:  # a token runs k of the n experts
            idle = self.n_experts - self.n_experts_per_token
            n_matmul -= self.n_layers * idle * 3 * self.dim * self.expert_ffn_dim
        # QK^T and AV over the keys a query sees: causal, half of them on average
        attn = 2 * 2 * self.n_layers * self.q_dim * seq / (2 if self.causal else 1)
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
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
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


_CHOICES = {
    "norm_kind": ("rms", "layer", "affine"),
    "activation": ("silu", "gelu_tanh", "gelu", "relu"),
    "mlp_kind": ("gated", "plain"),
    "rope_scaling": ("none", "linear", "llama3", "longrope"),
    "router": ("softmax_topk", "softmax_topk_raw"),
    "pooling": ("last", "first"),
    "pooler": ("none", "tanh", "relu"),
    "position_kind": ("rope", "learned"),
    "norm_position": ("pre", "post"),
}


def _check_family_options(c: ModelConfig) -> None:
    """Raise ConfigError for a family option out of range or inconsistent with the others."""
    for name, choices in _CHOICES.items():
        if getattr(c, name) not in choices:
            raise ConfigError(
                f"model.{name} must be one of {', '.join(choices)}, got {getattr(c, name)!r}"
            )
    for name in ("rotary_dim", "rope_original_max_len", "sliding_window", "n_experts",
                 "n_experts_per_token", "expert_ffn_dim", "shared_expert_ffn_dim"):  # fmt: skip
        if getattr(c, name) < 0:
            raise ConfigError(f"model.{name} must be >= 0, got {getattr(c, name)}")
    for name in ("norm_offset", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                 "rope_local_theta", "embed_scale", "attn_scale", "attn_softcap", "final_softcap"):  # fmt: skip
        value = getattr(c, name)
        if not math.isfinite(value) or (value < 0 and name != "norm_offset"):
            raise ConfigError(f"model.{name} must be a finite number >= 0, got {value}")
    if c.rotary_dim and (c.rotary_dim % 2 or c.rotary_dim > c.resolved_head_dim):
        raise ConfigError(f"model.rotary_dim must be even and <= head_dim, got {c.rotary_dim}")
    if c.layer_types:
        if len(c.layer_types) != c.n_layers or set(c.layer_types) - {"full", "sliding"}:
            raise ConfigError(
                f"model.layer_types must name 'full' or 'sliding' for each of {c.n_layers} layers"
            )
        if "sliding" in c.layer_types and not c.sliding_window:
            raise ConfigError("model.layer_types has sliding layers but model.sliding_window is 0")
    if c.rope_scaling == "longrope":
        half = c.resolved_rotary_dim // 2
        if len(c.rope_short_factor) != half or len(c.rope_long_factor) != half:
            raise ConfigError(f"longrope needs {half} short and long factors (rotary_dim / 2)")
    if c.rope_scaling in ("llama3", "longrope") and not c.rope_original_max_len:
        raise ConfigError(f"rope_scaling {c.rope_scaling!r} needs model.rope_original_max_len")
    if c.n_experts:
        if not 1 <= c.n_experts_per_token <= c.n_experts or not c.expert_ffn_dim:
            raise ConfigError(
                "a mixture of experts needs 1 <= model.n_experts_per_token <= model.n_experts "
                "and model.expert_ffn_dim > 0"
            )
        if c.mlp_kind != "gated" or c.mlp_bias:
            raise ConfigError("experts are gated MLPs without biases")
    elif c.n_experts_per_token or c.shared_expert_ffn_dim:
        raise ConfigError(
            "model.n_experts_per_token and model.shared_expert_ffn_dim need model.n_experts > 0"
        )
    if c.parallel_block and c.sandwich_norms:
        raise ConfigError("model.parallel_block and model.sandwich_norms do not combine")
    if len(set(c.labels)) != len(c.labels) or any(not label for label in c.labels):
        raise ConfigError(f"model.labels must be distinct non-empty names, got {list(c.labels)}")
    if len(c.labels) == 1:
        raise ConfigError("model.labels needs at least two classes")
    check_encoder_options(c)


def _check_type(name: str, kind: str, value: object) -> None:
    """Raise ConfigError unless `value` is of the field's declared kind (bool is not an int)."""
    if kind.startswith("tuple["):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"model.{name} must be a list, got {value!r}")
        for item in value:
            _check_type(name, kind[6:].split(",")[0], item)
        return
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"model.{name} must be a string, got {value!r}")
        return
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
