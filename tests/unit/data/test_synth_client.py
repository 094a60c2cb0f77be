"""synth's HTTP side against a flaky fake server: retries on 429 / 5xx / connection errors /
truncated or non-JSON bodies with backoff (Retry-After honoured) on an injected clock, no retry
where none can help, the key only in the Authorization header, redirects refused; the backoff
and the rate limit by themselves."""

from __future__ import annotations

import random
import threading

import pytest

from pocketlm.common.errors import ConfigError
from pocketlm.data.synth.backoff import RetryPolicy, is_retryable, parse_retry_after
from pocketlm.data.synth.http_client import ChatClient, endpoint_url, public_url
from pocketlm.data.synth.rate_limit import RateLimiter
from tests.unit.data.fake_teacher import WALL0, FakeClock, FakeTeacher

HELLO = {"messages": [{"role": "user", "content": "hello"}]}


def _client(teacher: FakeTeacher, clock: FakeClock, **kw) -> ChatClient:
    kw.setdefault("policy", RetryPolicy(max_retries=4, base_s=1.0, cap_s=8.0))
    return ChatClient(
        endpoint_url(teacher.url), clock=clock, rng=random.Random(0), timeout_s=5.0, **kw
    )


def test_endpoint_url_and_the_public_form_of_a_url():
    assert endpoint_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1/chat/completions"
    assert endpoint_url("https://api.x.com/v1/") == "https://api.x.com/v1/chat/completions"
    full = "http://h:1/openai/v1/chat/completions"
    assert endpoint_url(full) == full
    assert endpoint_url("http://h/api?key=1") == "http://h/api/v1/chat/completions?key=1"
    with pytest.raises(ConfigError, match="not an http"):
        endpoint_url("ftp://h/v1")
    with pytest.raises(ConfigError) as info:
        endpoint_url("file://user:s3cret@/x")
    assert "s3cret" not in str(info.value)
    assert (
        public_url("https://me:s3cret@api.x.com:8443/v1?key=s3cret") == "https://api.x.com:8443/v1"
    )


@pytest.mark.parametrize(
    ("failures", "expected_waits"),
    [
        (["500", "500"], "backoff"),
        (["429"], [7.0]),  # Retry-After: 7 (seconds)
        (["429-date"], [3.0]),  # Retry-After as an HTTP date, 3 s after the wall clock
        (["notjson", "truncated"], "backoff"),
    ],
)
def test_transient_failures_are_retried_with_backoff_or_retry_after(failures, expected_waits):
    clock = FakeClock()
    script = lambda text, n: failures[n - 1] if n <= len(failures) else "ok"  # noqa: E731
    with FakeTeacher(script) as teacher:
        ex = _client(teacher, clock).complete(HELLO)
    assert ex.data is not None and ex.data["choices"][0]["message"]["content"]
    assert ex.attempts == len(failures) + 1 and ex.retries == len(failures)
    assert len(clock.sleeps) == len(failures)
    if expected_waits == "backoff":  # jitter in [d/2, d], d = 1, 2, 4, ...
        for i, wait in enumerate(clock.sleeps):
            assert 2.0**i / 2 <= wait <= 2.0**i
    else:  # the server's wait, plus at most 10% jitter
        for wait, asked in zip(clock.sleeps, expected_waits, strict=True):
            assert asked <= wait <= asked * 1.1


def test_a_hanging_server_times_out_and_is_retried():
    clock = FakeClock()
    script = lambda text, n: "hang" if n == 1 else "ok"  # noqa: E731
    with FakeTeacher(script, hang_s=2.0) as teacher:
        client = _client(teacher, clock)
        client.timeout_s = 0.2  # the one real wait in these tests
        ex = client.complete(HELLO)
    assert ex.data is not None and ex.attempts == 2


def test_retries_run_out_with_the_last_error():
    clock = FakeClock()
    with FakeTeacher(lambda text, n: "500") as teacher:
        ex = _client(teacher, clock, policy=RetryPolicy(max_retries=3, cap_s=2.0)).complete(HELLO)
        assert len(teacher.requests) == 4
    assert ex.data is None and not ex.fatal and ex.attempts == 4
    assert "gave up after retries" in ex.error and "HTTP 500: scripted 500" in ex.error
    assert all(w <= 2.0 for w in clock.sleeps)  # capped


@pytest.mark.parametrize(("status", "fatal"), [("400", False), ("401", True), ("302", True)])
def test_no_retry_where_none_can_help(status, fatal):
    clock = FakeClock()
    with FakeTeacher(lambda text, n: status) as teacher:
        ex = _client(teacher, clock).complete(HELLO)
        assert len(teacher.requests) == 1  # a redirect is not followed either
    assert ex.data is None and ex.fatal is fatal and ex.attempts == 1 and not clock.sleeps
    assert ex.error.startswith(f"HTTP {status}")


def test_the_key_goes_only_into_the_authorization_header():
    with FakeTeacher() as teacher:
        client = _client(teacher, FakeClock(), api_key="sk-secret-123")
        client.complete(HELLO)
        body, headers = teacher.requests[0]
    assert headers["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in repr(client) and "sk-secret-123" not in str(body)
    with FakeTeacher() as teacher:
        _client(teacher, FakeClock()).complete(HELLO)
        assert "Authorization" not in teacher.requests[0][1]


def test_a_key_the_server_quotes_is_redacted_from_errors():
    with FakeTeacher(lambda text, n: "echo401") as teacher:
        ex = _client(teacher, FakeClock(), api_key="sk-secret-123").complete(HELLO)
    assert ex.fatal and "sk-secret-123" not in ex.error and "bad key Bearer [API key]" in ex.error


def test_a_stopped_client_sends_nothing_more():
    with FakeTeacher(lambda text, n: "500") as teacher:
        client = _client(teacher, FakeClock())
        client.stop.set()
        ex = client.complete(HELLO)
        assert ex.cancelled and not teacher.requests


def test_backoff_grows_to_its_cap_and_retry_after_is_capped():
    policy = RetryPolicy(base_s=0.5, cap_s=4.0, max_retry_after_s=30.0)
    rng = random.Random(1)
    for retry in range(8):
        d = min(4.0, 0.5 * 2**retry)
        assert d / 2 <= policy.delay(retry, None, rng) <= d
    assert 30.0 <= policy.delay(0, 3600.0, rng) <= 33.0
    assert is_retryable(0) and is_retryable(429) and is_retryable(503) and not is_retryable(400)


def test_parse_retry_after():
    assert parse_retry_after("12", WALL0) == 12.0
    assert parse_retry_after("1.5", WALL0) == 1.5
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:25 GMT", WALL0) == pytest.approx(5.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:00 GMT", WALL0) == 0.0  # in the past
    assert parse_retry_after("-3", WALL0) == 0.0
    for bad in (None, "", "soon", "nan"):
        assert parse_retry_after(bad, WALL0) is None


def test_rate_limiter_spaces_request_starts_across_threads():
    clock = FakeClock(advance=False)  # time stands still: each wait is its slot's distance
    limiter = RateLimiter(120, clock)  # one start every 0.5 s
    waits: list[float] = []
    lock = threading.Lock()

    def go() -> None:
        for _ in range(5):
            wait = limiter.acquire()
            with lock:
                waits.append(wait)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == pytest.approx([0.5 * i for i in range(20)])  # slots 0, .5, 1, ...
    assert sorted(clock.sleeps) == pytest.approx(sorted(waits)[1:])  # the first one waits not
    with pytest.raises(ConfigError, match="requests-per-minute"):
        RateLimiter(0, clock)
