"""benchmarks/weight_traffic.py: what one decode token reads, from file headers (tied and untied
heads, experts at k/n, both PocketLM's and GGUF's names) and the GB/s it implies."""

from __future__ import annotations

import torch
from benchmarks.weight_traffic import bytes_per_token, safetensors_sizes, weight_gbs
from safetensors.torch import save_file

VOCAB = 100


def test_tied_embedding_counts_as_the_head_plus_one_looked_up_row():
    sizes = {"model.embed_tokens.weight": 100 * 8, "model.layers.0.mlp.up_proj.weight": 64}
    assert bytes_per_token(sizes, VOCAB) == 800 + 8 + 64


def test_untied_head_counts_whole_and_the_embedding_one_row():
    gguf = {"token_embd.weight": 800, "output.weight": 800, "output_norm.weight": 32}
    assert bytes_per_token(gguf, VOCAB) == 8 + 800 + 32


def test_experts_count_k_of_n_and_the_router_whole():
    ours = {f"model.layers.0.mlp.experts.{e}.gate_proj.weight": 40 for e in range(8)}
    ours["model.layers.0.mlp.gate.weight"] = 16
    gguf = {"blk.0.ffn_gate_exps.weight": 320, "blk.0.ffn_gate_inp.weight": 16}
    assert bytes_per_token(ours, VOCAB, 8, 2) == 2 * 40 + 16
    assert bytes_per_token(gguf, VOCAB, 8, 2) == 2 * 40 + 16


def test_safetensors_sizes_read_the_header_and_reprice_elements(tmp_path):
    save_file({"a": torch.zeros(3, 4, dtype=torch.bfloat16), "b": torch.zeros(5)}, tmp_path / "m.safetensors")  # fmt: skip
    assert safetensors_sizes(tmp_path) == {"a": 24, "b": 20}
    assert safetensors_sizes(tmp_path, itemsize=4) == {"a": 48, "b": 20}


def test_gbs_and_share_of_read_bandwidth():
    assert weight_gbs(10**8, 50.0, 20.0) == (5.0, 25.0)
    assert weight_gbs(10**8, 50.0, None) == (5.0, None)
