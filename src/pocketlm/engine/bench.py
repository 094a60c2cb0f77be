"""Speed and memory of a model on this machine: load time, prefill and decode tokens/s, time to
first token, peak memory and size — the library side of `pocketlm bench`.

The backend is driven directly (prompt of random ordinary tokens, then greedy decoding of exactly
`new_tokens` tokens, never stopping early), so the numbers are the forward pass's own speed.
"""

from __future__ import annotations

import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 1024 / 1024


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
    import numpy as np

    from pocketlm.checkpoint.layout import WEIGHTS_FILE
    from pocketlm.common.errors import InputError
    from pocketlm.engine.load import open_backend
    from pocketlm.interop.open_model import model_dir as resolve

    directory = resolve(model_dir)
    t0 = time.perf_counter()
    model_backend, tokenizer = open_backend(
        directory,
        backend=backend,
        threads=threads,
        max_len=prompt_tokens + new_tokens,
        device=device,
        precision=precision,
    )
    load_s = time.perf_counter() - t0
    if prompt_tokens + new_tokens > model_backend.context_length:
        raise InputError(
            f"prompt ({prompt_tokens}) + new tokens ({new_tokens}) exceed the context of {model_backend.context_length}"
        )
    rng = random.Random(seed)
    ordinary = [i for i in range(tokenizer.vocab_size) if i not in tokenizer.special_ids]
    head = [tokenizer.bos_id] if tokenizer.add_bos else []
    prompt = head + [rng.choice(ordinary) for _ in range(prompt_tokens - len(head))]
    prefill_s, decode_s, ttft_s = [], [], None
    for r in range(repeats):
        model_backend.release(0)
        start = time.perf_counter()
        logits = model_backend.prefill(0, prompt)
        token = int(np.argmax(logits))
        prefill_s.append(time.perf_counter() - start)
        if r == 0:
            ttft_s = load_s + prefill_s[0]
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = int(np.argmax(model_backend.decode((0,), (token,))[0]))
        decode_s.append(time.perf_counter() - start)
    weights = directory / WEIGHTS_FILE
    return {
        "model": str(directory),
        "backend": model_backend.name,
        "isa": getattr(model_backend, "isa", None),  # native only
        "threads": getattr(model_backend, "threads", None),  # native only
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "load_s": round(load_s, 4),
        "time_to_first_token_s": round(ttft_s or 0.0, 4),
        "prefill_tokens_per_s": round(prompt_tokens / statistics.median(prefill_s), 1),
        "decode_tokens_per_s": round(new_tokens / statistics.median(decode_s), 2),
        "peak_memory_mb": round(peak_rss_mb(), 1),
        "model_bytes": weights.stat().st_size,
    }
