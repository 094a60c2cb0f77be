"""`export hf`: a model artifact as a directory `transformers` loads offline, as it is.

The directory holds config.json (LlamaForCausalLM; attention_bias for q/k/v biases),
generation_config.json, model.safetensors under Hugging Face names (a tied lm_head is omitted,
as transformers does), the model's tokenizer files copied unchanged (with the chat template),
a README.md model card and PocketLM's manifest.json. `transformers` itself is not needed to export.

Models with q/k/v biases are written as Llama with attention_bias (o_proj's bias exact zeros), not
as Qwen2: transformers 5 loads a "qwen2" directory's tokenizer as Qwen2Tokenizer, which swaps in
its own normalizer (NFC) and pre-tokenizer (single digits), so token ids would silently differ.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from pocketlm import __version__
from pocketlm.checkpoint.model_io import load_model, weights_state_dict
from pocketlm.common.errors import ArtifactError, ConfigError
from pocketlm.common.manifest import ArtifactWriter, parent_ref
from pocketlm.export.name_maps import HF_LLAMA, HF_LLAMA_QKV_BIAS, NameMap, rename_state
from pocketlm.model.config import ModelConfig
from pocketlm.model.quantized import dequantize_modules, is_quantized
from pocketlm.tokenizer.tokenizer import TOKENIZER_FILES, Tokenizer

HF_EXPORT_KIND = "hf_export"
HF_CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
HF_WEIGHTS_FILE = "model.safetensors"
MODEL_CARD_FILE = "README.md"
ARCHITECTURE = "LlamaForCausalLM"  # config.json "architectures"
MODEL_TYPE = "llama"  # config.json "model_type"

# --dtype name -> (config.json dtype string, torch dtype)
DTYPES: dict[str, tuple[str, torch.dtype]] = {
    "fp32": ("float32", torch.float32),
    "bf16": ("bfloat16", torch.bfloat16),
    "fp16": ("float16", torch.float16),
}

# ModelConfig fields this exporter writes into config.json (or that do not affect inference).
# A field added to ModelConfig later is refused here unless it keeps its default value.
_REPRESENTED_FIELDS = frozenset(
    {
        "vocab_size",
        "dim",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "ffn_dim",
        "head_dim",
        "max_seq_len",
        "rope_theta",
        "norm_eps",
        "tie_embeddings",
        "qkv_bias",
        "init_std",
        "dropout",  # training only: nothing to represent at inference
    }
)


def hf_name_map(config: ModelConfig) -> NameMap:
    """The tensor-name map for this model: plain Llama, or Llama with attention biases."""
    return HF_LLAMA_QKV_BIAS if config.qkv_bias else HF_LLAMA


def check_representable(config: ModelConfig) -> None:
    """Raise ArtifactError for a model `transformers`' LlamaForCausalLM cannot represent exactly."""
    defaults = ModelConfig.__dataclass_fields__
    for f in fields(ModelConfig):
        if (
            f.name not in _REPRESENTED_FIELDS
            and getattr(config, f.name) != defaults[f.name].default
        ):
            raise ArtifactError(
                f"export hf cannot represent model.{f.name}={getattr(config, f.name)!r} in a "
                "Llama config.json; transformers would load a different model"
            )
    if config.dim % config.n_heads:
        raise ArtifactError(
            f"transformers' LlamaConfig requires hidden_size ({config.dim}) to be a multiple of "
            f"num_attention_heads ({config.n_heads}), even with an explicit head_dim "
            f"({config.resolved_head_dim}); this model cannot be exported for transformers"
        )


def hf_config(config: ModelConfig, tokenizer: Tokenizer, dtype: str = "fp32") -> dict[str, Any]:
    """config.json contents in transformers' format (readable by transformers 4.45+ and 5.x)."""
    dtype_name = DTYPES[dtype][0]
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.resolved_ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.resolved_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "initializer_range": config.init_std,
        "rms_norm_eps": config.norm_eps,
        # transformers 4.x reads rope_theta (+ rope_scaling); 5.x reads rope_parameters.
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_embeddings,
        # q/k/v biases need attention_bias, which also gives o_proj a bias: exported as zeros.
        "attention_bias": config.qkv_bias,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        "torch_dtype": dtype_name,  # transformers 4.x
        "dtype": dtype_name,  # transformers 5.x
    }


def generation_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """generation_config.json: generation stops at end-of-text and at the chat's end-of-turn."""
    return {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": [tokenizer.eos_id, tokenizer.end_of_turn_id],
        "pad_token_id": tokenizer.pad_id,
    }


def hf_state_dict(
    state: Mapping[str, torch.Tensor], config: ModelConfig, dtype: str = "fp32"
) -> dict[str, torch.Tensor]:
    """Tensors under HF names cast to `dtype`; refuses unmapped, non-float or non-finite tensors."""
    omit = ("lm_head.weight",) if config.tie_embeddings else ()
    renamed = rename_state(state, hf_name_map(config), config.n_layers, omit=omit)
    if config.qkv_bias:
        # transformers' attention_bias also biases o_proj; PocketLM has none: write exact zeros.
        for i in range(config.n_layers):
            renamed[f"model.layers.{i}.self_attn.o_proj.bias"] = torch.zeros(config.dim)
    target = DTYPES[dtype][1]
    out: dict[str, torch.Tensor] = {}
    for name, tensor in renamed.items():
        if not tensor.is_floating_point():
            raise ArtifactError(
                f"tensor {name} is {tensor.dtype}, not floating point (a quantized model?); "
                "export hf writes fp32/bf16/fp16 weights only"
            )
        if not torch.isfinite(tensor).all():
            raise ArtifactError(f"tensor {name} holds NaN or inf values: the model is broken")
        cast = tensor.detach().to("cpu", target).contiguous()
        if not torch.isfinite(cast).all():
            raise ArtifactError(
                f"tensor {name} overflows {dtype} (max |w| = {tensor.abs().max().item():.4g}); "
                "export with --dtype bf16 or fp32"
            )
        out[name] = cast
    return out


