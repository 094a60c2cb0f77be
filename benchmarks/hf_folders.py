"""Random-weight Hugging Face model folders in released models' shapes, for benchmarks that
import them (speed does not depend on the values). Nothing is downloaded: transformers builds the
model from a config; the tokenizer is PocketLM's own small one, saved in HF's format (its vocabulary
may be smaller than the model's: the model keeps the released vocabulary size).

    python benchmarks/hf_folders.py --out /tmp/hfbench smollm2-135m qwen2.5-0.5b llama3.2-1b
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

SHAPES = {
    # the released configs' shape fields (SmolLM2-135M, Qwen2.5-0.5B, Llama-3.2-1B config.json)
    "smollm2-135m": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=576,
        intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
        max_position_embeddings=8192, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
    ),
    "qwen2.5-0.5b": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=896,
        intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
        max_position_embeddings=32768, rms_norm_eps=1e-6, bos_token_id=151643,
        eos_token_id=151643, sliding_window=None, use_sliding_window=False,
    ),
    "llama3.2-1b": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=2048,
        intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
        max_position_embeddings=131072, rms_norm_eps=1e-5, bos_token_id=128000,
        eos_token_id=128001, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192},
    ),
}  # fmt: skip


def make_folder(name: str, out: Path, tokenizer_dir: Path | None, shard: str = "500MB") -> Path:
    """Write `out/name`: config.json, sharded bf16 safetensors (with an index), tokenizer files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(SHAPES[name])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    dest = out / name
    model.save_pretrained(dest, max_shard_size=shard)
    if tokenizer_dir is not None:
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (tokenizer_dir / f).is_file():
                shutil.copy(tokenizer_dir / f, dest / f)
    return dest


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("shapes", nargs="+", choices=sorted(SHAPES))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, help="a PocketLM tokenizer directory to copy")
    args = p.parse_args()
    for name in args.shapes:
        print(make_folder(name, args.out, args.tokenizer))


if __name__ == "__main__":
    main()
