"""Serving under load on this machine: `pocketlm serve` with 1, 2, 4 and 8 concurrent streaming
clients; aggregate generated tokens/s and time to first token (p50 / p95) at each level.

    python benchmarks/serve_load.py                          # a random-initialised S model
    python benchmarks/serve_load.py --model runs/sft --slots 8 --requests 8 --max-tokens 128
    python benchmarks/serve_load.py --model DIR --concurrency 1 2 --requests 2   # a quick smoke run

The script starts the server itself (a subprocess on 127.0.0.1, continuous batching with
--slots sequences), waits for /health, sends one warm-up request, then for each concurrency level
runs that many client threads, each sending --requests streaming chat completions one after the
other (temperature 0.8, seeded, so replies rarely end early). Time to first token is measured on
the client, from sending the request to the first streamed text. Tokens/s is all completion tokens
of the level (from the streamed usage) divided by its wall time. Without --model, a model of the
S shape (dim 256, 8 layers, vocab 8192) with random weights is built once under --work (speed does
not depend on the values). Writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

S_SHAPE = dict(dim=256, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1024, vocab_size=8192)
PROMPT = "Tell me a story about a little robot who learns to paint."


def build_random_model(work: Path) -> Path:
    """A random-initialised S-shape model with a stdlib-trained tokenizer (reused when present)."""
    os.environ.setdefault("POCKETLM_NO_PROGRESS", "1")
    from pocketlm.checkpoint.model_io import save_model
    from pocketlm.data.build import build_corpus
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import build_model
    from pocketlm.tokenizer.train import TokenizerConfig, train_tokenizer

    work.mkdir(parents=True, exist_ok=True)
    tok, model = work / "tokenizer", work / "model-s"
    if not (tok / "manifest.json").exists():
        corpus = work / "corpus"
        if not (corpus / "manifest.json").exists():
            build_corpus(["stdlib"], corpus, overwrite=True)
        train_tokenizer(corpus, tok, TokenizerConfig(vocab_size=8192), overwrite=True)
    if not (model / "manifest.json").exists():
        config = ModelConfig(max_seq_len=2048, tie_embeddings=True, **S_SHAPE)
        save_model(model, build_model(config, seed=0), tok, overwrite=True)
    return model


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(
    model: Path, port: int, *, slots: int, backend: str, threads: int, max_len: int | None = None
) -> list[str]:
    """The `pocketlm serve` command line for one model on 127.0.0.1:port."""
    cmd = [sys.executable, "-m", "pocketlm", "serve", "--model", str(model), "--port", str(port)]
    cmd += ["--slots", str(slots), "--max-queue", "256", "--backend", backend]
    cmd += ["--threads", str(threads)]
    return cmd + (["--max-len", str(max_len)] if max_len else [])


def launch(cmd: list[str], port: int, name: str, timeout_s: float = 300) -> subprocess.Popen:
    """Start a server command, its log in a temp file; returns once /health answers."""
    # the server's log goes to a file: a pipe nobody reads fills up and blocks the server
    log_path = Path(tempfile.gettempdir()) / f"{name}-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    return wait_healthy(proc, port, timeout_s, log_path)


def start_server(args: argparse.Namespace, model: Path, port: int) -> subprocess.Popen:
    """`pocketlm serve` in a subprocess; returns once /health answers."""
    cmd = serve_command(model, port, slots=args.slots, backend=args.backend, threads=args.threads)
    return launch(cmd, port, "serve_load")


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server, killing it if it does not exit within 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_healthy(
    proc: subprocess.Popen, port: int, timeout_s: float = 300, log_path: Path | None = None
) -> subprocess.Popen:
    """`proc` once the server on 127.0.0.1:port answers /health (SystemExit if it never does)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}{_tail(log_path)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # also while it answers 503 (llama-server loading the model)
    proc.kill()
    raise SystemExit(f"the server did not come up within {timeout_s:g} s{_tail(log_path)}")


def _tail(log_path: Path | None, lines: int = 5) -> str:
    """': <the log's last lines> (in <log_path>)', or '' without a log."""
    if log_path is None:
        return ""
    text = log_path.read_text(errors="replace").strip().splitlines()[-lines:]
    return ": " + "\n".join(text) + f"\n(the whole log: {log_path})"


def stream_request(client: httpx.Client, path: str, body: dict) -> dict:
    """POST one streaming request (chat or text completion) and read its server-sent events:
    time to first text, completion tokens (the streamed usage, else the text chunks), prompt
    tokens, finish reason, total seconds."""
    start = time.perf_counter()
    first, usage, chunks, finish = None, None, 0, None
    with client.stream("POST", path, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"{path}: the stream ended with an error: {chunk['error']}")
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", ()):
                text = choice.get("text") or choice.get("delta", {}).get("content")
                if text:
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - start
                finish = choice.get("finish_reason") or finish
    return {
        "ttft_s": first,
        "tokens": usage["completion_tokens"] if usage else chunks,
        "prompt_tokens": usage.get("prompt_tokens") if usage else None,
        "finish_reason": finish,
        "seconds": time.perf_counter() - start,
    }


def one_request(client: httpx.Client, max_tokens: int, seed: int) -> dict:
    """One streaming chat completion: time to first text, completion tokens, total seconds."""
    body = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return stream_request(client, "/v1/chat/completions", body)


Send = Callable[[httpx.Client, int, int], dict]  # (client, worker, request number) -> result


def run_level(
    url: str,
    clients: int,
    requests: int,
    max_tokens: int,
    send: Send | None = None,
    keep_alive: bool = True,
) -> dict:
    """`clients` threads, each sending `requests` requests back to back (default: one_request),
    on one kept-alive connection each, or a new connection per request. A failed request is
    counted in the row's `errors` (its first message in `error`)."""
    send = send or (lambda client, w, r: one_request(client, max_tokens, seed=1000 * w + r))
    limits = httpx.Limits(max_keepalive_connections=None if keep_alive else 0)
    results: list[dict] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        with httpx.Client(base_url=url, timeout=600, limits=limits) as client:
            for r in range(requests):
                start = time.perf_counter()
                try:
                    out = send(client, w, r)
                except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                    seconds = time.perf_counter() - start
                    out = {"ttft_s": None, "tokens": 0, "seconds": seconds, "error": repr(exc)}
                with lock:
                    results.append(out)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarise(results, clients, time.perf_counter() - start)


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank q-quantile of `values` (None when empty)."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(results: list[dict], clients: int, wall: float) -> dict:
    """One level's row: total and per-client tokens/s, TTFT p50 / p95, from its requests."""
    ttfts = [r["ttft_s"] for r in results if r["ttft_s"] is not None]
    tokens = sum(r["tokens"] for r in results)
    per_request = [
        r["tokens"] / r["seconds"] for r in results if r["seconds"] > 0 and "error" not in r
    ]
    errors = [r["error"] for r in results if "error" in r]
    return {
        "clients": clients,
        "requests": len(results),
        "errors": len(errors),
        "error": errors[0] if errors else None,
        "completion_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "per_client_tokens_per_s": statistics.median(per_request) if per_request else 0.0,
        "ttft_p50_s": percentile(ttfts, 0.50),
        "ttft_p95_s": percentile(ttfts, 0.95),
    }


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, help="model directory (default: a random S model)")
    p.add_argument(
        "--work",
        type=Path,
        default=Path("runs/bench-serve"),
        help="where the random model is built",
    )
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--requests", type=int, default=4, help="requests per client at each level")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--slots", type=int, default=8, help="the server's --slots")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "native"])
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="native backend threads (0 = the server's default: all cores but one)",
    )
    p.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "serve_load.json"
    )
    args = p.parse_args()

    model = args.model or build_random_model(args.work)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, model, port)
    try:
        health = httpx.get(url + "/health", timeout=5).json()
        with httpx.Client(base_url=url, timeout=600) as client:
            one_request(client, 8, seed=0)  # warm-up
        table = []
        for clients in args.concurrency:
            row = run_level(url, clients, args.requests, args.max_tokens)
            table.append(row)
            print(
                f"{clients} clients: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        stop(proc)

    print(
        f"\nserve load: {model} ({health.get('backend')}, {health.get('slots')} slots, context {health.get('context_length')}), "
        f"{args.requests} requests/client, max_tokens {args.max_tokens}"
    )
    print(
        f"{'clients':>7}  {'tokens/s':>9}  {'per-client tok/s':>16}  {'TTFT p50 ms':>11}  {'TTFT p95 ms':>11}"
    )
    for row in table:
        print(
            f"{row['clients']:>7}  {row['tokens_per_s']:>9.1f}  {row['per_client_tokens_per_s']:>16.1f}  "
            f"{_fmt(row['ttft_p50_s'], 1000):>11}  {_fmt(row['ttft_p95_s'], 1000):>11}"
        )
    report = {
        "meta": {
            "model": str(model),
            "backend": health.get("backend"),
            "slots": health.get("slots"),
            "context_length": health.get("context_length"),
            "requests_per_client": args.requests,
            "max_tokens": args.max_tokens,
            "threads": args.threads,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        "results": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
