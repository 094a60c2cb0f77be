"""No file crashes a PocketLM process: corrupted model directories through every loader.

Seeded random variants (loader_mutations.py: ~36 mutation kinds with random parameters, raw or
with the manifest resealed) of small models in every precision (fp32, bf16, int8, int4; tied and
untied, with and without q/k/v biases) go through the native and torch loaders (and auto, for
every fourth) in worker subprocesses, two at a time, via open_backend + one forward pass. Each
variant must be refused with a PocketLMError naming a file of the variant, or, when the change is
harmless, give bit-identical logits and token ids; both loaders must agree. Counted and asserted:
0 signals, 0 hangs, 0 tracebacks, 0 silently accepted corruptions.

Sizes: 1000 variants in the default run (about 15-30 s on 2 cores); the slow tier runs 10000
(POCKETLM_LOADER_FUZZ_VARIANTS overrides it; POCKETLM_LOADER_FUZZ_SEED picks the seed, printed on
failure so a variant can be rebuilt with loader_mutations.make_variant).
"""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.unit.engine.loader_mutations import MUTATIONS, make_variant
from tests.unit.engine.model_variants import TIED, WIDE, save_variants

pytest.importorskip("pocketlm.engine._native", reason="native extension not built")

HERE = Path(__file__).resolve().parent
WORKER = HERE / "loader_fuzz_worker.py"
REPO = HERE.parents[2]
DEFAULT_VARIANTS, SLOW_VARIANTS = 1000, 10000
STARTUP_S, HANG_S = 180.0, 60.0  # a worker imports torch first; one variant takes milliseconds


@pytest.fixture(scope="module")
def fuzz_bases(synthetic_pipeline, tmp_path_factory) -> dict[str, Path]:
    """TIED and WIDE (model_variants) in every precision; their configs keep the default
    rope_theta and norm_eps (see loader_mutations)."""
    root = tmp_path_factory.mktemp("fuzz-bases")
    tok = synthetic_pipeline["tokenizer"]
    bases = {}
    for name, config in (("a", TIED), ("b", WIDE)):
        for scheme, path in save_variants(root, name, config, tok).items():
            bases[f"{name}-{scheme}"] = path
    return bases


@dataclass
class Worker:
    indices: list[int]
    results: Path
    stderr: Path
    proc: subprocess.Popen
    started: float
    last_progress: float
    size: int = 0


@dataclass
class FuzzRun:
    """Everything a fuzz run saw: records by variant, and the failures found."""

    seed: int
    records: dict[int, dict] = field(default_factory=dict)
    signals: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)
    silent: list[str] = field(default_factory=list)
    unnamed: list[str] = field(default_factory=list)
    disagree: list[str] = field(default_factory=list)


def _launch(indices: list[int], job: dict, tmp: Path, n: int) -> Worker:
    results, stderr = tmp / f"results-{n}.jsonl", tmp / f"stderr-{n}.txt"
    job_file = tmp / f"job-{n}.json"
    job_file.write_text(json.dumps({**job, "indices": indices, "results": str(results)}))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    with open(stderr, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(job_file)], stdout=err, stderr=err, env=env
        )
    now = time.monotonic()
    return Worker(indices, results, stderr, proc, now, now)


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def run_fuzz(
    bases: dict[str, Path], n_variants: int, seed: int, tmp: Path, parallel: int = 2
) -> FuzzRun:
    """Run variants 0..n-1 through the workers; a dead or stuck worker is restarted after the
    variant it was on, which is counted as a signal or a hang."""
    run = FuzzRun(seed)
    job = {
        "bases": {k: str(v) for k, v in bases.items()},
        "seed": seed,
        "work": str(tmp / "work"),
        "auto_every": 4,
        "memory_limit_bytes": 6 << 30,
    }
    launches = 0
    workers = []
    for shard in range(parallel):
        workers.append(_launch(list(range(shard, n_variants, parallel)), job, tmp, launches))
        launches += 1
    while workers:
        time.sleep(0.2)
        for w in list(workers):
            now = time.monotonic()
            size = w.results.stat().st_size if w.results.exists() else 0
            if size != w.size:
                w.size, w.last_progress = size, now
            rc = w.proc.poll()
            stuck = now - w.last_progress > (HANG_S if size else STARTUP_S)
            if rc is None and not stuck:
                continue
            if rc is None:
                w.proc.kill()
                w.proc.wait()
            workers.remove(w)
            lines = _read(w.results)
            starts = {r["start"]: r for r in lines if "start" in r}
            for r in lines:
                if "done" in r:
                    run.records[r["done"]] = {**starts[r["done"]], **r}
            err = w.stderr.read_text(errors="replace")
            if "Traceback" in err or "panicked at" in err:  # Python's, or a Rust panic's
                run.tracebacks.append(f"worker stderr: {err[-3000:]}")
            inflight = [i for i in starts if i not in run.records]
            if rc == 0 and not inflight:
                continue
            if not inflight:
                raise AssertionError(
                    f"a fuzz worker failed outside any variant (rc {rc}): {err[-3000:]}"
                )
            bad = starts[inflight[0]]
            what = f"variant {bad['start']} ({bad['base']}, {bad['kind']}: {bad['detail']}, resealed={bad['resealed']})"
            (run.hangs if rc is None else run.signals).append(
                f"{what}: rc {rc}, stderr {err[-500:]!r}"
            )
            rest = [i for i in w.indices if i not in run.records and i != bad["start"]]
            if rest:
                workers.append(_launch(rest, job, tmp, launches))
                launches += 1
    for index, rec in sorted(run.records.items()):
        _judge(run, index, rec)
    return run


