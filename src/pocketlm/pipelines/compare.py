"""`pocketlm compare`: model variants -> one table of size, parameters, speed, memory and quality,
a Pareto plot and a markdown + JSON report, written as an artifact whose parents are the models.

Chains interop.open_model (any directory PocketLM opens; an `export onnx` directory or a .gguf
file is measured as it ships, on its own runtime), checkpoint.model_check (parameters and
quantization, no torch), engine/bench (speed, in compare_worker: one process per variant, rounds
interleaved so machine drift hits all alike), evals/evaluate (bits/byte, as `pocketlm eval`),
engine/classify + evals/classify_metrics (a classifier's task accuracy), pipelines/task_eval (a
language model's task files, as `pocketlm eval --task`), evals/artifact_parity (every variant
against the first: score differences, same answers, greedy token agreement) and evals/compare
(the table and Pareto fronts).
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
EXPORTED_BPB_NOTE = (
    "bits/byte not measured: --tokens scoring runs the PyTorch model; an exported file's task "
    "scores and greedy token agreement are measured on its own runtime"
)
# prompts whose greedy continuations each variant writes (token agreement with the reference)
GREEDY_PROMPTS = ("The", "def main():", "Once upon a time", "import")


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
    greedy_tokens: int = 32  # per greedy prompt (0: no token agreement)
    greedy_prompts: tuple[str, ...] = GREEDY_PROMPTS
    task_limit: int | None = None  # items per task file (None: all)


def directory_bytes(directory: Path) -> int:
    """Bytes of every regular file under `directory` (what shipping the model copies)."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def variant_facts(path: str | Path, tokens: str | Path | None) -> dict[str, Any]:
    """What a variant is, without running it: its artifact directory (or exported file), size on
    disk, parameters, quantization (weights) and whether it is a classifier; the tokens dir is
    checked against a model artifact's tokenizer. Errors name `path`."""
    from pocketlm.checkpoint.model_check import check_model_dir
    from pocketlm.engine.exported import exported_format
    from pocketlm.interop.open_model import model_dir

    exported = exported_format(path)
    if exported is not None:
        from pocketlm.pipelines.compare_exported import exported_facts

        return exported_facts(Path(path), exported)
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
        "exported": None,
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


def _task_examples(tasks: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """A classifier's labelled examples from the task files (None without any)."""
    if not tasks:
        return None
    from pocketlm.data.classify_data import read_labelled

    examples = read_labelled(list(tasks)).examples
    if not examples:
        raise InputError(f"{', '.join(tasks)}: no labelled examples (text and label columns)")
    return [e.text for e in examples], [e.label for e in examples]


def _task_files(task: str | Path | Sequence[str | Path] | None) -> list[str]:
    if task is None:
        return []
    return [str(task)] if isinstance(task, (str, Path)) else [str(t) for t in task]


def _notes(facts: dict[str, Any], tokens: Any) -> list[str]:
    notes = []
    if facts["classifier"]:
        notes.append("a classifier: no decode speed (the engine generates text)")
        if tokens is not None:
            notes.append("a classifier: no bits/byte (it has no language-model head)")
    elif facts["exported"] and tokens is not None:
        notes.append(EXPORTED_BPB_NOTE)
    return notes


def _spec(
    facts: dict[str, Any],
    settings: CompareSettings,
    tokens: str | Path | None,
    tasks: list[str],
    examples: tuple[list[str], list[str]] | None,
) -> dict[str, Any]:
    """What a variant's process measures: the bench (an exported file on its own runtime), the
    evaluation, a classifier's examples or a language model's task files, the greedy prompts."""
    bench = {
        "prompt_tokens": settings.prompt_tokens,
        "new_tokens": settings.new_tokens,
        "backend": "auto" if facts["exported"] else settings.backend,
        "threads": settings.threads,
        "device": "cpu",
    }
    evals = {
        "max_tokens": settings.max_tokens,
        "ctx": settings.ctx,
        "batch_size": settings.batch_size,
        "device": settings.device,
    }
    return {
        "directory": facts["directory"], "classifier": facts["classifier"],
        "exported": facts["exported"], "bench": bench, "eval": evals,
        "tokens": None if tokens is None else str(tokens),
        "task": examples if facts["classifier"] else None,
        "task_files": [] if facts["classifier"] else tasks, "task_limit": settings.task_limit,
        "greedy": {"prompts": list(settings.greedy_prompts), "new_tokens": settings.greedy_tokens},
    }  # fmt: skip


def compare_models(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    tokens: str | Path | None = None,
    task: str | Path | Sequence[str | Path] | None = None,
    settings: CompareSettings = CompareSettings(),
    command: Sequence[str] | None = None,
    overwrite: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Measure every variant and write the report artifact `out` (report.md, report.json,
    pareto.png); returns (its path, the report). `task`: a classifier's labelled files, or a
    language model's task files (`pocketlm eval --task`'s formats). The first variant is the
    reference of the parity table (report["parity"])."""
    from pocketlm.evals.artifact_parity import parity_report

    if not paths:
        raise InputError("compare needs at least one model directory")
    facts = [variant_facts(p, tokens) for p in paths]  # every path checked before any run
    names = variant_names([str(p) for p in paths])
    tasks = _task_files(task)
    examples = _task_examples(tasks) if any(f["classifier"] for f in facts) else None
    if tasks and not all(f["classifier"] for f in facts):
        from pocketlm.evals.task_files import read_task

        for t in tasks:  # a bad task file fails before any variant runs
            read_task(t)
    specs = [_spec(f, settings, tokens, tasks, examples) for f in facts]
    config = {**asdict(settings), "tokens": str(tokens or ""), "task": ", ".join(tasks)}
    config["greedy_prompts"] = list(settings.greedy_prompts)  # as report.json reads back
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
            {"name": n, **f, **m, "notes": _notes(f, tokens)}
            for n, f, m in zip(names, facts, measured, strict=True)
        ]
        parity = parity_report(rows)
        for row in rows:  # items and token ids: what the parity was computed from
            row.pop("items", None)
            row.pop("greedy", None)
        report = compare_report(rows, config, parity)
        art.path("report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        art.path("report.md").write_text(format_markdown(report), encoding="utf-8")
        plot_report(report, art.path("pareto.png"))
        summary = {"variants": len(rows), "quality": report["quality"], "pareto": report["pareto"]}
        path = art.commit(summary)
    return path, report
