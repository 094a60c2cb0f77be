"""Fine-tuning throughput and memory on this machine: PocketLM's full fine-tune, LoRA and QLoRA
(int4 base) vs a plain transformers + peft LoRA loop, same shape, same data, same sequence length.

    python benchmarks/finetune_speed.py                                  # SmolLM2-135M's shape
    python benchmarks/finetune_speed.py --preset pico-1m --vocab 4096 --batch 4 --ctx 128 \\
        --rounds 1 --steps 2                                             # a quick check

Every variant runs in its own process, built, warmed up (2 steps: optimizer state allocated,
torch.compile done), then timed in turn round after round so machine drift hits all alike.
Memory is the process's peak resident set (VmHWM): "train peak" is the peak over the timed steps
(VmHWM reset after the warm-up, so it counts the weights, optimizer state and the step's
activations, not the set-up), "process peak" the peak over its whole life, "baseline" the
resident set after the variant's imports, before its model exists (Python, torch, libraries).

  pocketlm full      the training loop's step (train/step.py) over every weight, AdamW
  pocketlm lora      the same step with LoRA on every decoder linear (model/lora.py, the surgery
                     and roles train/tasks/lora.py applies): the base frozen, A/B on AdamW
  pocketlm qlora     the same over an int4 base (quantized in memory before the warm-up)
  hf+peft lora       LlamaForCausalLM of the same shape, peft's get_peft_model(LoraConfig(...,
                     target_modules="all-linear")), forward with labels, backward, AdamW: the
                     loop a user writes with those two libraries
  hf full            the same transformers loop over every weight, for reference
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _status_mb(field: str, pid: int | str = "self") -> float:
    """A memory line of /proc/PID/status in MiB: VmHWM (peak resident set) or VmRSS (now)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Start VmHWM again from the current resident set (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")


def _model_config(spec: dict[str, Any]):
    from pocketlm.model.presets import preset_config

    return preset_config(spec["preset"], vocab_size=spec["vocab"], max_seq_len=spec["ctx"])


def _batch(spec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shape = (spec["batch"], spec["ctx"])
    return torch.randint(0, spec["vocab"], shape, generator=g), torch.randint(
        0, spec["vocab"], shape, generator=g
    )


def pocketlm_step(spec: dict[str, Any], mode: str) -> tuple[Callable[[], None], int]:
    """(one optimizer step of PocketLM's training loop, trainable parameters) for a mode:
    "full", "lora" or "qlora", each optionally "+ckpt" (activation checkpointing)."""
    checkpointing = mode.endswith("+ckpt")
    mode = mode.removesuffix("+ckpt")
    from pocketlm.model.lora import (
        LoRAConfig,
        apply_lora,
        cast_frozen_linears,
        lora_parameter_names,
        quantize_base,
    )
    from pocketlm.model.transformer import build_model
    from pocketlm.train.config import OptimConfig, ScheduleConfig, TrainConfig
    from pocketlm.train.plan import fixed_batch_task
    from pocketlm.train.roles import roles_by_structure
    from pocketlm.train.run import setup_run
    from pocketlm.train.step import optimizer_step
    from pocketlm.train.task import Role

    model = build_model(_model_config(spec))
    if mode == "full":
        roles = roles_by_structure(model, heads=[model.lm_head])
    else:
        lora = LoRAConfig(
            rank=spec["rank"],
            alpha=2.0 * spec["rank"],
            base_quant="int4" if mode == "qlora" else "none",
        )
        quantize_base(model, lora)
        apply_lora(model, lora.rank, lora.alpha, lora.targets)
        if spec["precision"] == "bf16":  # as train/tasks/lora.py's with_lora does
            cast_frozen_linears(model, torch.bfloat16)
        roles = {name: Role.ADAPTER for name in lora_parameter_names(model)}
    x, y = _batch(spec)
    factory = fixed_batch_task(model, x, y, roles=roles, name=f"bench-{mode}")

    config = TrainConfig(
        optim=OptimConfig(kind="adamw", lr=2e-4, weight_decay=0.0),
        schedule=ScheduleConfig(kind="constant"),
        batch_size=spec["batch"],
        ctx=spec["ctx"],
        budget="1000000 steps",
        precision=spec["precision"],
        device="cpu",
        compile="on" if spec["compile"] else "off",
        threads=spec["threads"],
        checkpoint_activations=checkpointing,
    )
    run = setup_run(
        factory,
        config,
        Path(tempfile.mkdtemp(prefix="finetune-speed-")),
        resume=False,
        command=None,
        now=time.perf_counter,
    )
    return (lambda: optimizer_step(run)), sum(p.numel() for p in run.params)


def hf_step(spec: dict[str, Any], mode: str) -> tuple[Callable[[], None], int]:
    """(one step of a plain transformers (+ peft) loop, trainable parameters): "full" or "lora",
    optionally "+ckpt" (transformers' gradient checkpointing, as peft users turn it on)."""
    checkpointing = mode.endswith("+ckpt")
    mode = mode.removesuffix("+ckpt")
    from transformers import LlamaConfig, LlamaForCausalLM

    c = _model_config(spec)
    hf_config = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.dim,
        intermediate_size=c.resolved_ffn_dim,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads,
        head_dim=c.resolved_head_dim,
        max_position_embeddings=c.max_seq_len,
        rope_theta=c.rope_theta,
        tie_word_embeddings=c.tie_embeddings,
    )
    hf_config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(hf_config)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=spec["rank"],
                lora_alpha=2 * spec["rank"],
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            ),
        )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    x, y = _batch(spec)
    bf16 = spec["precision"] == "bf16"

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=x, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in params)