def _judge(run: FuzzRun, index: int, rec: dict) -> None:
    """Sort one variant's outcomes into the failure lists (if it belongs in any)."""
    what = f"variant {index} ({rec['base']}, {rec['kind']}: {rec['detail']}, resealed={rec['resealed']})"
    outcomes = rec["outcomes"]
    for loader, o in outcomes.items():
        if o["result"] == "traceback":
            run.tracebacks.append(f"{what} [{loader}]: {o['traceback']}")
        elif o["result"] == "ok" and not o["same"]:
            run.silent.append(f"{what} [{loader}]: accepted, and computes something else")
        elif o["result"] == "error" and o["phase"] == "open" and rec["path"] not in o["message"]:
            run.unnamed.append(f"{what} [{loader}]: {o['type']}: {o['message']}")
    if outcomes["native"]["result"] != outcomes["torch"]["result"]:
        run.disagree.append(f"{what}: native {outcomes['native']} but torch {outcomes['torch']}")
    auto = outcomes.get("auto")
    if auto is not None and (auto["result"], auto.get("backend", "native")) != (
        outcomes["native"]["result"],
        "native",
    ):
        run.disagree.append(f"{what}: auto {auto} but native {outcomes['native']}")


def summary(run: FuzzRun) -> dict[str, collections.Counter]:
    """mutation kind -> Counter of outcomes ("refused", "harmless") over both loaders' verdicts."""
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for rec in run.records.values():
        verdict = (
            "harmless" if all(o["result"] == "ok" for o in rec["outcomes"].values()) else "refused"
        )
        table[rec["kind"]][verdict] += 1
    return table


def check(run: FuzzRun, n_variants: int) -> None:
    """Assert the run's counts: all variants judged, and not one failure of any sort."""
    failures = {
        "signals": run.signals,
        "hangs": run.hangs,
        "tracebacks": run.tracebacks,
        "silently accepted corruptions": run.silent,
        "errors that name no file of the variant": run.unnamed,
        "loaders that disagree": run.disagree,
    }
    report = "\n".join(
        f"{len(items)} {name} (seed {run.seed}):\n  " + "\n  ".join(items[:5])
        for name, items in failures.items()
        if items
    )
    assert not report, report
    assert len(run.records) == n_variants
    table = summary(run)
    # Every mutation kind ran, and both verdicts occur: the oracle is not vacuous either way.
    if n_variants >= 300:
        assert {m.fn.__name__ for m in MUTATIONS} <= set(table), set(table)
    totals = sum(table.values(), collections.Counter())
    assert totals["refused"] > n_variants // 2 and totals["harmless"] > 0, totals


def _seed() -> int:
    return int(os.environ.get("POCKETLM_LOADER_FUZZ_SEED", random.SystemRandom().randrange(2**31)))


def test_corrupted_models_never_crash_hang_or_load_silently(fuzz_bases, tmp_path):
    run = run_fuzz(fuzz_bases, DEFAULT_VARIANTS, _seed(), tmp_path)
    check(run, DEFAULT_VARIANTS)
    assert {r["base"] for r in run.records.values()} == set(fuzz_bases)


@pytest.mark.slow
def test_corrupted_models_never_crash_many(fuzz_bases, tmp_path):
    n = int(os.environ.get("POCKETLM_LOADER_FUZZ_VARIANTS", SLOW_VARIANTS))
    run = run_fuzz(fuzz_bases, n, _seed(), tmp_path)
    check(run, n)


def test_the_cli_prints_one_line_for_any_corrupted_model(fuzz_bases, tmp_path):
    """`pocketlm generate` on corrupted variants: exit 2 with one `error:` line (no traceback),
    or, for a harmless change, exit 0 with the original's greedy text."""
    seed = _seed()

    def generate(model: Path) -> subprocess.CompletedProcess:
        args = ["generate", "--model", str(model), "--prompt", "the", "--max-new-tokens", "4"]
        args += ["--temperature", "0", "--threads", "1"]
        return subprocess.run(
            [sys.executable, "-m", "pocketlm", *args], capture_output=True, text=True, timeout=120
        )

    originals = {name: generate(path).stdout for name, path in fuzz_bases.items()}
    codes = collections.Counter()
    for index in range(16):
        v = make_variant(fuzz_bases, tmp_path / str(index), seed, index)
        r = generate(v.path)
        what = f"seed {seed} variant {index} ({v.base}, {v.kind}: {v.detail}): rc {r.returncode}\n{r.stderr}"
        assert r.returncode in (0, 2), what
        assert "Traceback" not in r.stderr, what
        if r.returncode == 2:
            assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, what
            assert r.stderr.startswith("error: "), what
        else:
            assert r.stdout == originals[v.base], what
        codes[r.returncode] += 1
    assert codes[2] > 0, codes
