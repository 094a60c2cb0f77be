"""Issue "Shrink a model": distillation vs hard labels, cached vs live teacher, prune-and-heal.

    python benchmarks/shrink_quality.py --teacher RUN_OR_MODEL --tokens TOKENS_DIR --work DIR
        [--parts kd prune] [--budget "10m cpu"] [--teacher-m-budget "40m cpu"]

Every training run is one `pocketlm` process with ONE thread and a CPU-time budget ("10m cpu":
ten minutes of this process's CPU time), two of them side by side on the 2 cores: each run gets
the same compute however busy the shared machine is, and the pairs see the same noise.

kd:    a student with 1/4 of the teacher's non-embedding parameters, from one initialisation:
       (a) hard labels (`pocketlm pretrain` of its shape), (b) distilled from the live teacher,
       side by side; then a top-32 cache of the teacher with as many shifted passes as (a) ran
       epochs, and side by side (c) a student from the cache with a token budget equal to (b)'s
       (its wall time is then the comparison), (d) one with (a)'s CPU budget and a share of
       hard labels (--kd-hard-weight); then cached students with half and with 45% of the live
       run's wall time as their CPU budget, without and with the hard-label share.
prune: the M shape (dim 512, 8 layers, ffn 1536) trained on the same tokens, pruned to 60% of its
       non-embedding parameters, healed by distillation from a cache of its logits, against the
       pruned shape trained from scratch for the same budget; decode tokens/s of both on the
       native engine.
draft: (its own process, beside prune) `pocketlm distill --student draft` for the trained M
       model, then one interleaved speculative run (benchmarks/speculative.py): the M model alone,
       with its int4 self-draft, and with the distilled draft (int4 and float), k = 2..6.

Every step's output is kept in --work: a rerun skips what is done. Results:
benchmarks/results/shrink_quality.json (and the table printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "shrink_quality.json"
M_SHAPE = dict(dim=512, layers=8, heads=8, kv_heads=4, ffn_dim=1536)
COMMON = ["--set", "train.threads=1", "--batch-size", "16", "--ctx", "256"]


def _cli(*args: str, log: Path) -> tuple[float, float]:
    """Run one pocketlm command (stdout+stderr to log); its (wall, CPU) seconds."""
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POCKETLM_NO_PROGRESS": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(["pocketlm", *args], stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time (lanes run at once)
    rc = os.waitstatus_to_exitcode(status)
    if rc:
        sys.exit(f"failed ({rc}): pocketlm {' '.join(args)} - see {log}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def _step(work: Path, name: str, *args: str) -> dict:
    """One run, skipped when work/name/done.json exists; returns its record."""
    done = work / f"{name}.done.json"
    if done.exists():
        return json.loads(done.read_text())
    wall, cpu = _cli(*args, log=work / f"{name}.log")
    record = {"name": name, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
              "command": "pocketlm " + " ".join(args)}  # fmt: skip
    done.write_text(json.dumps(record))
    return record


def _pair(*calls) -> list:
    """Run two steps (or lanes of steps) side by side, one thread each."""
    with ThreadPoolExecutor(2) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


def _bpb(model: Path, tokens: str) -> float:
    out = subprocess.run(
        ["pocketlm", "eval", "--model", str(model), "--tokens", tokens, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)["bpb"]


def _summary(run: Path) -> dict:
    """Tokens and steps a run trained (from its metrics)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    return {"tokens": train[-1]["tokens"], "steps": train[-1]["step"]}


def _non_embedding(model_dir: Path) -> int:
    from pocketlm.checkpoint.model_io import load_model

    model = load_model(model_dir).model
    emb = sum(p.numel() for n, p in model.named_parameters() if "embed" in n or "lm_head" in n)
    return sum(p.numel() for p in model.parameters()) - emb


def _fresh_student(teacher: Path, out: Path, dim: int, layers: int, heads: int) -> None:
    """A random-initialised model of this shape with the teacher's tokenizer and options."""
    if out.exists():
        return
    import dataclasses

    from pocketlm.checkpoint.model_io import load_model, save_model
    from pocketlm.model.transformer import build_model

    loaded = load_model(teacher)
    config = dataclasses.replace(
        loaded.config, dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=heads, ffn_dim=0
    )
    save_model(out, build_model(config, seed=0), loaded.directory)


