"""The OpenAI-compatible request side: validated request models and their sampling settings.

Requests are parsed strictly (a number where a number belongs, finite, in range); every problem
raises `ProtocolError`, which the server turns into an OpenAI-style error body
`{"error": {"message", "type", "param", "code"}}` naming the parameter, with status 400.
Unknown fields are ignored (clients send many); known but unsupported features with a
non-default value (tools, logit_bias, presence penalties, suffix) are refused by name.
/v1/completions takes a prompt as text or token ids (one or a list of either) and `echo` with
`logprobs`: the prompt's tokens come back with their log-probabilities (`max_tokens` 0: only
those, as lm-evaluation-harness's local-completions asks to score a continuation).
A classifier's requests (POST /v1/classify) are validated the same way (ClassifyRequest).
Needs pydantic (installed with fastapi: `pip install 'pocketlm[serve]'`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pocketlm.common.errors import ConfigError
from pocketlm.engine.sampling import SamplingParams

MAX_N = 8  # choices per request
MAX_PROMPTS = 16  # prompts per /v1/completions request
MAX_CLASSIFY_INPUTS = 32  # texts per /v1/classify request
MAX_STOPS = 16
MAX_SEED = 2**63 - 1
COMPLETION_DEFAULT_MAX_TOKENS = 16  # as OpenAI's /v1/completions
GREEDY_BELOW = 1e-5  # temperatures below this sample greedily (as vLLM does)
# What a request that leaves a sampling field out gets when the model sets no default.
OPENAI_DEFAULTS = {
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
}


class ProtocolError(Exception):
    """A request the server refuses, with the HTTP status and OpenAI error fields to send."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status
        self.type = type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The OpenAI error body."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """{"error": {"message", "type", "param", "code"}} as OpenAI sends it."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_Float = dict(allow_inf_nan=False)


