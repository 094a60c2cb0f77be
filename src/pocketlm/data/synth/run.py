"""`pocketlm synth`: a fine-tuning data set written by a teacher behind an OpenAI-compatible API.

Prompts come from files and/or from seed topics (the teacher first writes N requests per topic);
each unique prompt is sent once to /v1/chat/completions, a few at a time, retried with backoff,
under a rate limit. The output is a `synth` artifact:

    data.jsonl     chat records {"id", "messages": [..., {"role": "assistant", ...}], "teacher":
                   {"model", "finish_reason", "usage", "topic"?, "logprobs"?}}: `pocketlm
                   finetune --data OUT/data.jsonl` (or --data OUT) reads them as they are
    requests.log   the cost/time log, one JSON line per finished request (ledger.py)
    manifest.json  settings, prompt files as parents, totals of this run and of all runs

Resuming: while running, the files live in a staging directory next to OUT (.OUT.synth-partial)
and are appended to line by line (fsynced); the manifest is written and the directory renamed to
OUT at the end. A killed run leaves the staging directory; the same command continues it,
sending only the prompts not answered yet. A finished OUT is reopened the same way when a re-run
has prompts it lacks, or failures to retry. A re-run must keep the generation settings (model,
sampling, system prompt, logprobs): they are checked against the first run's.
"""

from __future__ import annotations

import datetime as _dt
import os
import random
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketlm.common.errors import ArtifactError, ConfigError, PocketLMError
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import ArtifactWriter, parent_ref, read_manifest, verify_files
from pocketlm.data.synth.backoff import RetryPolicy
from pocketlm.data.synth.clock import Clock, SystemClock
from pocketlm.data.synth.config import SynthConfig
from pocketlm.data.synth.http_client import ChatClient, endpoint_url, public_url
from pocketlm.data.synth.ledger import JsonlFile, SynthState, load_state
from pocketlm.data.synth.prompts import read_prompt_files, unique_prompts
from pocketlm.data.synth.rate_limit import RateLimiter
from pocketlm.data.synth.session import Progress, Session
from pocketlm.data.synth.tally import Price, totals

KIND = "synth"
DATA_FILE = "data.jsonl"
LOG_FILE = "requests.log"
_log = get_logger("pocketlm.synth")


@dataclass(frozen=True)
class SynthResult:
    """The artifact written and its summary."""

    path: Path
    summary: dict[str, Any]


def synthesize(
    config: SynthConfig,
    out: str | Path,
    *,
    api_key: str | None = None,
    overwrite: bool = False,
    command: list[str] | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    on_progress: Progress | None = None,
) -> SynthResult:
    """Ask the teacher, write (or continue) the synth artifact at `out`; its path and summary."""
    config.check()
    from_files = read_prompt_files(config.prompts, config.system)  # bad input fails first
    out = Path(out)
    staging = f".{out.name}.synth-partial"
    _prepare(out, out.parent / staging, overwrite)
    writer = ArtifactWriter(
        out,
        KIND,
        config=config.recorded(),
        parents=[parent_ref(p) for p in config.prompts],
        command=command,
        overwrite=True,  # _prepare decided: out is ours to replace
        staging=staging,
    )
    data, log = JsonlFile(writer.path(DATA_FILE)), JsonlFile(writer.path(LOG_FILE))
    stop = threading.Event()
    clock = clock or SystemClock(stop)
    try:
        state = load_state(data, log)
        _check_settings(state, config, out, log)
        run = state.runs + 1
        started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        log.append(
            {
                "kind": "run",
                "run": run,
                "started_at": started,
                "teacher": public_url(config.teacher_url),
            }
        )
        client = ChatClient(
            endpoint_url(config.teacher_url),
            api_key,
            config.timeout_s,
            RetryPolicy(max_retries=config.max_retries),
            RateLimiter(config.requests_per_minute, clock) if config.requests_per_minute else None,
            clock,
            rng or random.Random(),
            stop,
        )
        session = Session(config, client, data, log, state, run, stop, on_progress)
        t0 = clock.now()
        prompts, duplicates = unique_prompts(from_files + session.topic_prompts())
        session.answer([p for p in prompts if p.id not in state.answered])
        elapsed = clock.now() - t0
    finally:
        data.close()
        log.close()
    price = Price.parse(config.price_per_1k_tokens) if config.price_per_1k_tokens else None
    this_run = [e for e in state.entries if e.get("run") == run]
    summary = {
        "records": state.records,
        "prompts": {"unique": len(prompts), "duplicates_dropped": duplicates},
        "this_run": totals(this_run, price=price, elapsed_s=elapsed),
        "all_runs": {**totals(state.entries, price=price), "runs": run},
    }
    if state.records == 0:
        raise PocketLMError(
            f"the teacher gave no usable answer ({summary['this_run']['answers']}); "
            f"see {writer.tmp / LOG_FILE}; the same command retries"
        )
    if summary["this_run"]["failures"]:
        _log.warning(
            "%d requests failed (see requests.log): run the same command again to retry them",
            summary["this_run"]["failures"],
        )
    return SynthResult(writer.commit(summary), summary)


def _prepare(out: Path, staging: Path, overwrite: bool) -> None:
    """Make `staging` what this run continues: nothing (a fresh start), a killed run's files,
    or a copy of a finished synth output at `out`; refuse an `out` that is something else."""
    if overwrite:
        shutil.rmtree(staging, ignore_errors=True)
        return
    if staging.exists():
        _log.info("continuing the interrupted run in %s", staging)
        return
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    try:
        read_manifest(out, kind=KIND)
        verify_files(out, check_hashes=False)
    except ArtifactError as exc:
        raise ArtifactError(
            f"{out} already exists and is not a synth output to continue ({exc}); "
            "choose another --out or pass --overwrite"
        ) from None
    # copied (not linked: this run appends) into a temp dir renamed whole, so a kill mid-copy
    # leaves no half staging directory behind
    tmp = out.parent / f"{staging.name}.copy-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in (DATA_FILE, LOG_FILE):
        if (out / name).is_file():
            shutil.copy2(out / name, tmp / name)
    os.replace(tmp, staging)
    _log.info("continuing %s", out)


def _check_settings(state: SynthState, config: SynthConfig, out: Path, log: JsonlFile) -> None:
    """Record the settings in a new output; refuse to continue one made with other settings."""
    wanted = config.generation()
    if state.settings is None:
        log.append({"kind": "settings", "settings": wanted})
        return
    changed = [
        f"{key}: {state.settings.get(key)!r} then, {value!r} now"
        for key, value in wanted.items()
        if state.settings.get(key) != value
    ]
    if changed:
        raise ConfigError(
            f"{out} holds a synth run made with other settings ({'; '.join(changed)}); "
            "use the same settings to continue it, or another --out, or --overwrite"
        )