def kd(args, work: Path) -> dict:
    """Hard labels against the live teacher (a pair), then a cache of as many passes as the
    hard-label run's epochs and two cached students (a pair): one at the live run's tokens (the
    wall-time comparison), one at the same CPU budget."""
    teacher = Path(args.teacher)
    student0 = work / "kd-student-init"
    _fresh_student(teacher, student0, dim=112, layers=4, heads=4)
    shape = ["--layers", "4", "--dim", "112", "--heads", "4", "--kv-heads", "4"]
    train = [*COMMON, "--lr", "0.003", "--overwrite"]
    student = ["--student", str(student0)]
    hard, live = _pair(
        lambda: _step(work, "kd-hard", "pretrain", "--tokens", args.tokens, "--out",
                      str(work / "kd-hard"), *shape, *train, "--budget", args.budget),
        lambda: _step(work, "kd-live", "distill", "--teacher", str(teacher), *student,
                      "--tokens", args.tokens, "--out", str(work / "kd-live"), *train,
                      "--budget", args.budget),
    )  # fmt: skip
    live_tokens = _summary(work / "kd-live")["tokens"]
    train_tokens = _train_tokens(args.tokens)
    passes = max(1, -(-_summary(work / "kd-hard")["tokens"] // train_tokens))
    cache = _step(work, "kd-cache", "distill", "cache", "--teacher", str(teacher), "--tokens",
                  args.tokens, "--out", str(work / "kd-cache"), "--passes", str(passes),
                  "--overwrite")  # fmt: skip
    from_cache = [*student, "--cache", str(work / "kd-cache"), *train]
    cached, cached_budget = _pair(
        lambda: _step(work, "kd-cached", "distill", *from_cache, "--out",
                      str(work / "kd-cached"), "--max-tokens", str(live_tokens)),
        lambda: _step(work, "kd-cached-budget", "distill", *from_cache, "--out",
                      str(work / "kd-cached-budget"), "--budget", args.budget,
                      "--hard-weight", str(args.kd_hard_weight)),
    )  # fmt: skip
    # at half and 45% of the live run's wall time (45%: the start-up and the final evaluation on
    # top stay under half): is a cached student as good as the live one by then?
    short = {}
    for tag, share in (("half", 0.5), ("45", 0.45)):
        # a CPU budget: a cached run's wall time is its CPU time (above)
        budget = f"{int(live['wall_s'] * share)}s cpu"
        short[tag], short[f"{tag}-mixed"] = _pair(
            lambda tag=tag, budget=budget: _step(work, f"kd-{tag}", "distill", *from_cache, "--out",
                                                 str(work / f"kd-{tag}"), "--budget", budget),
            lambda tag=tag, budget=budget: _step(work, f"kd-{tag}-mixed", "distill", *from_cache,
                                                 "--out", str(work / f"kd-{tag}-mixed"), "--budget",
                                                 budget, "--hard-weight", str(args.kd_hard_weight)),
        )  # fmt: skip
    rows = {}
    runs = [("hard", hard), ("live", live), ("cached", cached), ("cached-budget", cached_budget),
            *short.items()]  # fmt: skip
    for name, rec in runs:
        run = work / f"kd-{name}"
        rows[name] = {**rec, **_summary(run), "val_bpb": _bpb(run / "model", args.tokens)}
    rows["cache_build"] = {**cache, "passes": passes, "train_tokens": train_tokens}
    return {
        "teacher_bpb": _bpb(teacher, args.tokens),
        "teacher_non_embedding": _non_embedding(teacher),
        "student_non_embedding": _non_embedding(student0),
        "runs": rows,
    }


def _train_tokens(tokens: str) -> int:
    from pocketlm.data.token_shards import TokenShards

    return len(TokenShards(tokens).split("train"))


def m_teacher(args, work: Path) -> dict:
    """The M shape trained on the tokens (the teacher the prune part cuts)."""
    s = M_SHAPE
    shape = [
        "--layers",
        str(s["layers"]),
        "--dim",
        str(s["dim"]),
        "--heads",
        str(s["heads"]),
        "--kv-heads",
        str(s["kv_heads"]),
        "--ffn-dim",
        str(s["ffn_dim"]),
    ]
    return _step(
        work,
        "m-teacher",
        "pretrain",
        "--tokens",
        args.tokens,
        "--out",
        str(work / "m-teacher"),
        *shape,
        *COMMON,
        "--lr",
        "0.003",
        "--budget",
        args.teacher_m_budget,
        "--overwrite",
    )


def prune(args, work: Path) -> dict:
    m = work / "m-teacher"
    teach = m_teacher(args, work)
    pruned = work / "m-pruned"
    _step(
        work,
        "m-prune",
        "prune",
        "--model",
        str(m),
        "--calib",
        args.tokens,
        "--ratio",
        "0.6",
        "--out",
        str(pruned),
        "--overwrite",
    )
    cache = _step(
        work,
        "m-cache",
        "distill",
        "cache",
        "--teacher",
        str(m),
        "--tokens",
        args.tokens,
        "--out",
        str(work / "m-cache"),
    )
    fresh = work / "m-pruned-init"
    if not fresh.exists():
        from pocketlm.checkpoint.model_io import load_model, save_model
        from pocketlm.model.transformer import build_model

        loaded = load_model(pruned)
        save_model(fresh, build_model(loaded.config, seed=0), loaded.directory)
    heal, scratch = _pair(
        lambda: _step(
            work,
            "m-heal",
            "distill",
            "--cache",
            str(work / "m-cache"),
            "--student",
            str(pruned),
            "--out",
            str(work / "m-heal"),
            *COMMON,
            "--lr",
            "0.001",
            "--budget",
            args.budget,
            "--overwrite",
        ),
        lambda: _step(
            work,
            "m-scratch",
            "distill",
            "--cache",
            str(work / "m-cache"),
            "--student",
            str(fresh),
            "--out",
            str(work / "m-scratch"),
            *COMMON,
            "--lr",
            "0.003",
            "--budget",
            args.budget,
            "--hard-weight",
            "1.0",
            "--overwrite",
        ),
    )
    result = {
        "teacher": {
            **teach,
            **_summary(m),
            "val_bpb": _bpb(m / "model", args.tokens),
            "non_embedding": _non_embedding(m / "model"),
        },
        "pruned_non_embedding": _non_embedding(pruned),
        "pruned_unhealed_bpb": _bpb(pruned, args.tokens),
        "cache_build": cache,
    }
    for name, rec in [("healed", heal), ("scratch", scratch)]:
        run = work / f"m-{name.replace('healed', 'heal')}"
        result[name] = {**rec, **_summary(run), "val_bpb": _bpb(run / "model", args.tokens)}
    result["decode"] = _decode_speed([m / "model", work / "m-heal" / "model"])
    return result


def draft(args, work: Path) -> dict:
    """The distilled draft (`distill --student draft`, one command) against the int4 self-draft
    for the trained M model, in one interleaved speculative-decoding run."""
    m = work / "m-teacher"
    while not (work / "m-teacher.done.json").exists():  # the prune part's lane trains it
        time.sleep(30)
    run = _step(work, "m-draft", "distill", "--teacher", str(m), "--student", "draft",
                "--tokens", args.tokens, "--out", str(work / "m-draft"), *COMMON, "--lr",
                "0.001", "--budget", args.budget, "--overwrite")  # fmt: skip
    _step(work, "m-int4", "quantize", "--model", str(m), "--scheme", "int4", "--out",
          str(work / "m-int4"), "--overwrite")  # fmt: skip
    out = work / "speculative.json"
    drafts = [str(work / "m-int4"), str(work / "m-draft" / "draft-int4"),
              str(work / "m-draft" / "model")]  # fmt: skip
    subprocess.run(
        [sys.executable, str(Path(__file__).parent / "speculative.py"), "--target",
         str(m / "model"), "--draft", *drafts, "--k", "2", "3", "4", "6", "--rounds", "3",
         "--out", str(out)],
        check=True,
    )  # fmt: skip
    return {
        "draft_run": {**run, **_summary(work / "m-draft"),
                      "val_bpb": _bpb(work / "m-draft" / "model", args.tokens)},
        "speculative": json.loads(out.read_text()),
    }  # fmt: skip


def _decode_speed(models: list[Path], rounds: int = 3) -> dict:
    """Native-engine decode tokens/s (128-token prompt, 128 new), interleaved rounds, medians."""
    import statistics

    from pocketlm.engine.load import load_engine
    from pocketlm.engine.sampling import SamplingParams

    engines = {str(m): load_engine(m, backend="native") for m in models}
    params = SamplingParams(temperature=0.0, max_new_tokens=128)
    prompt = "once upon a time there was a little girl named lily. " * 12
    rates: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(rounds):
        for key, engine in engines.items():
            start = time.perf_counter()
            out = engine.complete(prompt, params)
            rates[key].append(len(out.token_ids) / (time.perf_counter() - start))
    return {k: round(statistics.median(v), 1) for k, v in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--teacher", required=True, help="the 10-minute TinyStories model (kd)")
    ap.add_argument("--tokens", required=True, help="TinyStories tokens (its tokenizer)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--parts", nargs="+", default=["kd", "prune"], help="kd, prune, draft")
    ap.add_argument("--budget", default="10m cpu")
    ap.add_argument("--teacher-m-budget", default="25m cpu")
    ap.add_argument(
        "--kd-hard-weight", type=float, default=0.25,
        help="hard-label share of the cached student at the CPU budget (0.25 and 0.5 tried: "
        "0.931 and 0.934 bits/byte, 0: 0.941)",
    )  # fmt: skip
    ap.add_argument("--results", default=str(RESULTS), help="the JSON results file")
    args = ap.parse_args()
    results_path = Path(args.results)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe_machine

    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["machine"] = describe_machine()
    parts = list(args.parts)
    if {"kd", "prune"} <= set(parts):  # two lanes: the kd runs beside the M teacher
        results["kd"], _ = _pair(lambda: kd(args, work), lambda: m_teacher(args, work))
        results_path.write_text(json.dumps(results, indent=2))
        parts.remove("kd")
    for part in parts:
        results[part] = {"kd": kd, "prune": prune, "draft": draft}[part](args, work)
        results_path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
