"""One synth run's requests: the seed topics' prompt lists, then the answers, each result
written (data.jsonl, requests.log) on the caller's thread as it arrives."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pocketlm.common.errors import ConfigError
from pocketlm.data.synth.config import SynthConfig
from pocketlm.data.synth.http_client import ChatClient, Exchange
from pocketlm.data.synth.ledger import JsonlFile, SynthState, answer_key
from pocketlm.data.synth.prompts import (
    Prompt,
    make_prompt,
    parse_topic_reply,
    topic_id,
    topic_messages,
)
from pocketlm.data.synth.replies import Reply, ReplyProblem, parse_reply
from pocketlm.data.synth.workers import run_pool

Progress = Callable[[str, int, int], None]  # (phase, requests finished, requests to send)


@dataclass(frozen=True)
class Answer:
    """What a worker got for one request."""

    exchange: Exchange
    reply: Reply | None
    problem: str
    seconds: float


class Session:
    """One run's requests: topic requests, then answers; results written on the caller's thread."""

    def __init__(
        self,
        config: SynthConfig,
        client: ChatClient,
        data: JsonlFile,
        log: JsonlFile,
        state: SynthState,
        run: int,
        stop: threading.Event,
        on_progress: Progress | None,
    ) -> None:
        self.config, self.client, self.data, self.log = config, client, data, log
        self.state, self.run, self.stop = state, run, stop
        self.on_progress = on_progress or (lambda phase, done, total: None)
        self._done = 0

    def _ask(self, messages: list[dict[str, str]], logprobs: bool) -> Answer:
        t0 = self.client.clock.now()
        exchange = self.client.complete(self.config.payload(messages, logprobs))
        reply, problem = None, exchange.error
        if exchange.data is not None:
            try:
                reply = parse_reply(exchange.data)
            except ReplyProblem as exc:
                problem = f"unreadable reply: {exc}"
        return Answer(exchange, reply, problem, self.client.clock.now() - t0)

    def _pool(self, phase: str, jobs: list, work: Callable, handle: Callable) -> None:
        self._done = 0

        def handled(job, answer: Answer) -> None:
            ex = answer.exchange
            if ex.cancelled:
                return
            if ex.fatal:
                raise ConfigError(
                    f"the teacher refused the request: {ex.error}; {_fatal_hint(ex.error)}"
                )
            handle(job, answer)
            self._done += 1
            self.on_progress(phase, self._done, len(jobs))

        run_pool(jobs, work, handled, concurrency=self.config.concurrency, stop=self.stop)

    def _entry(self, kind: str, rid: str, outcome: str, answer: Answer) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "kind": kind,
            "id": rid,
            "outcome": outcome,
            "run": self.run,
            "attempts": answer.exchange.attempts,
            "seconds": round(answer.seconds, 3),
        }
        reply = answer.reply
        if reply is not None and reply.prompt_tokens is not None:
            entry["prompt_tokens"] = reply.prompt_tokens
        if reply is not None and reply.completion_tokens is not None:
            entry["completion_tokens"] = reply.completion_tokens
        if outcome == "failed":
            entry["error"] = answer.problem
        return entry

    def _write_log(self, entry: dict[str, Any]) -> None:
        self.log.append(entry)
        self.state.entries.append(entry)

    # ---- seed topics -> prompts --------------------------------------------------------------
    def topic_prompts(self) -> list[Prompt]:
        """The prompts the teacher wrote for each seed topic (asked once per output)."""
        n = self.config.prompts_per_topic
        todo = [t for t in self.config.seed_topics if topic_id(t, n) not in self.state.topics]

        def handle(topic: str, answer: Answer) -> None:
            lines = parse_topic_reply(answer.reply.text, n) if answer.reply else []
            outcome = "ok" if lines else ("failed" if answer.reply is None else "empty")
            entry = self._entry("topic", topic_id(topic, n), outcome, answer)
            entry.update(topic=topic, prompts=lines)
            self._write_log(entry)
            if lines:
                self.state.topics[entry["id"]] = lines

        if todo:
            work = lambda topic: self._ask(topic_messages(topic, n), logprobs=False)  # noqa: E731
            self._pool("topics", todo, work, handle)
        out = []
        for topic in self.config.seed_topics:
            for line in self.state.topics.get(topic_id(topic, n), []):
                messages = [{"role": "user", "content": line}]
                out.append(make_prompt(messages, self.config.system, f"topic:{topic}", topic))
        return out

    # ---- answers -----------------------------------------------------------------------------
    def answer(self, prompts: list[Prompt]) -> None:
        """Send each prompt, write each answer kept, log every outcome."""
        work = lambda prompt: self._ask(prompt.messages, logprobs=True)  # noqa: E731
        self._pool("answers", prompts, work, self._handle_answer)

    def _handle_answer(self, prompt: Prompt, answer: Answer) -> None:
        reply = answer.reply
        if reply is None:
            outcome = "failed"
        elif reply.finish_reason == "length" and not self.config.keep_truncated:
            outcome = "truncated"
        elif not reply.text.strip():
            outcome = "empty"
        elif answer_key(reply.text) in self.state.answer_keys:
            outcome = "duplicate_answer"
        else:
            outcome = "kept"
            self.data.append(self._record(prompt, reply))  # before its log line: see ledger.py
            self.state.answer_keys.add(answer_key(reply.text))
            self.state.records += 1
        self._write_log(self._entry("answer", prompt.id, outcome, answer))
        if outcome != "failed":
            self.state.answered.add(prompt.id)

    def _record(self, prompt: Prompt, reply: Reply) -> dict[str, Any]:
        teacher: dict[str, Any] = {
            "model": reply.model or self.config.model,
            "finish_reason": reply.finish_reason,
        }
        usage = {
            k: v
            for k, v in (
                ("prompt_tokens", reply.prompt_tokens),
                ("completion_tokens", reply.completion_tokens),
            )
            if v is not None
        }
        if usage:
            teacher["usage"] = usage
        if prompt.topic is not None:
            teacher["topic"] = prompt.topic
        if reply.logprobs is not None:
            teacher["logprobs"] = reply.logprobs
        messages = [*prompt.messages, {"role": "assistant", "content": reply.text}]
        return {"id": prompt.id, "messages": messages, "teacher": teacher}


def _fatal_hint(error: str) -> str:
    if error.startswith(("HTTP 401", "HTTP 403")):
        return "check the API key (--api-key-file, or the variable --api-key-env names)"
    if error.startswith("HTTP 3"):
        return "give --teacher-url the address it redirects to"
    return "check --teacher-url (it must serve /v1/chat/completions) and --model"