class _Sampling(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    max_tokens: int | None = Field(None, ge=0, le=MAX_SEED)  # 0: completions' echo only
    temperature: float | None = Field(None, ge=0, le=2, **_Float)
    top_p: float | None = Field(None, gt=0, le=1, **_Float)
    top_k: int | None = Field(None, ge=0, le=MAX_SEED)  # extension (vLLM, llama.cpp)
    min_p: float | None = Field(None, ge=0, lt=1, **_Float)  # extension
    repetition_penalty: float | None = Field(None, ge=0.01, le=100, **_Float)  # extension
    ignore_eos: bool = False  # extension (vLLM, llama.cpp): only max_tokens or a stop string ends
    presence_penalty: float | None = Field(None, ge=-2, le=2, **_Float)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, **_Float)
    logit_bias: dict[str, Any] | None = None
    stop: str | list[str] | None = Field(None)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def check_supported(self) -> None:
        """ProtocolError for settings this server cannot honour."""
        if self.max_tokens == 0 and not getattr(self, "echo", False):
            raise ProtocolError(
                "'max_tokens' must be >= 1 (0 only with 'echo': scoring the prompt)",
                param="max_tokens",
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise ProtocolError(
                    f"'{name}' is not supported by this server (use 'repetition_penalty')",
                    param=name,
                    code="unsupported_parameter",
                )
        if self.logit_bias:
            raise ProtocolError(
                "'logit_bias' is not supported by this server",
                param="logit_bias",
                code="unsupported_parameter",
            )
        stops = self.stop_list()
        if len(stops) > MAX_STOPS:
            raise ProtocolError(f"'stop' takes at most {MAX_STOPS} strings", param="stop")
        if any(not s for s in stops):
            raise ProtocolError("'stop' strings must not be empty", param="stop")

    def stop_list(self) -> tuple[str, ...]:
        """The stop strings as a tuple."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        """True when a streamed response should end with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(
        self, max_new_tokens: int, choice: int = 0, defaults: Mapping[str, Any] | None = None
    ) -> SamplingParams:
        """SamplingParams for choice number `choice` (seed + choice, so choices differ).

        A field the request leaves out takes `defaults` (the model's generation_config.json),
        else OpenAI's default."""
        seed = None if self.seed is None else (self.seed + choice) % (MAX_SEED + 1)
        values = {**OPENAI_DEFAULTS, **(defaults or {})}
        for name in OPENAI_DEFAULTS:
            if getattr(self, name) is not None:
                values[name] = getattr(self, name)
        if values["temperature"] < GREEDY_BELOW:  # dividing logits by it would overflow float32
            values["temperature"] = 0.0
        try:
            return SamplingParams(
                max_new_tokens=max_new_tokens,
                temperature=values["temperature"],
                top_k=values["top_k"],
                top_p=values["top_p"],
                min_p=values["min_p"],
                repetition_penalty=values["repetition_penalty"],
                seed=seed,
                stop=self.stop_list(),
                ignore_eos=self.ignore_eos,
            )
        except ConfigError as exc:  # a range pydantic did not cover: still the client's fault
            name = str(exc).split(" ", 1)[0].removeprefix("sampling.")
            raise ProtocolError(str(exc).removeprefix("sampling."), param=name) from exc


class StreamOptions(BaseModel):
    """`stream_options`: include_usage adds a last chunk with the token counts."""

    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool | None = None


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    # text, token ids, or a list of either (OpenAI's four forms)
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_N)

    def check_supported(self) -> None:
        """ProtocolError for settings this server cannot honour."""
        super().check_supported()
        if self.echo and self.stream:
            raise ProtocolError("'echo' with 'stream' is not supported", param="echo")
        if self.suffix:
            raise ProtocolError("'suffix' is not supported by this server", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise ProtocolError("'best_of' other than 'n' is not supported", param="best_of")
        prompts = self.prompts()
        if not prompts:
            raise ProtocolError("'prompt' must not be an empty list", param="prompt")
        if any(isinstance(p, list) and not p for p in prompts):
            raise ProtocolError("a token-id prompt must not be empty", param="prompt")
        if len(prompts) > MAX_PROMPTS:
            raise ProtocolError(f"'prompt' takes at most {MAX_PROMPTS} strings", param="prompt")
        if len(prompts) * self.n > MAX_N * 2:
            raise ProtocolError(
                f"{len(prompts)} prompts x n={self.n} is more than {MAX_N * 2} choices",
                param="n",
            )

    def prompts(self) -> list[str | list[int]]:
        """The prompt(s) as a list: each a text or a list of token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and all(isinstance(t, int) for t in self.prompt):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]


class ContentPart(BaseModel):
    """One part of a message's content; only text parts are understood."""

    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One chat message; "developer" is read as "system"."""

    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None

    def text(self) -> str:
        """The content as one string."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def template_role(self) -> str:
        """The role the chat template knows."""
        return "system" if self.role == "developer" else self.role


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_SEED)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def check_supported(self) -> None:
        """ProtocolError for settings this server cannot honour."""
        super().check_supported()
        for name in ("tools", "functions"):
            if getattr(self, name):
                raise ProtocolError(
                    f"'{name}' (function calling) is not supported by this server",
                    param=name,
                    code="unsupported_parameter",
                )
        if self.tool_choice not in (None, "none", "auto"):
            raise ProtocolError("'tool_choice' is not supported", param="tool_choice")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise ProtocolError(
                "only response_format {'type': 'text'} is supported", param="response_format"
            )
        if self.top_logprobs is not None and not self.logprobs:
            raise ProtocolError("'top_logprobs' needs 'logprobs': true", param="top_logprobs")

    def token_limit(self) -> int | None:
        """max_completion_tokens or max_tokens (None: the room left in the context)."""
        return self.max_completion_tokens or self.max_tokens

    def template_messages(self) -> list[dict[str, str]]:
        """Messages as the chat template takes them."""
        return [{"role": m.template_role(), "content": m.text()} for m in self.messages]

    def logprob_count(self) -> int | None:
        """None (off) or how many alternatives to list per token."""
        return (self.top_logprobs or 0) if self.logprobs else None


