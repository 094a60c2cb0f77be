"""Training throughput on this machine: PocketLM vs a plain loop over transformers' LlamaForCausalLM
vs a nanoGPT-style GPT-2 loop, at the issue's two shapes, interleaved so drift hits all alike.

    python benchmarks/train_speed.py                  # both shapes, fp32 (+ bf16 where it pays)
    python benchmarks/train_speed.py --rounds 5 --steps 6 --json

Shapes (batch 16 x 256 tokens, byte-level BPE vocab 4096, tied embeddings):
    c1: 4 layers x 128, 4 heads        c2: 6 layers x 256, 8 heads
PocketLM uses its own model and training-step code (the default Muon + AdamW optimizers, or
AdamW alone; grad clipping; the same loss as `pocketlm pretrain`), eager and torch.compile'd.
"hf" is LlamaForCausalLM with the same shape and a plain loop (forward with labels, backward,
AdamW). "gpt2-ref" is a GPT-2 model in the style of nanoGPT (LayerNorm, GELU MLP 4x, learned
positions) written here for an in-run baseline. Every variant runs in its own process, timed in
turn round after round; PocketLM's with the malloc setting its training loop applies, the others
as a user runs them, plus "hf + malloc reuse" to show what that setting alone gives a plain loop.
PocketLM's attention runs on its own CPU kernels (model/native_attention.py); "pocketlm ... sdpa"
is the same step on PyTorch's SDPA flash kernel, to show what they are worth. Per shape it also
profiles PocketLM's AdamW step and reports the time of its matrix products (the same MKL kernels
every implementation runs) and attention kernels: tokens / that time is the ceiling no loop
around those kernels can pass, and its ratio over hf the largest in-run ratio they allow.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SHAPES = {"c1": dict(dim=128, n_layers=4, n_heads=4), "c2": dict(dim=256, n_layers=6, n_heads=8)}
VOCAB, CTX, BATCH = 4096, 256, 16
ANCHORS = {
    "c1": {"nanogpt_fp32": 8600, "nanogpt_bf16": 9500},
    "c2": {"nanogpt_fp32": 3100, "nanogpt_bf16": 4400},
}


# --- a nanoGPT-style GPT-2 reference (written for this benchmark) ---------------------------------
class _Block(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (
            z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v)
        )  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT2Ref(nn.Module):
    def __init__(self, d: int, n_layers: int, h: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, d), nn.Embedding(CTX, d)
        self.blocks = nn.ModuleList(_Block(d, h) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))


# --- step builders ----------------------------------------------------------------------------------
def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, VOCAB, (BATCH, CTX), generator=g), torch.randint(
        0, VOCAB, (BATCH, CTX), generator=g
    )


def _batch_task(model: nn.Module):
    """A TrainTask factory over one fixed batch (the data loader is not what is measured)."""
    from pocketlm.train.plan import fixed_batch_task

    x, y = _batch()
    return fixed_batch_task(model, x, y, name="bench")


def pocketlm_step(
    shape: str, precision: str, compiled: bool, optimizer: str = "muon", attention: str = "auto"
) -> Callable[[], None]:
    """One optimizer step of PocketLM's training loop itself (train/step.py), set up by the loop."""
    import tempfile

    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import build_model, set_attention_kernel
    from pocketlm.train.config import OptimConfig, TrainConfig
    from pocketlm.train.run import setup_run
    from pocketlm.train.step import optimizer_step

    s = SHAPES[shape]
    config = ModelConfig(vocab_size=VOCAB, max_seq_len=CTX, n_kv_heads=s["n_heads"], **s)
    model = build_model(config)
    set_attention_kernel(model, attention)  # "auto": PocketLM's CPU attention kernels, as training
    train_config = TrainConfig(
        optim=OptimConfig(kind=optimizer),
        batch_size=BATCH,
        ctx=CTX,
        budget="1000000 steps",
        precision=precision,
        device="cpu",
        compile="on" if compiled else "off",
    )
    run = setup_run(
        _batch_task(model),
        train_config,
        Path(tempfile.mkdtemp(prefix="train-speed-")),
        resume=False,
        command=None,
        now=time.perf_counter,
    )
    return lambda: optimizer_step(run)


