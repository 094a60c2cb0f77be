"""Subprocess of the loader fuzz test: builds variants and runs each through the loaders.

Usage: python loader_fuzz_worker.py JOB.json. The job names the base model directories, the
seed, the variant numbers to run, a scratch directory and the results file. For each variant
the worker appends {"start": i, ...} to the results, then opens the variant with the native,
torch (and, for every `auto_every`-th one, auto) backend through open_backend, runs one forward
pass (a prefill over the probe ids, then one decode step) and encodes a probe text, and appends
{"done": i, "outcomes": ...}. A signal or a hang shows as a "start" without its "done".
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository: `tests` imports
from tests.unit.engine.loader_mutations import make_variant

PROBE_IDS = [1, *range(40, 59)]  # 20 tokens: the prefill kernels, then a decode step
PROBE_TEXT = "The little cat <|end|> ran home.\n"


def run(loader: str, path: Path) -> tuple[dict, tuple | None]:
    """(outcome, what the model computed) of opening `path` with one loader and using it once."""
    from pocketlm.common.errors import PocketLMError
    from pocketlm.engine.load import open_backend

    phase = "open"
    try:
        precision = "fp32" if loader == "torch" else "auto"
        backend, tokenizer = open_backend(
            path, backend=loader, device="cpu", precision=precision, threads=1
        )
        phase = "forward"
        logits = np.asarray(backend.extend(0, PROBE_IDS), dtype=np.float32)
        step = np.asarray(backend.decode([0], [PROBE_IDS[3]]), dtype=np.float32)
        ids = tokenizer.encode(PROBE_TEXT)
        chat = tokenizer.encode_chat([{"role": "user", "content": PROBE_TEXT}])
        text = tokenizer.decode(ids + chat)
        return {"result": "ok", "backend": backend.name}, (logits, step, ids, chat, text)
    except PocketLMError as exc:
        return {
            "result": "error",
            "phase": phase,
            "type": type(exc).__name__,
            "message": str(exc),
        }, None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # anything else is the defect this test looks for
        return {"result": "traceback", "phase": phase, "traceback": traceback.format_exc()}, None


def same(a: tuple | None, b: tuple | None) -> bool:
    """Bit-identical logits and identical token ids and text."""
    if a is None or b is None:
        return False
    return all(
        np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
        for x, y in zip(a, b, strict=True)
    )


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    # A loader that reads without end (a file replaced by /dev/zero) must fail here with a
    # MemoryError, counted as a traceback, not take the machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (job["memory_limit_bytes"],) * 2)
    import torch

    torch.set_num_threads(1)
    bases = {name: Path(p) for name, p in job["bases"].items()}
    work = Path(job["work"])
    refs = {}
    for name, path in bases.items():
        for loader in ("native", "torch"):
            outcome, computed = run(loader, path)
            if outcome["result"] != "ok":
                raise SystemExit(f"base {name} does not load with {loader}: {outcome}")
            refs[name, loader] = computed
    with open(job["results"], "a", encoding="utf-8") as out:
        for index in job["indices"]:
            variant = make_variant(bases, work / str(index), job["seed"], index)
            head = {"start": index, "base": variant.base, "kind": variant.kind}
            head |= {"detail": variant.detail, "resealed": variant.resealed}
            out.write(json.dumps(head) + "\n")
            out.flush()
            outcomes = {}
            loaders = ["native", "torch"] + (["auto"] if index % job["auto_every"] == 0 else [])
            for loader in loaders:
                outcome, computed = run(loader, variant.path)
                ref = refs[variant.base, "torch" if loader == "torch" else "native"]
                if outcome["result"] == "ok":
                    outcome["same"] = same(computed, ref)
                outcomes[loader] = outcome
            out.write(
                json.dumps({"done": index, "path": str(variant.path), "outcomes": outcomes}) + "\n"
            )
            out.flush()
            shutil.rmtree(variant.path, ignore_errors=True)


if __name__ == "__main__":
    main()