_BUILDERS = {"pocketlm": pocketlm_step, "hf": hf_step}
# What each builder imports, loaded before the resident set is read as the process's baseline
_IMPORTS = {
    "pocketlm": ("pocketlm.train.run", "pocketlm.train.step", "pocketlm.model.lora"),
    "hf": ("transformers.models.llama.modeling_llama", "peft"),
}
VARIANTS = {
    "pocketlm full": ("pocketlm", "full"),
    "pocketlm lora": ("pocketlm", "lora"),
    "pocketlm qlora int4": ("pocketlm", "qlora"),
    "hf+peft lora": ("hf", "lora"),
    "hf full": ("hf", "full"),
    "pocketlm lora +ckpt": ("pocketlm", "lora+ckpt"),
    "pocketlm qlora int4 +ckpt": ("pocketlm", "qlora+ckpt"),
    "hf+peft lora +ckpt": ("hf", "lora+ckpt"),
}


def _worker(conn: Any, builder: str, mode: str, spec: dict[str, Any]) -> None:
    """Build one step, warm it up, then answer ("run", n) / ("memory",) / ("stop",)."""
    import gc
    import importlib
    import os

    os.environ["POCKETLM_NO_PROGRESS"] = "1"
    torch.set_num_threads(spec["threads"])
    for module in _IMPORTS[builder]:
        importlib.import_module(module)
    baseline = _status_mb("VmRSS")
    step, trainable = _BUILDERS[builder](spec, mode)
    gc.collect()
    t0 = time.perf_counter()
    for _ in range(2):  # warm-up: optimizer state, compilation, allocator pools
        step()
    conn.send((time.perf_counter() - t0, trainable, baseline))
    _reset_peak()
    while True:
        cmd = conn.recv()
        if cmd[0] == "run":
            t0 = time.perf_counter()
            for _ in range(cmd[1]):
                step()
            conn.send(time.perf_counter() - t0)
        elif cmd[0] == "memory":
            conn.send(_status_mb("VmHWM"))
        else:
            return