def round1_step(shape: str, precision: str, compiled: bool) -> Callable[[], None]:
    """Round 1's training step (mean loss, no target count, no gradient scaling), kept to show
    the loop's rewrite costs nothing: same model, optimizers and loss kernel."""
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import build_model
    from pocketlm.train.config import OptimConfig
    from pocketlm.train.optim import build_optimizers
    from pocketlm.train.roles import roles_by_structure
    from pocketlm.train.task import autocast_context

    s = SHAPES[shape]
    config = ModelConfig(vocab_size=VOCAB, max_seq_len=CTX, n_kv_heads=s["n_heads"], **s)
    model = build_model(config)
    roles = roles_by_structure(model, heads=[model.lm_head])
    device = torch.device("cpu")
    optimizers = build_optimizers(
        [(n, p, roles[n]) for n, p in model.named_parameters()], OptimConfig(kind="muon"), device
    )
    params = [p for o in optimizers for g in o.param_groups for p in g["params"]]
    autocast = autocast_context(device, precision)
    x, y = _batch()

    def loss_fn(m: nn.Module, xy: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return m(xy[0], targets=xy[1])

    fn = torch.compile(loss_fn) if compiled else loss_fn

    def step() -> None:
        with autocast:
            loss = fn(model, (x, y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for o in optimizers:
            o.step()
            o.zero_grad(set_to_none=True)

    return step


def hf_step(shape: str, precision: str) -> Callable[[], None]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from pocketlm.model.config import ModelConfig

    s = SHAPES[shape]
    ffn = ModelConfig(
        vocab_size=VOCAB, max_seq_len=CTX, n_kv_heads=s["n_heads"], **s
    ).resolved_ffn_dim
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=s["dim"],
        intermediate_size=ffn,
        num_hidden_layers=s["n_layers"],
        num_attention_heads=s["n_heads"],
        num_key_value_heads=s["n_heads"],
        max_position_embeddings=CTX,
        tie_word_embeddings=True,
    )
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, _ = _batch()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def gpt2_step(shape: str, precision: str) -> Callable[[], None]:
    s = SHAPES[shape]
    model = GPT2Ref(s["dim"], s["n_layers"], s["n_heads"])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.95),
    )
    x, y = _batch()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


# The step's irreducible kernels: the matrix products (the same MKL kernels every implementation
# runs at the same sizes) and the attention (PyTorch's flash kernel in the other loops, PocketLM's
# own where it applies). Their time (self time in the profiler) bounds what any loop around them
# can reach.
_FLOOR_OPS = {
    "aten::mm",
    "aten::addmm",
    "aten::addmm_",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "pocketlm::causal_attention",
    "pocketlm::causal_attention_backward",
}


def kernel_floor_s(step: Callable[[], None], steps: int = 2, repeats: int = 5) -> float:
    """Seconds per step spent in matrix products and attention kernels: each kernel (by name and
    input shapes) counted at its least time over `repeats` profiles, since a noisy machine only
    ever adds time and one disturbed profile should not move the sum."""
    from torch.profiler import ProfilerActivity, profile

    least_us: dict[tuple[str, str], float] = {}
    for _ in range(repeats):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(steps):
                step()
        for e in prof.key_averages(group_by_input_shape=True):
            if e.key in _FLOOR_OPS:
                key = (e.key, str(e.input_shapes))
                least_us[key] = min(least_us.get(key, float("inf")), e.self_cpu_time_total)
    return sum(least_us.values()) / 1e6 / steps


# --- one process per variant ----------------------------------------------------------------------
# Each loop runs in its own process, as it would for a user: PocketLM's with the malloc setting its
# training loop applies (freed memory reused), the others with the C library's defaults; an extra
# "hf ... + malloc reuse" variant shows what that setting alone gives a plain loop. The parent
# times the processes in turn, round after round, so machine drift hits every variant alike.
_BUILDERS: dict[str, Callable[..., Callable[[], None]]] = {
    "pocketlm": pocketlm_step,
    "round1": round1_step,
    "hf": hf_step,
    "gpt2": gpt2_step,
}


