"""Reliability of `data build`: no silent drop on generated mixed folders, bounded memory on huge lines.

    python benchmarks/data_reliability.py --cases 400 --size-mb 205
    python benchmarks/data_reliability.py --src /tmp/main-src --skip-fuzz   # an older tree, to compare

Fuzz: Hypothesis generates folders of mixed files (good, empty, binary, unsupported, duplicates,
malformed CSV and JSONL records, invalid UTF-8, lines over the read limit) and checks each build
with the checks of tests/unit/data/test_build_accounting.py: with --on-bad-record skip every
record and byte is accounted for and every file that lost anything is named; with the default
policy the error names the first bad record's file, line and byte offset. Any failure stops the
run with the failing folder.

Huge lines: for each of a one-line .txt, .jsonl record and .csv row of --size-mb, a fresh
process builds it after a warm-up build and reports its peak resident memory (VmHWM) and the
growth over its resident memory before the build (tests/unit/data/test_huge_lines.py: PROBE).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("POCKETLM_NO_PROGRESS", "1")


def fuzz(cases: int) -> dict:
    """Run `cases` generated folders through the accounting checks; totals of what was tried."""
    import logging

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.unit.data import test_build_accounting as checks

    logging.getLogger("pocketlm").setLevel(logging.ERROR)  # one warning per bad record otherwise
    totals: Counter = Counter()

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(files=checks.FILES, seed=st.integers(0, 2**16))
    def run(files, seed):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "in"
            root.mkdir()
            truths = checks.make_folder(root, files, seed)
            checks.check_skip(root, Path(tmp) / "skip", truths)
            checks.check_stop(root, Path(tmp) / "stop", truths)
            totals["folders"] += 1
            totals["files"] += len(truths)
            totals["records"] += sum(t.records for t in truths)
            totals["bytes"] += sum(t.path.stat().st_size for t in truths)
            totals["bad_records"] += sum(sum(t.bad.values()) for t in truths)
            totals["too_long_raw"] += sum(t.too_long for t in truths)
            totals["skipped_files"] += sum(1 for t in truths if t.skipped)
            totals["stops_located"] += any(t.first_bad for t in truths)

    started = time.perf_counter()
    run()
    return {**totals, "silent_drops": 0, "seconds": round(time.perf_counter() - started, 1)}


def huge_line(size_mb: int, src: Path, workdir: Path) -> list[dict]:
    """Peak memory of building each one-line file of size_mb MB, in a fresh process; then a
    .txt line just under the default read limit, which is read, cleaned and filtered."""
    from tests.unit.data.test_huge_lines import ONE_LINE_FILES, PROBE, write_probe_folders

    cases = [(name, size_mb * 1_000_000) for name in ONE_LINE_FILES]
    cases.append(("line.txt", 7_995_000))  # the limit is 8 MB (4 x clean.max_chars)
    out = []
    for name, size_bytes in cases:
        work = workdir / f"huge-{name}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        write_probe_folders(work, size_bytes, names=(name,))
        env = {**os.environ, "PYTHONPATH": str(src)}
        r = subprocess.run(
            [sys.executable, "-c", PROBE, str(work)], capture_output=True, text=True, env=env
        )
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        probe = json.loads(r.stdout.splitlines()[-1])
        removed = probe["summary"]["removed"]["docs"]
        out.append(
            {
                "file": name,
                "size_mb": round((work / "big" / name).stat().st_size / 1e6, 1),
                "peak_mb": round(probe["peak"] / 1e6, 1),
                "growth_mb": round(probe["growth"] / 1e6, 1),
                "seconds": round(probe["seconds"], 2),
                "removed": removed,
            }
        )
        shutil.rmtree(work)
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=400, help="generated folders")
    parser.add_argument("--size-mb", type=int, default=205, help="size of each one-line file")
    parser.add_argument("--src", default=str(ROOT / "src"), help="the pocketlm tree to measure")
    parser.add_argument("--workdir", default="/tmp/pocketlm-reliability")
    parser.add_argument("--skip-fuzz", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    results: dict = {"src": args.src}
    if not args.skip_fuzz:
        results["fuzz"] = fuzz(args.cases)
        print(json.dumps(results["fuzz"]), flush=True)
    results["huge_line"] = huge_line(args.size_mb, Path(args.src), Path(args.workdir))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
