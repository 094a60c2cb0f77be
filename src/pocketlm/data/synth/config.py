"""What `pocketlm synth` asks which teacher, and how hard it pushes it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pocketlm.common.errors import ConfigError
from pocketlm.data.synth.http_client import endpoint_url, public_url
from pocketlm.data.synth.tally import Price

MAX_TOP_LOGPROBS = 20  # OpenAI's limit (and PocketLM's server's)


@dataclass(frozen=True)
class SynthConfig:
    """What to ask which teacher, and how hard to push it."""

    teacher_url: str
    prompts: tuple[str, ...] = ()  # prompt files
    seed_topics: tuple[str, ...] = ()
    prompts_per_topic: int = 10
    model: str | None = None  # the request's "model" (None: left out, the server's default)
    system: str | None = None  # a system prompt for prompts without one (kept in the records)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    top_logprobs: int = 0  # K > 0: ask for the top-K log-probabilities of every answer token
    keep_truncated: bool = False  # keep answers cut by max_tokens (finish_reason "length")
    concurrency: int = 4
    requests_per_minute: float = 0.0  # 0: no limit
    max_retries: int = 6
    timeout_s: float = 120.0
    price_per_1k_tokens: tuple[float, ...] = ()  # (both) or (input, output)

    def check(self) -> None:
        """Raise ConfigError naming the first bad setting."""
        endpoint_url(self.teacher_url)
        if not self.prompts and not self.seed_topics:
            raise ConfigError("give --prompts FILE... or --seed-topics TOPIC... (or both)")
        if any(not t.strip() for t in self.seed_topics):
            raise ConfigError("a --seed-topics topic is empty")
        checks = (
            (self.prompts_per_topic >= 1, "--prompts-per-topic must be at least 1"),
            (self.concurrency >= 1, "--concurrency must be at least 1"),
            (self.requests_per_minute >= 0, "--requests-per-minute must be >= 0 (0: no limit)"),
            (self.max_retries >= 0, "--max-retries must be >= 0"),
            (self.timeout_s > 0, "--timeout must be above 0 seconds"),
            (self.max_tokens is None or self.max_tokens >= 1, "--max-tokens must be at least 1"),
            (
                0 <= self.top_logprobs <= MAX_TOP_LOGPROBS,
                f"--top-logprobs must be in 0..{MAX_TOP_LOGPROBS}",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.price_per_1k_tokens:
            Price.parse(self.price_per_1k_tokens)

    def generation(self) -> dict[str, Any]:
        """The settings that shape the records: a re-run into the same output must keep them."""
        return {
            "model": self.model,
            "system": self.system,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "top_logprobs": self.top_logprobs,
            "keep_truncated": self.keep_truncated,
            "prompts_per_topic": self.prompts_per_topic,
        }

    def payload(self, messages: list[dict[str, str]], logprobs: bool = True) -> dict[str, Any]:
        """The chat-completions request body for these messages."""
        body: dict[str, Any] = {"messages": messages, "stream": False}
        for key in ("model", "max_tokens", "temperature", "top_p", "seed"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        if logprobs and self.top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        return body

    def recorded(self) -> dict[str, Any]:
        """The settings as the manifest keeps them (the URL without credentials or query)."""
        return {**asdict(self), "teacher_url": public_url(self.teacher_url)}


def read_api_key_file(path: str | Path) -> str:
    """The API key in a file (surrounding whitespace stripped); ConfigError if unreadable or empty.
    The key itself never appears in an error."""
    path = Path(path).expanduser()
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the API key file {path}: {exc.__class__.__name__}"
        ) from None
    if not key:
        raise ConfigError(f"the API key file {path} is empty")
    if any(c.isspace() for c in key):
        raise ConfigError(
            f"the API key file {path} holds more than one word: put only the key in it"
        )
    return key