def _worker(conn: Any, builder: str, args: tuple, reuse_memory: bool) -> None:
    """Build one step function, warm it up, then answer ("run", n) / ("floor",) / ("stop",)."""
    import os

    os.environ["POCKETLM_NO_PROGRESS"] = "1"  # the loop's set-up would draw a progress bar
    if reuse_memory:
        from pocketlm.common.allocator import reuse_freed_memory

        reuse_freed_memory()
    step = _BUILDERS[builder](*args)
    t0 = time.perf_counter()
    for _ in range(2):  # warm-up, including torch.compile
        step()
    conn.send(time.perf_counter() - t0)
    while True:
        cmd = conn.recv()
        if cmd[0] == "run":
            t0 = time.perf_counter()
            for _ in range(cmd[1]):
                step()
            conn.send(time.perf_counter() - t0)
        elif cmd[0] == "floor":
            conn.send(kernel_floor_s(step))
        else:
            return


def _variants(shape: str, with_bf16: bool) -> dict[str, tuple[str, tuple, bool]]:
    """name -> (builder, builder args, reuse freed memory)."""
    v = {
        "pocketlm fp32 muon (compiled)": ("pocketlm", (shape, "fp32", True), True),
        # round 1's step code beside the loop's own step: the rewrite must cost nothing
        "round-1 step fp32 muon (compiled)": ("round1", (shape, "fp32", True), True),
        "pocketlm fp32 adamw (compiled)": ("pocketlm", (shape, "fp32", True, "adamw"), True),
        # the same step with PyTorch's SDPA attention: what PocketLM's attention kernels are worth
        "pocketlm fp32 adamw sdpa (compiled)": (
            "pocketlm",
            (shape, "fp32", True, "adamw", "sdpa"),
            True,
        ),
        "pocketlm fp32 muon (eager)": ("pocketlm", (shape, "fp32", False), True),
        "hf llama fp32": ("hf", (shape, "fp32"), False),
        "hf llama fp32 + malloc reuse": ("hf", (shape, "fp32"), True),
        "gpt2-ref fp32": ("gpt2", (shape, "fp32"), False),
    }
    if with_bf16:
        v["pocketlm bf16 (compiled)"] = ("pocketlm", (shape, "bf16", True), True)
        v["hf llama bf16"] = ("hf", (shape, "bf16"), False)
        v["gpt2-ref bf16"] = ("gpt2", (shape, "bf16"), False)
    return v


