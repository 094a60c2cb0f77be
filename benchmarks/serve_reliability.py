"""What `pocketlm serve` answers to hostile or careless clients, measured on 127.0.0.1: a lone
surrogate, a cross-origin text/plain POST, a foreign Host (DNS rebinding), a broken request line,
a 1 MB prompt, and a new client while --half-sent connections hold half-sent requests under an
open-files limit of --open-files.

    python benchmarks/serve_reliability.py --model runs/sft
    python benchmarks/serve_reliability.py --model runs/sft --src ../main/src --label main

The server runs in a subprocess (its stderr goes to a file, never an unread pipe) from the
checkout whose src/ is given (default: this one), so two checkouts can be compared with the same
script. Writes benchmarks/results/serve_reliability[-LABEL].json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from serve_load import wait_healthy  # this folder's

ROOT = Path(__file__).resolve().parents[1]
JSON = {"Content-Type": "application/json"}
HELLO = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def start_server(args: argparse.Namespace, port: int, log) -> subprocess.Popen:
    """`pocketlm serve` from args.src with RLIMIT_NOFILE = args.open_files, once /health is up."""

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.open_files, args.open_files))

    cmd = [sys.executable, "-m", "pocketlm", "serve", "--model", str(args.model)]
    cmd += ["--port", str(port), "--threads", "1", "--max-body-bytes", "2000000"]
    env = dict(os.environ, PYTHONPATH=str(args.src.resolve()))
    proc = subprocess.Popen(
        cmd, cwd=tempfile.gettempdir(), env=env, preexec_fn=limit_files, stderr=log
    )
    return wait_healthy(proc, port)  # its log is a file: never a pipe nobody reads


def answer(response: httpx.Response, start: float) -> dict:
    return {
        "status": response.status_code,
        "ms": round((time.perf_counter() - start) * 1e3),
        "body": response.text[:100],
    }


def measure(url: str, port: int, half_sent: int) -> dict:
    out = {}
    start = time.perf_counter()
    lone = b'{"prompt": "a\\ud800", "max_tokens": 2}'
    out["lone_surrogate"] = answer(
        httpx.post(url + "/v1/completions", content=lone, headers=JSON), start
    )
    start = time.perf_counter()
    page = {"Content-Type": "text/plain", "Origin": "http://evil.example"}
    response = httpx.post(url + "/v1/chat/completions", content=json.dumps(HELLO), headers=page)
    out["cross_origin_text_plain"] = answer(response, start)
    start = time.perf_counter()
    rebound = httpx.post(url + "/v1/chat/completions", json=HELLO, headers={"Host": "evil.example"})
    out["foreign_host"] = answer(rebound, start)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        raw = b""
        while chunk := sock.recv(4096):  # the server closes after answering
            raw += chunk
        out["broken_request_line"] = raw.split(b"\r\n\r\n", 1)[-1][:100].decode()
    start = time.perf_counter()
    big = {"prompt": "the cat sat on the mat. " * 43_000, "max_tokens": 2}  # 1 MB
    out["one_mb_prompt"] = answer(httpx.post(url + "/v1/completions", json=big, timeout=60), start)
    held = []
    try:
        for _ in range(half_sent):
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            held.append(sock)
        time.sleep(0.5)
        start = time.perf_counter()
        try:
            out["new_client_while_half_sent"] = answer(
                httpx.get(url + "/health", timeout=10), start
            )
        except httpx.HTTPError as exc:
            ms = round((time.perf_counter() - start) * 1e3)
            out["new_client_while_half_sent"] = {"status": type(exc).__name__, "ms": ms}
    finally:
        for sock in held:
            sock.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, required=True, help="a model directory")
    p.add_argument("--src", type=Path, default=ROOT / "src", help="the checkout's src/ to serve")
    p.add_argument("--label", default="", help="suffix of the results file (e.g. main)")
    p.add_argument("--open-files", type=int, default=1024, help="the server's RLIMIT_NOFILE")
    p.add_argument("--half-sent", type=int, default=1100, help="connections left half-sent")
    p.add_argument("--port", type=int, default=8790)
    args = p.parse_args()
    log_path = (
        Path(tempfile.gettempdir())
        / f"serve_reliability{'-' + args.label if args.label else ''}.log"
    )
    with open(log_path, "w") as log:
        proc = start_server(args, args.port, log)
        try:
            result = measure(f"http://127.0.0.1:{args.port}", args.port, args.half_sent)
        finally:
            proc.kill()
            proc.wait(30)
    result |= {"open_files": args.open_files, "half_sent": args.half_sent, "src": str(args.src)}
    for key, value in result.items():
        print(f"{key}: {value}")
    name = "serve_reliability" + (f"-{args.label}" if args.label else "") + ".json"
    out = ROOT / "benchmarks" / "results" / name
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
