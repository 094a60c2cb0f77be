"""Serving against llama.cpp: `pocketlm serve` vs llama.cpp's own `llama-server` on the same
weights, the same number of slots and threads, at 1, 4 and 8 concurrent streaming clients;
aggregate completion tokens/s and time to first token (p50 / p95) at each level, and the ratios.

    python benchmarks/serve_vs_llama.py                        # a random-initialised S model, int4
    python benchmarks/serve_vs_llama.py --model runs/L --precision int4
    python benchmarks/serve_vs_llama.py --concurrency 1 4 --requests 2 --rounds 1 --max-tokens 16

Both servers run side by side on 127.0.0.1 (their idle CPU time is recorded per level, as a check
that the idle one stays out of the way). PocketLM serves the model at --precision (a float
--model is quantized with `pocketlm quantize`; a quantized one is served as it is) on the native
backend; llama-server serves the GGUF `pocketlm export gguf` writes from that same directory
(fp32 / bf16 / int8 / int4 -> F32 / BF16 / Q8_0 / Q4_0; int4 -> Q4_0 is bit for bit), with
`-np SLOTS -c SLOTS*CTX -t THREADS`, against `pocketlm serve --slots SLOTS --max-len CTX
--threads THREADS`. Derived models and GGUF files are kept under --work/derived, keyed by the
model's manifest, and reused.

Every request is a streaming /v1/completions with a raw prompt (no chat template on either side),
greedy (temperature 0), `ignore_eos` (llama-server honours it; PocketLM ignores unknown fields),
max_tokens tokens, on a new connection (this llama-server sometimes drops a kept-alive
connection right after a streamed response). Request k of a level gets the same prompt on both
servers, tagged with its round, level and number at its start, so llama-server's prompt cache
cannot reuse an earlier request's prompt. Levels run interleaved (PocketLM 1, llama 1,
PocketLM 4, ...; each round alternates which goes first). Time to first token is measured on the
client, from sending the request to the first streamed text; tokens/s is all completion tokens
of a level (from the streamed usage) over its wall time, summed over rounds. Requests that ended
before max_tokens (a model can stop early at an end-of-sequence token on PocketLM's side) or
failed are counted and reported. Writes benchmarks/results/serve_vs_llama.json with the machine
(machine.describe_machine()).

llama-server (--llama-server) is built from the llama.cpp sources vendored in the
llama-cpp-python sdist the parity tests use (0.3.36), out of tree, e.g.:

    cmake -S llama_cpp_python-0.3.36/vendor/llama.cpp -B /tmp/llama-build -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF
    cmake --build /tmp/llama-build --target llama-server llama-bench -j 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from infer_shapes import PRECISIONS  # ours -> llama.cpp's type, as in the speed benchmark
from serve_load import (
    PROMPT,
    build_random_model,
    free_port,
    launch,
    percentile,
    run_level,
    serve_command,
    stop,
    stream_request,
)

SERVERS = ("pocketlm", "llama")
DEFAULT_LLAMA_SERVER = Path("/tmp/llama-build/bin/llama-server")


def _pocketlm(*args: str) -> None:
    """Run one `pocketlm` command in a subprocess (SystemExit naming it if it fails)."""
    cmd = [sys.executable, "-m", "pocketlm", *args]
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")


def prepare(model: Path, precision: str, work: Path) -> tuple[Path, Path, str]:
    """(PocketLM directory to serve, its GGUF file, the precision served), made once and reused.

    A float model is quantized to `precision`; a quantized one is served at its own scheme."""
    from pocketlm.checkpoint.weights_spec import read_quantization

    scheme = read_quantization(model)["scheme"]
    if scheme != "none":
        if precision != scheme:
            print(f"{model} is {scheme}: served as it is, not at {precision}", file=sys.stderr)
        precision = scheme
    key = hashlib.sha256((model / "manifest.json").read_bytes()).hexdigest()[:10]
    derived = work / "derived" / f"{model.name}-{key}"
    served = model if precision in ("fp32", scheme) else derived / precision
    if not (served / "manifest.json").exists():
        _pocketlm("quantize", "--model", str(model), "--scheme", precision, "--out", str(served))
    gguf = derived / f"{precision}-{PRECISIONS[precision]}.gguf"
    if not gguf.exists():
        gguf.parent.mkdir(parents=True, exist_ok=True)
        args = ["--model", str(served), "--out", str(gguf), "--type", PRECISIONS[precision]]
        _pocketlm("export", "gguf", *args)
    return served, gguf, precision


def llama_command(binary: Path, gguf: Path, port: int, slots: int, ctx: int, threads: int) -> list:
    """llama-server on 127.0.0.1:port with `slots` sequences of `ctx` tokens each."""
    cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    return [*cmd, "-np", str(slots), "-c", str(slots * ctx), "-t", str(threads)]


def llama_version(binary: Path) -> str:
    """What `llama-server --version` prints (version and compiler, on stderr)."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    return "; ".join((out.stderr + out.stdout).strip().splitlines())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc (0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def completion_sender(
    prompt: str, max_tokens: int, tag: str, requests: int, log: list[dict]
) -> Callable[[httpx.Client, int, int], dict]:
    """A run_level `send`: request k = w * requests + r gets the prompt "<tag>.k: <prompt>"
    (a tag per level and round: no prompt repeats, so no server reuses a cached one); every
    result, a failure too, is also appended to `log`."""

    def send(client: httpx.Client, w: int, r: int) -> dict:
        k = w * requests + r
        body = {
            "prompt": f"{tag}.{k}: {prompt}",
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,  # llama-server's and vLLM's extension
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            out = stream_request(client, "/v1/completions", body) | {"request": k}
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            log.append({"request": k, "error": repr(exc), "ttft_s": None, "tokens": 0})
            raise
        log.append(out)
        return out

    return send


def pooled(rounds: list[dict], requests: list[dict], max_tokens: int) -> dict:
    """One server's level over all rounds: tokens over summed wall time, pooled TTFT quantiles."""
    tokens = sum(r["completion_tokens"] for r in rounds)
    wall = sum(r["wall_s"] for r in rounds)
    ttfts = [q["ttft_s"] for q in requests if q["ttft_s"] is not None]
    done = [q for q in requests if "error" not in q]
    return {
        "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "tokens_per_s_rounds": [r["tokens_per_s"] for r in rounds],
        "per_client_tokens_per_s": [r["per_client_tokens_per_s"] for r in rounds],
        "ttft_p50_s": percentile(ttfts, 0.50),
        "ttft_p95_s": percentile(ttfts, 0.95),
        "requests": len(requests),
        "errors": len(requests) - len(done),
        "first_error": next((q["error"] for q in requests if "error" in q), None),
        "completion_tokens": tokens,
        "short_requests": sum(q["tokens"] < max_tokens for q in done),
        "prompt_tokens": sorted({q["prompt_tokens"] for q in done} - {None}),
        "server_cpu_s": sum(r["cpu_s"]["self"] for r in rounds),
        "other_server_idle_cpu_s": sum(r["cpu_s"]["other"] for r in rounds),
    }


def measure(args: argparse.Namespace, urls: dict, procs: dict) -> dict[int, dict[str, dict]]:
    """Every level on both servers, interleaved, for --rounds rounds: {level: {server: row}}."""
    rows: dict[int, dict[str, list]] = {c: {s: [] for s in SERVERS} for c in args.concurrency}
    logs: dict[int, dict[str, list]] = {c: {s: [] for s in SERVERS} for c in args.concurrency}
    for rnd in range(args.rounds):
        for clients in args.concurrency:
            order = SERVERS if rnd % 2 == 0 else SERVERS[::-1]
            for server in order:
                other = next(s for s in SERVERS if s != server)
                cpu0 = {s: cpu_seconds(procs[s].pid) for s in SERVERS}
                log = logs[clients][server]
                tag = f"{rnd + 1}.{clients}"
                send = completion_sender(args.prompt, args.max_tokens, tag, args.requests, log)
                # a new connection per request: the vendored llama-server closes the connection
                # after every streamed response while announcing keep-alive, so a client's next
                # request on it can race the close ("Server disconnected without sending a
                # response"); both servers get the same treatment
                row = run_level(
                    urls[server], clients, args.requests, args.max_tokens, send, keep_alive=False
                )
                used = {s: cpu_seconds(procs[s].pid) - cpu0[s] for s in SERVERS}
                row["cpu_s"] = {"self": used[server], "other": used[other]}
                rows[clients][server].append(row)
                print(
                    f"round {rnd + 1} {server:>8} {clients} clients: "
                    f"{row['tokens_per_s']:.1f} tok/s, TTFT p95 "
                    f"{_ms(row['ttft_p95_s'])} ms, {row['completion_tokens']} tokens, "
                    f"{row['errors']} failed, "
                    f"idle {other} used {used[other]:.2f} CPU s",
                    file=sys.stderr,
                    flush=True,
                )
    return {
        c: {s: pooled(rows[c][s], logs[c][s], args.max_tokens) for s in SERVERS}
        for c in args.concurrency
    }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}×"


