"""The sparse mixture-of-experts feed-forward against transformers' own Mixtral, Qwen2-MoE and
Qwen3-MoE: the block alone, then whole tiny models (logits and greedy decoding with the KV
cache), plus the properties the block promises (only routed experts run, gradients reach the
router, quantization leaves the router float)."""

from __future__ import annotations

import importlib

import pytest
import torch

from pocketlm.interop.families import find_family
from pocketlm.interop.families.hf_config import model_config
from pocketlm.model.config import ModelConfig
from pocketlm.model.kv_cache import KVCache
from pocketlm.model.moe import MoE
from pocketlm.model.transformer import CausalLM

transformers = pytest.importorskip("transformers")

DIM, EXPERTS, TOP_K, VOCAB = 64, 4, 2, 128
# HF model_type -> (config class, model class, sparse block class, its extra config)
FAMILIES = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", "MixtralSparseMoeBlock",
                {"num_local_experts": EXPERTS, "intermediate_size": 96}),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", "Qwen2MoeSparseMoeBlock",
                  {"num_experts": EXPERTS, "moe_intermediate_size": 32,
                   "shared_expert_intermediate_size": 48, "intermediate_size": 96}),
    "qwen2_moe_norm": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", "Qwen2MoeSparseMoeBlock",
                       {"num_experts": EXPERTS, "moe_intermediate_size": 32,
                        "shared_expert_intermediate_size": 48, "norm_topk_prob": True}),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", "Qwen3MoeSparseMoeBlock",
                  {"num_experts": EXPERTS, "moe_intermediate_size": 32, "head_dim": 16,
                   "norm_topk_prob": True}),
    "qwen3_moe_raw": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", "Qwen3MoeSparseMoeBlock",
                      {"num_experts": EXPERTS, "moe_intermediate_size": 32, "head_dim": 16}),
}  # fmt: skip


def hf_config(family: str, **overrides):
    config_cls, _, _, extra = FAMILIES[family]
    base = dict(
        vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_experts_per_tok=TOP_K, max_position_embeddings=128,
    )  # fmt: skip
    return getattr(transformers, config_cls)(**{**base, **extra, **overrides})


def pocketlm_config(hf) -> ModelConfig:
    """The ModelConfig of a tiny HF MoE config, read by its family spec (interop/families)."""
    data = hf.to_dict()
    return model_config(find_family(data), data)


def to_pocketlm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers 5 in-memory MoE state dict under PocketLM's names: each layer's stacked
    experts (gate_up_proj [E, 2F, dim], gate rows first; down_proj [E, dim, F]) split per
    expert. (Files on disk are imported by interop.hf_import: test_hf_import covers them.)"""
    out = {}
    for name, tensor in state.items():
        prefix, _, stacked = name.partition("mlp.experts.")
        if stacked == "down_proj":
            out |= {f"{prefix}mlp.experts.{e}.down_proj.weight": t for e, t in enumerate(tensor)}
        elif stacked == "gate_up_proj":
            ffn = tensor.shape[1] // 2
            for e, t in enumerate(tensor):
                out[f"{prefix}mlp.experts.{e}.gate_proj.weight"] = t[:ffn]
                out[f"{prefix}mlp.experts.{e}.up_proj.weight"] = t[ffn:]
        else:
            out[name] = tensor
    return out


def perturb_(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (norms around 1, routers wide apart) so no bug hides in a tie."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1 + 0.1 * noise)
            elif name.endswith(("gate.weight", "shared_expert_gate.weight")):
                p.copy_(noise / DIM**0.5)  # logits of order 1: distinct, no ties
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)


def hf_block(family: str, seed: int = 0):
    config = hf_config(family)
    kind = config.model_type
    modeling = importlib.import_module(f"transformers.models.{kind}.modeling_{kind}")
    module = getattr(modeling, FAMILIES[family][2])(config).eval()
    perturb_(module, seed)
    return module


def our_block(family: str, hf) -> MoE:
    config = pocketlm_config(hf_config(family))
    block = MoE(config).eval()
    prefix = "model.layers.0.mlp."
    state = to_pocketlm({prefix + k: v for k, v in hf.state_dict().items()})
    block.load_state_dict({k.removeprefix(prefix): v for k, v in state.items()}, strict=True)
    return block


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("shape", [(1, 1), (3, 37)], ids=["one-token", "many-tokens"])
def test_block_matches_transformers(family, shape):
    hf = hf_block(family)
    ours = our_block(family, hf)
    x = torch.randn(*shape, DIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(x)
        got = ours(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_the_router_rules_differ_where_they_should():
    """Renormalised and raw routing give different outputs (the flag is not ignored)."""
    hf = hf_block("qwen2_moe")
    raw = our_block("qwen2_moe", hf)
    normed = our_block("qwen2_moe_norm", hf)
    x = torch.randn(5, DIM, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert not torch.allclose(raw(x), normed(x), atol=1e-4)


def test_only_the_routed_experts_run():
    hf = hf_block("mixtral")
    ours = our_block("mixtral", hf)
    calls: list[tuple[int, int]] = []
    for e, expert in enumerate(ours.experts):
        expert.register_forward_hook(lambda m, args, out, e=e: calls.append((e, len(args[0]))))
    with torch.no_grad():
        ours(torch.randn(1, 1, DIM, generator=torch.Generator().manual_seed(5)))
    assert len(calls) == TOP_K and all(rows == 1 for _, rows in calls)
    calls.clear()
    with torch.no_grad():
        ours(torch.randn(1, 50, DIM, generator=torch.Generator().manual_seed(6)))
    assert sum(rows for _, rows in calls) == 50 * TOP_K  # each token once in each of its k experts


def test_gradients_reach_the_router_and_the_experts():
    hf = hf_block("qwen2_moe_norm")
    ours = our_block("qwen2_moe_norm", hf).train()
    x = torch.randn(2, 9, DIM, generator=torch.Generator().manual_seed(7)).requires_grad_()
    ours(x).square().sum().backward()
    assert ours.gate.weight.grad is not None and ours.gate.weight.grad.abs().sum() > 0
    assert ours.shared_expert_gate.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    used = [e for e in ours.experts if e.down_proj.weight.grad is not None]
    assert used and all(e.down_proj.weight.grad.abs().sum() > 0 for e in used)


def test_block_gradients_match_transformers():
    hf = hf_block("mixtral")
    ours = our_block("mixtral", hf)
    x = torch.randn(2, 11, DIM, generator=torch.Generator().manual_seed(8))
    hf(x).square().sum().backward()
    ours(x).square().sum().backward()
    # summed over 22 tokens: float sums in a different order, so a relative tolerance
    torch.testing.assert_close(ours.gate.weight.grad, hf.gate.weight.grad, rtol=1e-4, atol=1e-5)


def tiny_pair(family: str, **overrides) -> tuple[torch.nn.Module, CausalLM]:
    """A random transformers MoE model (perturbed) and the same weights in PocketLM's CausalLM."""
    _, model_cls, _, _ = FAMILIES[family]
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(hf_config(family, **overrides)).eval()
    perturb_(hf, seed=3)
    ours = CausalLM(pocketlm_config(hf.config)).eval()
    ours.load_state_dict(to_pocketlm(hf.state_dict()), strict=True)
    return hf, ours


