"""The generation endpoints: a validated request becomes n sequences on the scheduler, whose events
come back to the event loop and go out as one JSON response or as server-sent events.

A client that disconnects (or a task cancelled at shutdown) cancels its sequences, which frees
their slots at the scheduler's next step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pocketlm.common.errors import InputError
from pocketlm.engine.generation import TokenLogprob
from pocketlm.engine.scheduler import (
    BatchScheduler,
    GenerationRequest,
    SchedulerBusy,
    SchedulerClosed,
    SeqEvent,
)
from pocketlm.serve.metrics import ServerMetrics
from pocketlm.serve.openai_protocol import (
    COMPLETION_DEFAULT_MAX_TOKENS,
    ChatCompletionRequest,
    CompletionRequest,
    ProtocolError,
    error_body,
    parse_request,
)
from pocketlm.serve.openai_responses import (
    SSE_DONE,
    TokenTexts,
    chat_choice,
    chat_delta,
    chat_logprobs,
    completion_choice,
    completion_logprobs,
    echo_logprobs,
    envelope,
    join_logprobs,
    model_card,
    new_id,
    sse,
    usage,
)
from pocketlm.serve.prompt_bound import PromptBound
from pocketlm.tokenizer.tokenizer import Tokenizer

_DISCONNECT_POLL_S = 0.25


def refusal(exc: Exception, metrics: ServerMetrics, retry_after_s: int) -> ProtocolError:
    """The 503 for a scheduler's refusal: busy (queue_full, counted as rejected, with
    Retry-After) or closing (shutting_down)."""
    if isinstance(exc, SchedulerBusy):
        metrics.observe_rejected()
        return ProtocolError(
            f"the server is busy: {exc}; retry later",
            type="server_busy",
            code="queue_full",
            status=503,
            headers={"Retry-After": str(retry_after_s)},
        )
    return ProtocolError(str(exc), type="server_busy", code="shutting_down", status=503)


@dataclass
class _Choice:
    """What one sequence produced so far."""

    index: int
    prompt: int  # which prompt of the request (usage counts each prompt once)
    prompt_tokens: int
    texts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    completion_tokens: int = 0
    finish_reason: str | None = None
    text_offset: int = 0  # completions logprobs: characters streamed before the next token
    echo: tuple[str, list[int]] | None = None  # echo: the prompt's text and its listed tokens
    echo_skip: int = 0  # prompt tokens not listed (a <bos> the server put before a text prompt)
    prompt_logprobs: tuple[TokenLogprob | None, ...] = ()


@dataclass
class _Job:
    """A request in flight: its sequences, their events' queue and how to describe it."""

    kind: str  # "chat" or "completion"
    response_id: str
    created: int
    choices: list[_Choice]
    handles: list[GenerationRequest]
    events: asyncio.Queue
    want_logprobs: bool
    include_usage: bool

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()