def markdown(results: dict[int, dict[str, dict]]) -> str:
    """The comparison table: tokens/s, TTFT p50 / p95 of each server, ratios PocketLM / llama."""
    lines = [
        "| clients | PocketLM tok/s | llama-server tok/s | tok/s ratio (goal ≥ 1) "
        "| PocketLM TTFT p50 / p95 ms | llama-server TTFT p50 / p95 ms "
        "| p95 TTFT ratio (goal < 1) |",
        "|---|---|---|---|---|---|---|",
    ]
    for clients, r in results.items():
        p, q = r["pocketlm"], r["llama"]
        lines.append(
            f"| {clients} | {p['tokens_per_s']:.1f} | {q['tokens_per_s']:.1f} | "
            f"{_ratio(p['tokens_per_s'], q['tokens_per_s'])} | "
            f"{_ms(p['ttft_p50_s'])} / {_ms(p['ttft_p95_s'])} | "
            f"{_ms(q['ttft_p50_s'])} / {_ms(q['ttft_p95_s'])} | "
            f"{_ratio(p['ttft_p95_s'], q['ttft_p95_s'])} |"
        )
    return "\n".join(lines)


def warnings(results: dict[int, dict[str, dict]], max_tokens: int) -> list[str]:
    """What makes a level's comparison unequal: short replies, prompts tokenized differently, an
    idle server using CPU."""
    out = []
    for clients, r in results.items():
        for server, row in r.items():
            if row["errors"]:
                out.append(
                    f"{clients} clients, {server}: {row['errors']} of {row['requests']} requests "
                    f"failed ({row['first_error']})"
                )
            if row["short_requests"]:
                out.append(
                    f"{clients} clients, {server}: {row['short_requests']} of {row['requests']} "
                    f"requests ended before {max_tokens} tokens"
                )
            idle = row["other_server_idle_cpu_s"]
            if idle > max(0.05, 0.05 * row["server_cpu_s"]):  # /proc counts in 10 ms ticks
                out.append(
                    f"{clients} clients: while {server} ran, the idle server used {idle:.2f} "
                    f"CPU s (it used {row['server_cpu_s']:.2f})"
                )
        if r["pocketlm"]["prompt_tokens"] != r["llama"]["prompt_tokens"]:
            out.append(
                f"{clients} clients: prompt lengths differ (PocketLM "
                f"{r['pocketlm']['prompt_tokens']}, llama {r['llama']['prompt_tokens']} tokens)"
            )
    return out


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    from pocketlm.common.device import usable_cores

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, help="model directory (default: a random S model)")
    p.add_argument("--work", type=Path, default=Path("runs/bench-serve"))
    p.add_argument("--precision", choices=list(PRECISIONS), default="int4")
    p.add_argument("--llama-server", type=Path, default=DEFAULT_LLAMA_SERVER)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--requests", type=int, default=4, help="requests per client at each level")
    p.add_argument("--rounds", type=int, default=3, help="interleaved passes over the levels")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--slots", type=int, default=8, help="sequences decoded together, both servers")
    p.add_argument(
        "--ctx", type=int, help="context per slot in tokens (default: the model's, at most 2048)"
    )
    p.add_argument(
        "--threads", type=int, default=usable_cores(), help="decode threads, both servers"
    )
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "serve_vs_llama.json",
    )
    return p.parse_args()


