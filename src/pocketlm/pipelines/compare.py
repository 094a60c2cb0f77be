"""`pocketlm compare`: model variants -> one table of size, parameters, speed, memory and quality,
a Pareto plot and a markdown + JSON report, written as an artifact whose parents are the models.

Chains interop.open_model (any directory PocketLM opens), checkpoint.model_check (parameters and
quantization, no torch), engine/bench (speed, in compare_worker: one process per variant, rounds
interleaved so machine drift hits all alike), evals/evaluate (bits/byte, as `pocketlm eval`),
engine/classify + evals/classify_metrics (a classifier's task accuracy) and evals/compare (the
table and Pareto fronts).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pocketlm.common.errors import InputError, PocketLMError
from pocketlm.common.manifest import ArtifactWriter, parent_ref
from pocketlm.engine.bench import speed_summary
from pocketlm.evals.compare import compare_report, format_markdown, plot_report, variant_names

log = logging.getLogger("pocketlm.compare")
KIND = "compare"
LM_TASK_NOTE = (
    "task accuracy not measured: a language model's task format comes with `pocketlm eval --task`"
)


@dataclass(frozen=True)
class CompareSettings:
    """How each variant is measured: the bench's prompt and decode lengths, backend, threads and
    interleaved rounds; the evaluation's token budget, window and device."""

    prompt_tokens: int = 128
    new_tokens: int = 64
    rounds: int = 3
    backend: str = "auto"
    threads: int = 0
    max_tokens: int = 262144
    ctx: int = 0
    batch_size: int = 8
    device: str = "auto"
    pause_s: float = 0.2  # between variants: the last one's threads stop spinning