class GenerationRoutes:
    """/v1/completions and /v1/chat/completions over one BatchScheduler."""

    def __init__(
        self,
        scheduler: BatchScheduler,
        tokenizer: Tokenizer,
        settings: Any,  # server.ServerSettings
        metrics: ServerMetrics,
        created: int,
        *,
        model_id: str | None = None,  # default: settings.model_id
        parent: str | None = None,  # an adapter's base model id
        adapter: int = -1,  # the adapter index on a scheduler that mixes adapters (-1: none)
    ) -> None:
        self.scheduler = scheduler
        self.model_id = model_id or settings.model_id
        self.parent = parent
        self.adapter = adapter
        self.tokenizer = tokenizer
        self.settings = settings
        self.metrics = metrics
        self.created = created
        self.texts = TokenTexts(tokenizer)
        # What a request leaves out: the model's generation_config.json values, where it has one.
        self.model_defaults = tokenizer.generation_defaults.sampling()
        self.bound = PromptBound(tokenizer, scheduler.context_length)

    def model_card(self) -> dict[str, Any]:
        """This model as /v1/models lists it."""
        return model_card(self.model_id, self.created, self.parent)

    # ---- endpoints ----------------------------------------------------------------------------
    async def completions(self, request: Any) -> Any:
        """POST /v1/completions (prompts as text or token ids; echo scores the prompt)."""
        req = parse_request(CompletionRequest, await request.body())
        prompts = req.prompts()
        texts = [p for p in prompts if isinstance(p, str)]
        for prompt in texts:  # each prompt is a sequence of its own
            self.bound.check([prompt], "prompt")
        encoded = iter(await asyncio.to_thread(self.tokenizer.encode_batch, texts))
        head = [self.tokenizer.bos_id] if self.tokenizer.add_bos else []
        sequences, echoes = [], []
        for p, prompt in enumerate(prompts):
            if isinstance(prompt, str):  # text: <bos> first where the model uses one
                ids, skip = self._fit([*head, *next(encoded)], "prompt"), len(head)
            else:  # token ids: as given
                ids, skip = self._fit(self._check_ids(prompt), "prompt"), 0
            limit = req.max_tokens or self.model_defaults.get(
                "max_new_tokens", COMPLETION_DEFAULT_MAX_TOKENS
            )
            text = prompt if isinstance(prompt, str) else self.tokenizer.decode(ids)
            for i in range(req.n):
                choice = p * req.n + i
                params = req.sampling_params(self._cap(limit, ids), choice, self.model_defaults)
                sequences.append((ids, params, req.logprobs, p))
                echoes.append((text, ids, skip) if req.echo else None)
        echo = (req.logprobs or 0) if req.echo else None
        job = self._start(
            "completion",
            sequences,
            req.logprobs is not None,
            req.include_usage(),
            echo=echo,
            generate=req.max_tokens != 0,
        )
        for choice, spec in zip(job.choices, echoes, strict=True):
            if spec is not None:
                text, ids, skip = spec
                choice.echo, choice.echo_skip = (text, ids[skip:]), skip
        return await self._respond(request, job, req.stream)

    async def chat_completions(self, request: Any) -> Any:
        """POST /v1/chat/completions."""
        req = parse_request(ChatCompletionRequest, await request.body())
        # encode_chat renders the model's chat template (bos included where the model has one)
        # and keeps control-token text typed in messages as plain text.
        messages = req.template_messages()
        self.bound.check([m["content"] for m in messages], "messages")
        try:
            ids = await asyncio.to_thread(self.tokenizer.encode_chat, messages)  # long: slow
        except InputError as exc:  # the template refuses the messages, or there is none
            raise ProtocolError(str(exc), param="messages", code="invalid_messages") from exc
        ids = self._fit(ids, "messages")
        limit = req.token_limit() or self.model_defaults.get("max_new_tokens")
        max_new = self._cap(limit, ids)
        logprobs = req.logprob_count()
        sequences = [
            (ids, req.sampling_params(max_new, i, self.model_defaults), logprobs, 0)
            for i in range(req.n)
        ]
        job = self._start("chat", sequences, logprobs is not None, req.include_usage())
        return await self._respond(request, job, req.stream)

    async def classify(self, request: Any) -> Any:
        """POST /v1/classify: refused, this model generates text and labels nothing."""
        raise ProtocolError(
            f"the model '{self.model_id}' is a language model, not a classifier: it answers "
            "/v1/completions and /v1/chat/completions; /v1/classify needs a served classifier",
            param="model",
            code="model_not_classifier",
        )

    # ---- helpers --------------------------------------------------------------------------------
    def _fit(self, ids: list[int], param: str) -> list[int]:
        context = self.scheduler.context_length
        if len(ids) > context:
            raise ProtocolError(
                f"This model's maximum context length is {context} tokens. However, your "
                f"{param} resulted in {len(ids)} tokens. Please reduce the length of the {param}.",
                param=param,
                code="context_length_exceeded",
            )
        return ids

    def _check_ids(self, ids: list[int]) -> list[int]:
        vocab = self.scheduler.backend.vocab_size
        bad = next((i for i in ids if not 0 <= i < vocab), None)
        if bad is not None:
            raise ProtocolError(
                f"prompt token id {bad} is outside the vocabulary of {vocab}", param="prompt"
            )
        return list(ids)

    def _cap(self, limit: int | None, ids: list[int]) -> int:
        room = self.scheduler.context_length - len(ids) + 1
        return room if limit is None else max(1, min(limit, room))

    def _start(
        self,
        kind: str,
        sequences: list,
        want_logprobs: bool,
        include_usage: bool,
        *,
        echo: int | None = None,
        generate: bool = True,
    ) -> _Job:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink_for(index: int) -> Callable[[SeqEvent], None]:
            def sink(event: SeqEvent) -> None:
                loop.call_soon_threadsafe(events.put_nowait, (index, event))

            return sink

        specs = [(ids, params, lp, sink_for(i)) for i, (ids, params, lp, _) in enumerate(sequences)]
        try:
            more: dict[str, Any] = {"adapter": self.adapter} if self.adapter != -1 else {}
            if echo is not None:
                more.update(echo=echo, generate=generate)
            handles = self.scheduler.submit_many(specs, **more)
        except (SchedulerBusy, SchedulerClosed) as exc:
            raise refusal(exc, self.metrics, self.settings.retry_after_s) from exc
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        choices = [_Choice(i, p, len(ids)) for i, (ids, _, _, p) in enumerate(sequences)]
        return _Job(
            kind,
            new_id(prefix),
            int(time.time()),
            choices,
            handles,
            events,
            want_logprobs,
            include_usage,
        )

    def _record(self, job: _Job, index: int, event: SeqEvent) -> _Choice:
        choice = job.choices[index]
        handle = job.handles[index]
        if event.token_ids and choice.completion_tokens == 0 and handle.first_token_at:
            self.metrics.observe_first_token(handle.first_token_at - handle.submitted_at)
        choice.completion_tokens = event.completion_tokens
        if event.error is not None:
            job.cancel()
            busy = "shutting down" in event.error
            raise ProtocolError(
                event.error,
                type="server_busy" if busy else "server_error",
                code="shutting_down" if busy else "generation_failed",
                status=503 if busy else 500,
            )
        choice.texts.append(event.text)
        if event.prompt_logprobs is not None:
            choice.prompt_logprobs = event.prompt_logprobs
        if event.logprob is not None:
            choice.logprobs.append(event.logprob)
        choice.finish_reason = event.finish_reason
        return choice

    async def _next_event(self, request: Any, job: _Job) -> tuple[int, SeqEvent] | None:
        """The next event, or None when the client has gone away (non-streaming waits)."""
        while True:
            try:
                return await asyncio.wait_for(job.events.get(), _DISCONNECT_POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    return None

    async def _respond(self, request: Any, job: _Job, stream: bool) -> Any:
        if stream:
            from starlette.background import BackgroundTask
            from starlette.responses import StreamingResponse

            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(
                self._stream(job),
                media_type="text/event-stream",
                headers=headers,
                background=BackgroundTask(job.cancel),  # also when the stream never started
            )
        try:
            remaining = len(job.choices)
            while remaining:
                got = await self._next_event(request, job)
                if got is None:
                    from starlette.responses import Response

                    return Response(status_code=499)  # nobody is listening any more
                if self._record(job, *got).finish_reason is not None:
                    remaining -= 1
        finally:
            job.cancel()
        return self._whole(job)

    def _whole(self, job: _Job) -> dict[str, Any]:
        choices = []
        for c in job.choices:
            text = "".join(c.texts)
            if job.kind == "chat":
                lp = chat_logprobs(c.logprobs, self.texts) if job.want_logprobs else None
                choices.append(chat_choice(c.index, text, c.finish_reason, lp))
            else:
                lp = completion_logprobs(c.logprobs, self.texts)[0] if job.want_logprobs else None
                if c.echo is not None:
                    text = c.echo[0] + text
                    if lp is not None:
                        lp = self._echoed(c, lp)
                choices.append(completion_choice(c.index, text, c.finish_reason, lp))
        obj = "chat.completion" if job.kind == "chat" else "text_completion"
        return envelope(obj, job.response_id, job.created, self.model_id, choices, self._usage(job))

    def _echoed(self, choice: _Choice, completion: dict[str, Any]) -> dict[str, Any]:
        """The prompt's logprobs (its listed tokens) before the completion's."""
        assert choice.echo is not None
        listed = choice.prompt_logprobs[choice.echo_skip :]
        prompt, offset = echo_logprobs(choice.echo[1], listed, self.texts)
        completion = {**completion, "text_offset": [o + offset for o in completion["text_offset"]]}
        return join_logprobs(prompt, completion)

    @staticmethod
    def _usage(job: _Job) -> dict[str, int]:
        prompts = {c.prompt: c.prompt_tokens for c in job.choices}  # each prompt counted once
        return usage(sum(prompts.values()), sum(c.completion_tokens for c in job.choices))

    def _chunk(self, job: _Job, choices: list[dict[str, Any]], usage_obj=None) -> bytes:
        obj = "chat.completion.chunk" if job.kind == "chat" else "text_completion"
        return sse(envelope(obj, job.response_id, job.created, self.model_id, choices, usage_obj))

    async def _stream(self, job: _Job) -> AsyncIterator[bytes]:
        try:
            if job.kind == "chat":
                for c in job.choices:
                    yield self._chunk(
                        job, [chat_delta(c.index, {"role": "assistant", "content": ""})]
                    )
            remaining = len(job.choices)
            while remaining:
                index, event = await job.events.get()
                try:
                    choice = self._record(job, index, event)
                except ProtocolError as exc:
                    yield sse(error_body(exc.message, type=exc.type, code=exc.code))
                    break
                if choice.finish_reason is not None:
                    remaining -= 1
                if event.text or event.logprob is not None or event.finish_reason is not None:
                    yield self._chunk(job, [self._delta(job, choice, event)])
            else:
                if job.include_usage:
                    yield self._chunk(job, [], self._usage(job))
            yield SSE_DONE
        finally:
            job.cancel()  # a disconnect or shutdown cancels the stream here: free the slots

    def _delta(self, job: _Job, choice: _Choice, event: SeqEvent) -> dict[str, Any]:
        entries = [event.logprob] if event.logprob is not None else []
        if job.kind == "chat":
            lp = chat_logprobs(entries, self.texts) if job.want_logprobs else None
            delta = {"content": event.text} if event.text else {}
            return chat_delta(choice.index, delta, event.finish_reason, lp)
        lp = None
        if job.want_logprobs:
            lp, choice.text_offset = completion_logprobs(entries, self.texts, choice.text_offset)
        return completion_choice(choice.index, event.text, event.finish_reason, lp)