def main() -> None:
    os.environ.setdefault("POCKETLM_NO_PROGRESS", "1")
    args = parse_args()
    if not args.llama_server.exists():
        raise SystemExit(f"{args.llama_server} not found: build llama-server, see --help")
    from machine import describe_machine

    machine = describe_machine()  # before the servers start: it measures bandwidth and matmuls
    model = args.model or build_random_model(args.work)
    if not (model / "manifest.json").exists():
        raise SystemExit(f"{model} is not a PocketLM model directory (no manifest.json)")
    served, gguf, precision = prepare(model, args.precision, args.work)
    from pocketlm.checkpoint.layout import CONFIG_FILE

    config = json.loads((served / CONFIG_FILE).read_text(encoding="utf-8"))
    args.ctx = args.ctx or min(2048, config["max_seq_len"])
    ports = {s: free_port() for s in SERVERS}
    urls = {s: f"http://127.0.0.1:{p}" for s, p in ports.items()}
    pocket_cmd = serve_command(
        served,
        ports["pocketlm"],
        slots=args.slots,
        backend="native",
        threads=args.threads,
        max_len=args.ctx,
    )
    llama_cmd = llama_command(
        args.llama_server, gguf, ports["llama"], args.slots, args.ctx, args.threads
    )
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["pocketlm"] = launch(pocket_cmd, ports["pocketlm"], "serve_vs_llama-pocketlm")
        procs["llama"] = launch(llama_cmd, ports["llama"], "serve_vs_llama-llama")
        health = httpx.get(urls["pocketlm"] + "/health", timeout=5).json()
        for s in SERVERS:  # warm-up
            with httpx.Client(base_url=urls[s], timeout=600) as client:
                completion_sender(args.prompt, 8, "warm-up", 1, [])(client, 0, 0)
        results = measure(args, urls, procs)
    finally:
        for proc in procs.values():
            stop(proc)

    table = markdown(results)
    notes = warnings(results, args.max_tokens)
    print(
        f"\nserve vs llama-server: {served} ({precision}, PocketLM {health.get('backend')}) and "
        f"{gguf.name}; {args.slots} slots x {args.ctx} tokens, {args.threads} threads, "
        f"{args.requests} requests/client x {args.rounds} rounds, max_tokens {args.max_tokens}\n"
    )
    print(table)
    for note in notes:
        print(f"warning: {note}")
    report = {
        "meta": {
            "model": str(model),
            "served": str(served),
            "precision": precision,
            "gguf": str(gguf),
            "pocketlm_backend": health.get("backend"),
            "pocketlm_context_length": health.get("context_length"),
            "pocketlm_command": pocket_cmd,
            "llama_command": llama_cmd,
            "llama_server_version": llama_version(args.llama_server),
            "slots": args.slots,
            "ctx": args.ctx,
            "threads": args.threads,
            "requests_per_client": args.requests,
            "rounds": args.rounds,
            "max_tokens": args.max_tokens,
            "prompt": args.prompt,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        "machine": machine,
        "results": {str(c): r for c, r in results.items()},
        "table": table,
        "warnings": notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
