"""Speed and memory of a model on this machine: load time, prefill and decode tokens/s, time to
first token, peak memory and size — the library side of `pocketlm bench` (and of each variant
`pocketlm compare` measures, in its own process: open_bench, then timed_round per round).

The backend is driven directly (prompt of random ordinary tokens, then greedy decoding of exactly
`new_tokens` tokens, never stopping early), so the numbers are the forward pass's own speed.
Time to first token is the cold start: the load plus the first prefill.
"""

from __future__ import annotations

import random
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Clock = Callable[[], float]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux: its address space's own
    high-water mark, VmHWM; getrusage's ru_maxrss survives exec, so a worker spawned by a big
    parent would report the parent's size)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 1024 / 1024


@dataclass
class BenchTarget:
    """An opened model ready to time: its backend, the fixed prompt and the load time."""

    directory: Path
    backend: Any
    prompt: list[int]
    new_tokens: int
    load_s: float


def open_bench(
    model_dir: str | Path,
    *,
    prompt_tokens: int = 128,
    new_tokens: int = 64,
    backend: str = "auto",
    threads: int = 0,
    seed: int = 0,
    device: str = "cpu",
    precision: str = "auto",
    now: Clock = time.perf_counter,
) -> BenchTarget:
    """Open a model for timing (the load timed by `now`) with a seeded prompt of ordinary tokens."""
    from pocketlm.common.errors import InputError
    from pocketlm.engine.exported import exported_format
    from pocketlm.engine.load import open_backend
    from pocketlm.interop.open_model import model_dir as resolve

    # an exported model (ONNX directory, .gguf file) is opened as it is, by its own runtime
    directory = Path(model_dir) if exported_format(model_dir) else resolve(model_dir)
    t0 = now()
    model_backend, tokenizer = open_backend(
        directory,
        backend=backend,
        threads=threads,
        max_len=prompt_tokens + new_tokens,
        device=device,
        precision=precision,
    )
    load_s = now() - t0
    if prompt_tokens + new_tokens > model_backend.context_length:
        raise InputError(
            f"prompt ({prompt_tokens}) + new tokens ({new_tokens}) exceed the context of {model_backend.context_length}"
        )
    rng = random.Random(seed)
    ordinary = [i for i in range(tokenizer.vocab_size) if i not in tokenizer.special_ids]
    head = [tokenizer.bos_id] if tokenizer.add_bos else []
    prompt = head + [rng.choice(ordinary) for _ in range(prompt_tokens - len(head))]
    return BenchTarget(directory, model_backend, prompt, new_tokens, load_s)


def timed_round(target: BenchTarget, now: Clock = time.perf_counter) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one prefill of the prompt then exactly
    `new_tokens` greedy decoding steps, on slot 0 (released first)."""
    import numpy as np

    backend = target.backend
    backend.release(0)
    start = now()
    token = int(np.argmax(backend.prefill(0, target.prompt)))
    prefill_s = now() - start
    start = now()
    for _ in range(target.new_tokens):
        token = int(np.argmax(backend.decode((0,), (token,))[0]))
    return prefill_s, now() - start


def speed_summary(
    prompt_tokens: int,
    new_tokens: int,
    load_s: float,
    prefill_s: Sequence[float],
    decode_s: Sequence[float],
) -> dict[str, float]:
    """Load time, time to first token (load + first prefill), median prefill and decode tokens/s."""
    return {
        "load_s": round(load_s, 4),
        "time_to_first_token_s": round(load_s + prefill_s[0], 4),
        "prefill_tokens_per_s": round(prompt_tokens / statistics.median(prefill_s), 1),
        "decode_tokens_per_s": round(new_tokens / statistics.median(decode_s), 2),
    }


def bench_model(
    model_dir: str | Path,
    *,
    prompt_tokens: int = 128,
    new_tokens: int = 64,
    backend: str = "auto",
    threads: int = 0,
    repeats: int = 3,
    seed: int = 0,
    device: str = "cpu",
    precision: str = "auto",
) -> dict[str, Any]:
    """Measure one model; returns a dict of numbers (see module docstring)."""
    target = open_bench(
        model_dir,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        backend=backend,
        threads=threads,
        seed=seed,
        device=device,
        precision=precision,
    )
    rounds = [timed_round(target) for _ in range(repeats)]
    model_backend = target.backend
    return {
        "model": str(target.directory),
        "backend": model_backend.name,
        "isa": getattr(model_backend, "isa", None),  # native only
        "threads": getattr(model_backend, "threads", None),  # native only
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        **speed_summary(
            prompt_tokens, new_tokens, target.load_s, [p for p, _ in rounds], [d for _, d in rounds]
        ),
        "peak_memory_mb": round(peak_rss_mb(), 1),
        "model_bytes": _weights_bytes(_weights_file(target.directory)),
    }


def _weights_bytes(path: Path) -> int:
    """Bytes of a weights file, with an ONNX graph's external weights (model.onnx.data)."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def _weights_file(directory: Path) -> Path:
    """The file holding the model's weights: model.safetensors, or an exported model's file."""
    from pocketlm.checkpoint.layout import WEIGHTS_FILE
    from pocketlm.engine.exported import exported_format, exported_weights

    return exported_weights(directory) if exported_format(directory) else directory / WEIGHTS_FILE