class ClassifyRequest(BaseModel):
    """POST /v1/classify (PocketLM's own, shaped as OpenAI's embeddings): `input`, one text or a
    list of texts, each labelled by the served classifier."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    input: str | list[str]
    user: str | None = None

    def check_supported(self) -> None:
        """ProtocolError for an empty list or more than MAX_CLASSIFY_INPUTS texts."""
        inputs = self.inputs()
        if not inputs:
            raise ProtocolError("'input' must not be an empty list", param="input")
        if len(inputs) > MAX_CLASSIFY_INPUTS:
            raise ProtocolError(f"'input' takes at most {MAX_CLASSIFY_INPUTS} texts", param="input")

    def inputs(self) -> list[str]:
        """The input(s) as a list."""
        return [self.input] if isinstance(self.input, str) else list(self.input)


_Sampling.model_rebuild()
CompletionRequest.model_rebuild()
ChatCompletionRequest.model_rebuild()


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes) -> Any:
    """The JSON value of a request body (NaN/Infinity refused); ProtocolError when it is not JSON."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(
            f"the request body is not valid JSON ({exc})", code="invalid_json"
        ) from exc


def _lone_surrogate(text: str) -> int | None:
    """Where `text` holds a lone UTF-16 surrogate (JSON allows "\\ud800"; Unicode text does not)."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def check_unicode(data: Any) -> None:
    """ProtocolError naming the field when any string in decoded JSON holds a lone surrogate.

    json.loads turns an escaped pair into one character but keeps a lone escape as a surrogate,
    which no tokenizer can encode: refuse it here, with where it is, rather than fail later.
    """
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if (at := _lone_surrogate(key)) is not None:
                    _surrogate_error(loc, at, "a key")
                stack.append(((*loc, key), item))
        elif isinstance(value, list):
            stack.extend(((*loc, i), item) for i, item in enumerate(value))
        elif isinstance(value, str) and (at := _lone_surrogate(value)) is not None:
            _surrogate_error(loc, at, "the text")


def _surrogate_error(loc: tuple[Any, ...], at: int, what: str) -> None:
    param = _param_name(loc)
    where = f"'{param}'" if param else "the request body"
    raise ProtocolError(
        f"invalid value for {where}: {what} holds a lone UTF-16 surrogate at character {at}, "
        "which is not Unicode text (escape a character outside the BMP as a surrogate pair)",
        param=param,
        code="invalid_unicode",
    )


def _param_name(loc: tuple[Any, ...]) -> str | None:
    """The parameter a pydantic error location points at, e.g. 'temperature', 'messages[0].role'."""
    if not loc:
        return None
    name = str(loc[0])
    if name == "messages" and len(loc) > 1 and isinstance(loc[1], int):
        name += f"[{loc[1]}]"
        if len(loc) > 2 and loc[2] in ("role", "content", "name"):
            name += f".{loc[2]}"
    return name


_Request = TypeVar("_Request", bound=BaseModel)


def parse_request(model: type[_Request], body: bytes) -> _Request:
    """A validated request of type `model` from a JSON body; ProtocolError (400) otherwise."""
    data = parse_json(body)
    if not isinstance(data, dict):
        raise ProtocolError("the request body must be a JSON object", code="invalid_json")
    check_unicode(data)
    try:
        request = model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        param = _param_name(tuple(error.get("loc", ())))
        message = error.get("msg", "invalid value")
        if error.get("type") == "missing":
            message = f"'{param}' is required"
        else:
            message = f"invalid value for '{param}': {message}"
        raise ProtocolError(message, param=param) from exc
    request.check_supported()
    return request


def finite_or_none(value: float) -> float | None:
    """The value when finite (JSON has no inf/NaN), else None."""
    return value if math.isfinite(value) else None