def measure(spec: dict[str, Any], names: list[str], rounds: int, steps: int) -> dict[str, Any]:
    """Interleaved tokens/s medians and peak memory of each variant."""
    ctx = mp.get_context("spawn")
    workers: dict[str, tuple[Any, Any]] = {}
    warmup: dict[str, float] = {}
    trainable: dict[str, int] = {}
    baseline: dict[str, float] = {}
    tokens = spec["batch"] * spec["ctx"] * steps
    try:
        for name in names:
            builder, mode = VARIANTS[name]
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, builder, mode, spec), daemon=True)
            proc.start()
            child.close()  # a worker that dies shows up as EOFError, not a hang
            warmup[name], trainable[name], baseline[name] = parent.recv()  # one at a time
            workers[name] = (proc, parent)
        samples: dict[str, list[float]] = {name: [] for name in workers}
        for _ in range(rounds):
            for name, (_proc, conn) in workers.items():
                time.sleep(0.2)  # let the last process's OpenMP threads stop spinning
                conn.send(("run", steps))
                samples[name].append(tokens / conn.recv())
        train_peak, process_peak = {}, {}
        for name, (proc, conn) in workers.items():
            conn.send(("memory",))
            train_peak[name] = round(conn.recv())
            process_peak[name] = round(_status_mb("VmHWM", proc.pid))
    finally:
        for proc, conn in workers.values():
            if proc.is_alive():
                conn.send(("stop",))
                proc.join(timeout=30)
    return {
        "tokens_per_s": {n: round(statistics.median(v), 1) for n, v in samples.items()},
        "train_peak_mb": train_peak,
        "process_peak_mb": process_peak,
        "baseline_mb": {n: round(v) for n, v in baseline.items()},  # after imports, no model
        "trainable_params": trainable,
        "warmup_s": {n: round(v, 1) for n, v in warmup.items()},
    }


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """The issue's comparisons, where both sides were measured."""
    tps, mem = result["tokens_per_s"], result["train_peak_mb"]
    pairs = {
        "lora/hf+peft tokens/s": ("pocketlm lora", "hf+peft lora", tps),
        "lora/hf+peft memory": ("pocketlm lora", "hf+peft lora", mem),
        "lora/full tokens/s": ("pocketlm lora", "pocketlm full", tps),
        "lora/full memory": ("pocketlm lora", "pocketlm full", mem),
        "qlora/full memory": ("pocketlm qlora int4", "pocketlm full", mem),
        "lora+ckpt/hf+peft memory": ("pocketlm lora +ckpt", "hf+peft lora", mem),
        "lora+ckpt/hf+peft+ckpt memory": ("pocketlm lora +ckpt", "hf+peft lora +ckpt", mem),
        "lora+ckpt/hf+peft tokens/s": ("pocketlm lora +ckpt", "hf+peft lora", tps),
        "lora+ckpt/hf+peft+ckpt tokens/s": ("pocketlm lora +ckpt", "hf+peft lora +ckpt", tps),
        "qlora+ckpt/full memory": ("pocketlm qlora int4 +ckpt", "pocketlm full", mem),
    }
    return {k: round(t[a] / t[b], 3) for k, (a, b, t) in pairs.items() if a in t and b in t}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="smollm2-135m", help="model shape (pocketlm presets)")
    p.add_argument("--vocab", type=int, default=49152, help="vocabulary size")
    p.add_argument("--batch", type=int, default=4, help="sequences per step")
    p.add_argument("--ctx", type=int, default=256, help="tokens per sequence")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 x rank)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile PocketLM's step")
    p.add_argument("--threads", type=int, default=0, help="threads per process (0: all cores)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    from pocketlm.common.device import usable_cores

    spec = {
        "preset": args.preset,
        "vocab": args.vocab,
        "batch": args.batch,
        "ctx": args.ctx,
        "rank": args.rank,
        "precision": args.precision,
        "compile": args.compile,
        "threads": args.threads or usable_cores(),
    }
    result = measure(spec, args.variants, args.rounds, args.steps)
    result["ratios"] = ratios(result)
    result["spec"] = spec
    try:
        from machine import describe_machine  # benchmarks/machine.py, beside this script

        result["machine"] = describe_machine()
    except ImportError:
        pass
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{spec}")
    print(
        f"{'variant':<22}{'tokens/s':>10}{'train peak MB':>15}{'process peak MB':>17}"
        f"{'baseline MB':>13}{'trainable':>12}"
    )
    for name in result["tokens_per_s"]:
        print(
            f"{name:<22}{result['tokens_per_s'][name]:>10}{result['train_peak_mb'][name]:>15}"
            f"{result['process_peak_mb'][name]:>17}{result['baseline_mb'][name]:>13}"
            f"{result['trainable_params'][name]:>12,}"
        )
    for key, value in result["ratios"].items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
