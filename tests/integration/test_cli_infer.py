"""quantize, bench, export gguf and presets through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys


def pocketlm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pocketlm", *args], capture_output=True, text=True, timeout=600
    )


def test_quantize_bench_and_gguf(tiny_model_dir, synthetic_pipeline, tmp_path):
    r = pocketlm(
        "quantize",
        "--model",
        str(tiny_model_dir),
        "--scheme",
        "int8",
        "--tokens",
        str(synthetic_pipeline["tokens"]),
        "--out",
        str(tmp_path / "q8"),
    )
    assert r.returncode == 0, r.stderr
    assert "val bits/byte" in r.stdout and r.stdout.strip().endswith(str(tmp_path / "q8"))
    for backend in ("native", "torch"):
        r = pocketlm(
            "bench",
            "--model",
            str(tmp_path / "q8"),
            "--prompt-tokens",
            "8",
            "--new-tokens",
            "4",
            "--repeats",
            "1",
            "--json",
            "--backend",
            backend,
        )
        if backend == "native" and r.returncode != 0 and "not built" in r.stderr:
            continue
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["backend"] == backend
        for key in (
            "prefill_tokens_per_s",
            "decode_tokens_per_s",
            "time_to_first_token_s",
            "peak_memory_mb",
            "model_bytes",
        ):
            assert res[key] > 0
    r = pocketlm(
        "export",
        "gguf",
        "--model",
        str(tiny_model_dir),
        "--out",
        str(tmp_path / "m.gguf"),
        "--type",
        "q8_0",
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.gguf").stat().st_size > 1000 and (tmp_path / "m.Modelfile").exists()
    r = pocketlm("bench", "--model", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no such model directory" in r.stderr


def test_presets_table():
    r = pocketlm("presets", "--vocab-size", "4096")
    assert r.returncode == 0
    assert "smollm2-135m" in r.stdout and "KV/tok" in r.stdout