def model_card(
    config: ModelConfig,
    tokenizer: Tokenizer,
    *,
    dtype: str,
    params: int,
    source: Path,
) -> str:
    """README.md: what the model is, how to load it with transformers, and its chat template."""
    attention = (
        "multi-head"
        if config.n_kv_heads == config.n_heads
        else f"grouped-query ({config.n_kv_heads} key/value heads)"
    )
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- pocketlm
- llama
---

# {_title(source)} (exported by PocketLM)

A small decoder-only language model trained with [PocketLM](https://github.com/pocketlm/pocketlm)
and exported as a `transformers` {ARCHITECTURE} ({params:,} parameters, {DTYPES[dtype][0]} weights).

| | |
|---|---|
| layers | {config.n_layers} |
| hidden size | {config.dim} |
| attention heads | {config.n_heads}, {attention}, head dim {config.resolved_head_dim} |
| feed-forward | SwiGLU, {config.resolved_ffn_dim} |
| context | {config.max_seq_len} tokens (RoPE, theta {config.rope_theta:g}) |
| vocabulary | {config.vocab_size} (byte-level BPE) |
| embeddings | {"tied to the LM head" if config.tie_embeddings else "separate from the LM head"} |
| attention biases | {"q/k/v (o_proj's bias is all zeros)" if config.qkv_bias else "none"} |

Exported by PocketLM {__version__}: logits match PocketLM's own forward pass, and `manifest.json`
records which model it came from.

## Load it with transformers (offline)

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

path = "path/to/this/directory"
tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)

# plain text (the tokenizer prepends <|bos|>)
inputs = tokenizer("Once upon a time", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40)[0]))

# chat (the template already starts with <|bos|>)
messages = [{{"role": "user", "content": "Hello!"}}]
text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
out = model.generate(**inputs, max_new_tokens=64)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

Generation stops at `<|endoftext|>` (id {tokenizer.eos_id}) or at the end of a chat turn,
`<|end|>` (id {tokenizer.end_of_turn_id}); see `generation_config.json`.

## Chat template

Roles are `system`, `user` and `assistant`; each message is closed by `<|end|>`:

```
<|bos|><|system|>
{{system}}<|end|>
<|user|>
{{user}}<|end|>
<|assistant|>
{{reply}}<|end|>
```

The Jinja text (in `tokenizer_config.json`):

```jinja
{tokenizer.chat_template}
```
"""


def export_hf(
    model_dir: str | Path,
    out: str | Path,
    *,
    dtype: str = "fp32",
    command: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a transformers-loadable directory (kind 'hf_export') for a model artifact; returns its path."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    loaded = load_model(model_dir)
    config, tokenizer = loaded.config, loaded.tokenizer
    check_representable(config)
    if is_quantized(loaded.model):
        # transformers has no int8-per-row / int4-group format of ours: write the weights the
        # quantized model actually computes with, as floats (same logits as the quantized model).
        dequantize_modules(loaded.model)
    state = hf_state_dict(weights_state_dict(loaded.model), config, dtype)
    params = loaded.model.num_params()
    missing = [name for name in TOKENIZER_FILES if not (loaded.directory / name).is_file()]
    if missing:
        raise ArtifactError(f"{loaded.directory}: missing tokenizer file(s) {missing}")
    with ArtifactWriter(
        out,
        HF_EXPORT_KIND,
        config={"format": "hf", "dtype": dtype, "architecture": ARCHITECTURE},
        parents=[parent_ref(loaded.directory)],
        command=command,
        overwrite=overwrite,
    ) as art:
        _write_json(art.path(HF_CONFIG_FILE), hf_config(config, tokenizer, dtype))
        _write_json(art.path(GENERATION_CONFIG_FILE), generation_config(tokenizer))
        save_file(state, str(art.path(HF_WEIGHTS_FILE)), metadata={"format": "pt"})
        for name in TOKENIZER_FILES:
            shutil.copyfile(loaded.directory / name, art.path(name))
        card = model_card(config, tokenizer, dtype=dtype, params=params, source=loaded.directory)
        art.path(MODEL_CARD_FILE).write_text(card, encoding="utf-8")
        return art.commit(
            {
                "architecture": ARCHITECTURE,
                "model_type": MODEL_TYPE,
                "dtype": dtype,
                "params": params,
                "tensors": len(state),
                "weights_bytes": art.path(HF_WEIGHTS_FILE).stat().st_size,
            }
        )


def _title(source: Path) -> str:
    """A readable model name: the run's name for a run's final model/ directory."""
    return source.parent.name if source.name == "model" and source.parent.name else source.name


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
