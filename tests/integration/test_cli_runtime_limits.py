"""CLI limits that apply before any model is loaded: --threads is capped to the usable cores
(generate, chat, bench, serve), and serve's network and limit flags are checked by name."""

from __future__ import annotations

import logging

import pytest

from pocketlm.cli.main import main


class Loaded(Exception):
    """Raised by the stand-in loaders: how far the command got, with what it asked for."""


@pytest.fixture
def run_cli(capsys):
    """Run `pocketlm ...` in this process, restoring the logging set-up main() changes."""
    logger = logging.getLogger("pocketlm")
    saved = (logger.level, list(logger.handlers), logger.propagate)

    def run(*args: str) -> tuple[int | None, dict, str]:
        seen: dict = {}
        try:
            code = main(list(args))
        except Loaded as loaded:
            code, seen = None, loaded.args[0]
        return code, seen, capsys.readouterr().err

    yield run
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]


@pytest.fixture
def two_cores(monkeypatch):
    """Two usable cores, and every model loader replaced by one that reports its arguments."""
    import pocketlm.common.device
    import pocketlm.engine.bench
    import pocketlm.engine.load

    def loaded(*args, **kwargs):
        raise Loaded(kwargs)

    monkeypatch.setattr(pocketlm.common.device, "usable_cores", lambda: 2)
    for module, name in (
        (pocketlm.engine.load, "load_engine"),
        (pocketlm.engine.load, "open_backend"),
        (pocketlm.engine.bench, "bench_model"),
    ):
        monkeypatch.setattr(module, name, loaded)


COMMANDS = {
    "generate": ["generate", "--model", "m", "--prompt", "x"],
    "chat": ["chat", "--model", "m"],
    "bench": ["bench", "--model", "m"],
    "serve": ["serve", "--model", "m"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_threads_beyond_the_usable_cores_are_capped_with_one_warning(command, run_cli, two_cores):
    if command == "serve":
        pytest.importorskip("fastapi")
    code, seen, err = run_cli(*COMMANDS[command], "--threads", "1000")
    assert code is None and seen["threads"] == 2, (code, err)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: --threads 1000 is more than the 2 usable cores: using 2"]
    _, seen, err = run_cli(*COMMANDS[command], "--threads", "1")
    assert seen["threads"] == 1 and "warning" not in err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_negative_threads_exit_2(command, run_cli, two_cores):
    if command == "serve":
        pytest.importorskip("fastapi")
    code, _, err = run_cli(*COMMANDS[command], "--threads", "-3")
    assert code == 2 and err.strip() == "error: --threads must be >= 0 (0: automatic), got -3"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--allow-host", "http://evil.example"], "--allow-host"),
        (["--allow-host", "myhost:8000"], "--allow-host"),
        (["--cors-origin", "localhost:3000"], "--cors-origin"),
        (["--cors-origin", "http://x/path"], "--cors-origin"),
        (["--idle-timeout", "0"], "--idle-timeout"),
        (["--header-timeout", "nan"], "--header-timeout"),
        (["--body-timeout", "-1"], "--body-timeout"),
        (["--max-connections", "0"], "--max-connections"),
        (["--shutdown-timeout", "inf"], "--shutdown-timeout"),
    ],
)
def test_bad_serve_flags_exit_2_naming_the_flag_before_loading(flags, named, run_cli, two_cores):
    pytest.importorskip("fastapi")
    code, seen, err = run_cli(*COMMANDS["serve"], *flags)
    assert code == 2 and not seen  # refused before any model was opened
    assert err.startswith("error: ") and named in err and len(err.strip().splitlines()) == 1


def test_serve_flags_reach_the_server_settings(run_cli, two_cores, monkeypatch):
    pytest.importorskip("fastapi")
    import pocketlm.serve.app

    def settings_seen(scheduler, tokenizer, settings, **models):
        raise Loaded({"settings": settings})

    class FakeBackend:
        name, context_length = "fake", 32

    monkeypatch.setattr("pocketlm.engine.load.open_backend", lambda *a, **k: (FakeBackend(), None))
    monkeypatch.setattr("pocketlm.engine.scheduler.BatchScheduler", lambda *a, **k: None)
    monkeypatch.setattr(pocketlm.serve.app, "create_app", settings_seen)
    # the fake backend comes without a tokenizer: nothing for the chat-format check to read
    monkeypatch.setattr("pocketlm.cli.chat_check.warn_tokenizer_consistency", lambda *a: None)
    flags = [
        *("--host", "0.0.0.0", "--allow-host", "myhost.local", "--cors-origin", "*"),
        *("--max-connections", "9", "--idle-timeout", "1.5", "--header-timeout", "2"),
        *("--body-timeout", "3", "--shutdown-timeout", "4", "--api-key", "k"),
    ]
    _, seen, _ = run_cli(*COMMANDS["serve"], *flags)
    settings = seen["settings"]
    assert (settings.host, settings.allowed_hosts, settings.cors_origins) == (
        "0.0.0.0",
        ("myhost.local",),
        ("*",),
    )
    assert (settings.max_connections, settings.idle_timeout_s, settings.header_timeout_s) == (
        9,
        1.5,
        2.0,
    )
    assert (settings.body_timeout_s, settings.shutdown_timeout_s) == (3.0, 4.0)