def measure_shape(shape: str, rounds: int, steps: int, with_bf16: bool) -> dict[str, Any]:
    """Interleaved tokens/s medians, warm-up times and the kernel floor of the best PocketLM step."""
    ctx = mp.get_context("spawn")
    workers: dict[str, tuple[Any, Any]] = {}
    warmup_s: dict[str, float] = {}
    try:
        for name, (builder, args, reuse) in _variants(shape, with_bf16).items():
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, builder, args, reuse), daemon=True)
            proc.start()
            child.close()  # so a worker that dies shows up here as EOFError, not a hang
            warmup_s[name] = round(parent.recv(), 1)  # one at a time: warm-ups do not overlap
            workers[name] = (proc, parent)
        samples: dict[str, list[float]] = {name: [] for name in workers}
        for _ in range(rounds):
            for name, (_proc, conn) in workers.items():
                time.sleep(0.2)  # let the last process's OpenMP threads stop spinning
                conn.send(("run", steps))
                samples[name].append(BATCH * CTX * steps / conn.recv())
        med = {name: round(statistics.median(v)) for name, v in samples.items()}
        best = max((k for k in med if k.startswith("pocketlm")), key=med.__getitem__)
        loop_vs_round1 = [
            a / b
            for a, b in zip(
                samples["pocketlm fp32 muon (compiled)"],
                samples["round-1 step fp32 muon (compiled)"],
                strict=True,
            )
        ]
        # The floor is taken on the AdamW step: Muon's Newton-Schulz products are optimizer work
        # the other loops do not do, and would inflate "the kernels every loop runs".
        workers["pocketlm fp32 adamw (compiled)"][1].send(("floor",))
        floor_s = workers["pocketlm fp32 adamw (compiled)"][1].recv()
    finally:
        for proc, conn in workers.values():
            if proc.is_alive():
                conn.send(("stop",))
                proc.join(timeout=30)
    return {
        "tokens_per_s": med,
        "warmup_s": warmup_s,
        "best": best,
        "floor_s": floor_s,
        "loop_vs_round1_per_round": [round(r, 3) for r in loop_vs_round1],
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shapes", nargs="+", default=list(SHAPES))
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    p.add_argument(
        "--bf16", choices=["auto", "yes", "no"], default="auto", help="also measure bf16 autocast"
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    from pocketlm.common.device import cpu_supports_bf16

    with_bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and cpu_supports_bf16())
    results: dict[str, dict] = {}
    for shape in args.shapes:
        m = measure_shape(shape, args.rounds, args.steps, with_bf16)
        med = m["tokens_per_s"]
        best_ours = med[m["best"]]
        best_fp32 = max(v for k, v in med.items() if k.startswith("pocketlm fp32"))
        hf_plain = max(v for k, v in med.items() if k.startswith("hf") and "malloc" not in k)
        hf_reuse = med["hf llama fp32 + malloc reuse"]
        ref_best = max(v for k, v in med.items() if k.startswith("gpt2-ref"))
        anchor_best = max(ANCHORS[shape].values())
        ceiling = BATCH * CTX / m["floor_s"]
        results[shape] = {
            "tokens_per_s": med,
            "warmup_s": m["warmup_s"],
            "best": m["best"],
            "ratio_vs_hf_in_run": round(best_ours / hf_plain, 2),
            "ratio_vs_hf_with_malloc_reuse": round(best_fp32 / hf_reuse, 2),  # both fp32
            "ratio_vs_gpt2_ref_in_run": round(best_ours / ref_best, 2),
            "ratio_vs_nanogpt_anchor_best": round(best_ours / anchor_best, 2),
            # the same round's samples paired: the loop's step over round 1's step code
            "loop_step_vs_round1_step": round(statistics.median(m["loop_vs_round1_per_round"]), 3),
            "loop_step_vs_round1_step_per_round": m["loop_vs_round1_per_round"],
            "ratio_native_attention_vs_sdpa": round(
                med["pocketlm fp32 adamw (compiled)"] / med["pocketlm fp32 adamw sdpa (compiled)"],
                2,
            ),
            # matmul + attention time of PocketLM's best step: no loop around these kernels can
            # pass tokens / floor, so that over hf is the largest ratio this machine allows.
            "kernel_floor_ms_per_step": round(m["floor_s"] * 1000, 1),
            "kernel_share_of_step": round(m["floor_s"] * best_ours / (BATCH * CTX), 2),
            "ceiling_tokens_per_s": round(ceiling),
            "ceiling_ratio_vs_hf": round(ceiling / hf_plain, 2),
            "ceiling_ratio_vs_hf_with_malloc_reuse": round(ceiling / hf_reuse, 2),
            "ceiling_ratio_vs_nanogpt_anchor_best": round(ceiling / anchor_best, 2),
        }
        if not args.json:
            r = results[shape]
            print(f"\n{shape}: {SHAPES[shape]}, batch {BATCH}x{CTX}, vocab {VOCAB}")
            for name, v in med.items():
                print(f"  {name:<36} {v:>7,} tok/s   (warm-up {m['warmup_s'][name]} s)")
            print(
                f"  PocketLM best / hf: {r['ratio_vs_hf_in_run']}x (/ hf + malloc reuse: "
                f"{r['ratio_vs_hf_with_malloc_reuse']}x)   / gpt2-ref: {r['ratio_vs_gpt2_ref_in_run']}x"
                f"   / nanoGPT anchor {anchor_best:,}: {r['ratio_vs_nanogpt_anchor_best']}x"
                f"   native attention / sdpa: {r['ratio_native_attention_vs_sdpa']}x"
            )
            print(
                f"  the loop's step / round 1's step code: {r['loop_step_vs_round1_step']}x "
                f"(per round: {r['loop_step_vs_round1_step_per_round']})"
            )
            print(
                f"  matmul + attention kernels: {r['kernel_floor_ms_per_step']} ms of the best step "
                f"({r['kernel_share_of_step']:.0%}); with nothing else the step would reach "
                f"{r['ceiling_tokens_per_s']:,} tok/s = {r['ceiling_ratio_vs_hf']}x hf "
                f"({r['ceiling_ratio_vs_hf_with_malloc_reuse']}x hf + malloc reuse), "
                f"{r['ceiling_ratio_vs_nanogpt_anchor_best']}x the nanoGPT anchor"
            )
    from machine import describe_machine

    meta = {**describe_machine(), "threads": torch.get_num_threads()}
    out = {"meta": meta, "results": results}
    Path(__file__).resolve().parent.joinpath("results").mkdir(exist_ok=True)
    Path(__file__).resolve().parent.joinpath("results", "train_speed.json").write_text(
        json.dumps(out, indent=2)
    )
    if args.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
