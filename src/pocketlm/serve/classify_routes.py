"""The classifier's endpoint: POST /v1/classify labels texts through one ClassifyBatcher, with the
limits and error rules of the generation routes (body size by the middleware, a cap on inputs,
the context check, 503 with Retry-After when the queue is full, OpenAI error bodies). A
classifier generates nothing: its /v1/completions and /v1/chat/completions answer a 400 saying
where to go, as a language model's /v1/classify does (routes.GenerationRoutes.classify).

Request: {"input": str | [str], "model"?: str}. Response: {"object": "list", "model": ...,
"data": [{"object": "classification", "index": i, "label": str, "probabilities": {label: p}}],
"usage": {"prompt_tokens": n, "total_tokens": n}}.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any

from pocketlm.common.errors import InputError
from pocketlm.engine.classify_batcher import ClassifyBatcher
from pocketlm.engine.scheduler import SchedulerBusy, SchedulerClosed
from pocketlm.serve.metrics import ServerMetrics
from pocketlm.serve.openai_protocol import ClassifyRequest, ProtocolError, parse_request
from pocketlm.serve.openai_responses import model_card
from pocketlm.serve.prompt_bound import PromptBound
from pocketlm.serve.routes import refusal
from pocketlm.tokenizer.tokenizer import Tokenizer

_DISCONNECT_POLL_S = 0.25


class ClassifyRoutes:
    """/v1/classify over one ClassifyBatcher (and the generation routes, refused)."""

    def __init__(
        self,
        batcher: ClassifyBatcher,
        tokenizer: Tokenizer,
        settings: Any,  # app.ServerSettings
        metrics: ServerMetrics,
        created: int,
        *,
        model_id: str | None = None,
    ) -> None:
        self.scheduler = batcher  # the app starts and stops it with the generation schedulers
        self.model_id = model_id or settings.model_id
        self.tokenizer = tokenizer
        self.settings = settings
        self.metrics = metrics
        self.created = created
        self.bound = PromptBound(tokenizer, batcher.context_length)

    def model_card(self) -> dict[str, Any]:
        """This model as /v1/models lists it, with its labels."""
        return {**model_card(self.model_id, self.created), "labels": list(self.scheduler.labels)}

    async def completions(self, request: Any) -> Any:
        """POST /v1/completions: refused, this model generates nothing."""
        raise self._classifier_only()

    async def chat_completions(self, request: Any) -> Any:
        """POST /v1/chat/completions: refused, this model generates nothing."""
        raise self._classifier_only()

    def _classifier_only(self) -> ProtocolError:
        return ProtocolError(
            f"this model ('{self.model_id}') is a classifier: POST /v1/classify with "
            '{"input": "some text"} to label texts; it generates no text',
            param="model",
            code="model_is_classifier",
        )

    async def classify(self, request: Any) -> Any:
        """POST /v1/classify."""
        req = parse_request(ClassifyRequest, await request.body())
        texts = req.inputs()
        for i, text in enumerate(texts):
            self.bound.check([text], f"input[{i}]" if len(texts) > 1 else "input")
        encoded = await asyncio.to_thread(self.tokenizer.encode_inputs, texts)
        for i, ids in enumerate(encoded):
            self._check_length(ids, f"input[{i}]" if len(texts) > 1 else "input")
        future = self._submit(encoded)
        predictions = await self._wait(request, future)
        if predictions is None:
            from starlette.responses import Response

            return Response(status_code=499)  # nobody is listening any more
        data = [
            {
                "object": "classification",
                "index": i,
                "label": p.label,
                "probabilities": p.probabilities,
            }
            for i, p in enumerate(predictions)
        ]
        tokens = sum(len(ids) for ids in encoded)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "model": self.model_id, "data": data, "usage": usage}

    def _check_length(self, ids: list[int], param: str) -> None:
        if not ids:
            raise ProtocolError(
                f"'{param}' holds no tokens: there is nothing to classify", param=param
            )
        context = self.scheduler.context_length
        if len(ids) > context:
            raise ProtocolError(
                f"This model's maximum context length is {context} tokens. However, your "
                f"{param} resulted in {len(ids)} tokens. Please reduce the length of the {param}.",
                param=param,
                code="context_length_exceeded",
            )

    def _submit(self, encoded: list[list[int]]) -> Future:
        try:
            return self.scheduler.submit(encoded)
        except InputError as exc:  # more inputs than this server's batch and queue hold
            raise ProtocolError(str(exc), param="input") from exc
        except (SchedulerBusy, SchedulerClosed) as exc:
            raise refusal(exc, self.metrics, self.settings.retry_after_s) from exc

    async def _wait(self, request: Any, future: Future) -> list | None:
        """The predictions, or None when the client went away (its request is then dropped)."""
        waiting = asyncio.wrap_future(future)
        try:
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(waiting), _DISCONNECT_POLL_S)
                except TimeoutError:
                    if await request.is_disconnected():
                        future.cancel()  # still queued: the worker skips it
                        return None
        except SchedulerClosed as exc:
            raise ProtocolError(
                str(exc), type="server_busy", code="shutting_down", status=503
            ) from exc
        except InputError as exc:
            raise ProtocolError(str(exc), param="input") from exc
        except Exception as exc:
            raise ProtocolError(
                f"classification failed: {exc}",
                type="server_error",
                code="classification_failed",
                status=500,
            ) from exc