def directory_bytes(directory: Path) -> int:
    """Bytes of every regular file under `directory` (what shipping the model copies)."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def variant_facts(path: str | Path, tokens: str | Path | None) -> dict[str, Any]:
    """What a variant is, without running it: its artifact directory, size on disk, parameters,
    quantization and whether it is a classifier; the tokens dir is checked against its tokenizer.
    Errors name `path`."""
    from pocketlm.checkpoint.model_check import check_model_dir
    from pocketlm.interop.open_model import model_dir

    try:
        directory = model_dir(path)
        checked = check_model_dir(directory)
        config = checked.config
        if tokens is not None and not config.labels:
            from pocketlm.data.token_shards import TokenShards

            TokenShards(tokens).check_tokenizer(
                checked.tokenizer.fingerprint, config.vocab_size, f"the model in {directory}"
            )
    except PocketLMError as exc:
        raise InputError(f"cannot compare {path}: {exc}") from exc
    size = directory_bytes(directory)
    scheme = checked.quant["scheme"]
    return {
        "path": str(path),
        "directory": str(directory),
        "size_bytes": size,
        "size_mb": round(size / 1e6, 4),
        "params": config.num_params(),
        "quantization": "float" if scheme == "none" else scheme,
        "classifier": bool(config.labels),
    }


class _Worker:
    """The parent's end of one variant's process."""

    def __init__(self, ctx: Any, name: str, spec: dict[str, Any]) -> None:
        from pocketlm.pipelines.compare_worker import serve

        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child, spec), daemon=True)
        self.proc.start()
        child.close()  # a worker that dies shows up as EOFError, not a hang

    def send(self, *cmd: Any) -> None:
        """Send a command (its answer comes from receive)."""
        try:
            self.conn.send(cmd)
        except OSError as exc:
            raise PocketLMError(f"{self.name}: its measuring process died ({exc!r})") from exc

    def receive(self) -> Any:
        """The answer to the last command; a failure raises naming the variant."""
        try:
            reply = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise PocketLMError(f"{self.name}: its measuring process died ({exc!r})") from exc
        if reply[0] == "error":
            raise (InputError if reply[2] else PocketLMError)(f"{self.name}: {reply[1]}")
        return reply[1]

    def ask(self, *cmd: Any) -> Any:
        """Send a command and return its answer."""
        self.send(*cmd)
        return self.receive()

    def stop(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError):  # a worker already gone
                self.conn.send(("stop",))
            self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()


def measure(
    names: Sequence[str],
    specs: Sequence[dict[str, Any]],
    settings: CompareSettings,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """Speed, peak memory and quality of each variant, each in its own process: loads one at a
    time (time to first token is a cold start), rounds interleaved, quality last."""
    ctx = mp.get_context("spawn")
    workers = [_Worker(ctx, n, s) for n, s in zip(names, specs, strict=True)]
    try:
        loads = []
        for w in workers:
            log.info("loading %s", w.name)
            loads.append(w.ask("load"))
        samples: list[list[tuple[float, float]]] = [[] for _ in workers]
        for r in range(settings.rounds):
            log.info("round %d of %d", r + 1, settings.rounds)
            for w, got in zip(workers, samples, strict=True):
                sleep(settings.pause_s)
                timing = w.ask("round")
                if timing is not None:
                    got.append(timing)
        memory = [w.ask("memory") for w in workers]
        for w in workers:  # the evaluation's imports (torch) in all at once; evaluations one by one
            w.send("prepare")
        for w in workers:
            w.receive()
        quality = []
        for w in workers:
            log.info("evaluating %s", w.name)
            quality.append(w.ask("quality"))
    finally:
        for w in workers:
            w.stop()
    return [
        _measured(settings, load, rounds, mem, q)
        for load, rounds, mem, q in zip(loads, samples, memory, quality, strict=True)
    ]


def _measured(
    settings: CompareSettings,
    load: tuple[float, str] | None,
    rounds: list[tuple[float, float]],
    memory_mb: float,
    quality: dict[str, Any],
) -> dict[str, Any]:
    speed_keys = ("load_s", "time_to_first_token_s", "prefill_tokens_per_s", "decode_tokens_per_s")
    row: dict[str, Any] = {"backend": None, **dict.fromkeys(speed_keys)}
    row.update({"peak_memory_mb": round(memory_mb, 1), **quality})
    if load is not None and rounds:
        row["backend"] = load[1]
        row.update(
            speed_summary(
                settings.prompt_tokens,
                settings.new_tokens,
                load[0],
                [p for p, _ in rounds],
                [d for _, d in rounds],
            )
        )
    return row


def _task_examples(task: str | Path | None) -> tuple[list[str], list[str]] | None:
    if task is None:
        return None
    from pocketlm.data.classify_data import read_labelled

    examples = read_labelled([str(task)]).examples
    if not examples:
        raise InputError(f"{task}: no labelled examples (text and label columns)")
    return [e.text for e in examples], [e.label for e in examples]


def _notes(facts: dict[str, Any], tokens: Any, task: Any) -> list[str]:
    notes = []
    if facts["classifier"]:
        notes.append("a classifier: no decode speed (the engine generates text)")
        if tokens is not None:
            notes.append("a classifier: no bits/byte (it has no language-model head)")
    elif task is not None:
        notes.append(LM_TASK_NOTE)
    return notes


def compare_models(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    tokens: str | Path | None = None,
    task: str | Path | None = None,
    settings: CompareSettings = CompareSettings(),
    command: Sequence[str] | None = None,
    overwrite: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Measure every variant and write the report artifact `out` (report.md, report.json,
    pareto.png); returns (its path, the report)."""
    if not paths:
        raise InputError("compare needs at least one model directory")
    facts = [variant_facts(p, tokens) for p in paths]  # every path checked before any run
    names = variant_names([str(p) for p in paths])
    examples = _task_examples(task)
    bench = {
        "prompt_tokens": settings.prompt_tokens,
        "new_tokens": settings.new_tokens,
        "backend": settings.backend,
        "threads": settings.threads,
        "device": "cpu",
    }
    evals = {
        "max_tokens": settings.max_tokens,
        "ctx": settings.ctx,
        "batch_size": settings.batch_size,
        "device": settings.device,
    }
    specs = [
        {"directory": f["directory"], "classifier": f["classifier"], "bench": bench,
         "eval": evals, "tokens": None if tokens is None else str(tokens), "task": examples}
        for f in facts
    ]  # fmt: skip
    config = {**asdict(settings), "tokens": str(tokens or ""), "task": str(task or "")}
    with ArtifactWriter(
        out,
        KIND,
        config=config,
        parents=[parent_ref(f["directory"]) for f in facts],
        command=command,
        overwrite=overwrite,
    ) as art:  # fmt: skip  (opened first: an occupied --out fails before the measuring)
        measured = measure(names, specs, settings)
        rows = [
            {"name": n, **f, **m, "notes": _notes(f, tokens, task)}
            for n, f, m in zip(names, facts, measured, strict=True)
        ]
        report = compare_report(rows, config)
        art.path("report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        art.path("report.md").write_text(format_markdown(report), encoding="utf-8")
        plot_report(report, art.path("pareto.png"))
        summary = {"variants": len(rows), "quality": report["quality"], "pareto": report["pareto"]}
        path = art.commit(summary)
    return path, report