def greedy_with_cache(model: CausalLM, prompt: list[int], n: int) -> list[int]:
    cache = KVCache.allocate(model.config, 1, len(prompt) + n)
    ids = torch.tensor([prompt])
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(ids, cache)[0, -1]
            out.append(int(logits.argmax()))
            ids = torch.tensor([[out[-1]]])
    return out


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_whole_model_matches_transformers(family):
    hf, ours = tiny_pair(family)
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours(ids)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    prompt = ids[0, :10].tolist()
    with torch.no_grad():
        hf_out = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                             min_new_tokens=16, pad_token_id=0)  # fmt: skip
    assert greedy_with_cache(ours, prompt, 16) == hf_out[0, len(prompt) :].tolist()


def test_save_pretrained_files_import_to_the_same_model(tmp_path, synthetic_pipeline):
    """What save_pretrained writes (Mixtral's block_sparse_moe.experts.{e}.w1/w2/w3) imports
    onto the same PocketLM tensors as the in-memory fused state dict."""
    import shutil

    from safetensors import safe_open

    from pocketlm.checkpoint.model_io import load_model
    from pocketlm.interop.hf_import import import_hf

    hf, ours = tiny_pair("mixtral", vocab_size=512)
    hf.save_pretrained(tmp_path / "hf")
    shutil.copyfile(synthetic_pipeline["tokenizer"] / "tokenizer.json", tmp_path / "hf" / "tokenizer.json")  # fmt: skip
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as f:
        assert any(".block_sparse_moe.experts.0.w1.weight" in n for n in f.keys())  # noqa: SIM118
    from_disk = load_model(import_hf(tmp_path / "hf", tmp_path / "ours")).model.state_dict()
    want = ours.state_dict()
    assert set(from_disk) == set(want)
    for name, tensor in from_disk.items():
        assert torch.equal(tensor, want[name]), name


def test_qwen_models_with_dense_layers_are_refused():
    from pocketlm.common.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match=r"mlp_only_layers .*\[1\]"):
        pocketlm_config(hf_config("qwen2_moe", mlp_only_layers=[1]))
    with pytest.raises(UnsupportedModelError, match=r"decoder_sparse_step .*\[0\]"):
        pocketlm_config(hf_config("qwen3_moe", decoder_sparse_step=2))


def test_parameter_count_and_flops_of_a_mixture_of_experts():
    config = pocketlm_config(hf_config("qwen2_moe"))
    assert CausalLM(config).num_params() == config.num_params()
    dense_all = ModelConfig(**{**config.to_dict(), "n_experts_per_token": EXPERTS})
    expert_matmuls = config.n_layers * 3 * DIM * config.expert_ffn_dim
    flops = {c: c.flops_per_token(16, training=False) for c in (dense_all, config)}
    saved = flops[dense_all] - flops[config]
    assert saved == 2 * (EXPERTS - TOP_K) * expert_matmuls  # 2 FLOPs a multiply-add
