"""`pocketlm chat` driven through a pseudo-terminal: streaming, commands, Ctrl-C, multi-line input."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect", reason="the chat CLI test drives a pty with pexpect")

ROOT = Path(__file__).resolve().parents[2]

# The real CLI, with the model's backend slowed down (and never ending a reply early) so that a
# Ctrl-C reliably lands in the middle of a reply.
_SLOW_CHAT = textwrap.dedent(
    """
    import sys
    import pocketlm.engine.load as load
    from pocketlm.engine.generation import GenerationEngine
    from tests.integration.live_server import SlowBackend

    real = load.load_engine

    def slow_engine(*args, **kwargs):
        engine = real(*args, **kwargs)
        stops = (engine.tokenizer.eos_id, engine.tokenizer.end_of_turn_id)
        return GenerationEngine(SlowBackend(engine.backend, stops, float(sys.argv[1])), engine.tokenizer)

    load.load_engine = slow_engine
    from pocketlm.cli.main import main

    sys.exit(main(sys.argv[2:]))
    """
)


def _spawn(model_dir: Path, delay_s: float, *extra: str):
    env = dict(os.environ, TERM="dumb", PYTHONUNBUFFERED="1")
    # Sampled (seeded) rather than greedy: the tiny test model's greedy reply is only newlines.
    args = ["-c", _SLOW_CHAT, str(delay_s), "chat", "--model", str(model_dir), "--temperature", "1"]
    args += ["--seed", "0"]
    return pexpect.spawn(
        sys.executable,
        [*args, "--threads", "1", *extra],
        cwd=str(ROOT),
        env=env,
        encoding="utf-8",
        timeout=60,
    )


def _saved(child, path: Path) -> dict:
    child.sendline(f"/save {path}")
    child.expect_exact("[saved to")
    child.expect_exact("you> ")
    return json.loads(path.read_text(encoding="utf-8"))


def test_chat_repl_streams_resets_saves_and_survives_ctrl_c(tiny_model_dir, tmp_path):
    child = _spawn(tiny_model_dir, 0.08, "--max-tokens", "12", "--system", "Be kind.")
    try:
        child.expect_exact("you> ")
        child.sendline("Hello there")
        child.expect_exact("assistant> ")
        child.expect_exact("you> ")
        first_reply = child.before.strip()
        assert first_reply, "no reply text was streamed"

        child.sendline("Tell me a story")
        child.expect_exact("assistant> ")
        time.sleep(0.3)  # a few tokens in: the reply takes about a second
        child.sendintr()
        child.expect_exact("[reply stopped]")
        child.expect_exact("you> ")
        assert child.isalive()

        saved = _saved(child, tmp_path / "chat.json")
        roles = [m["role"] for m in saved["messages"]]
        assert roles == ["system", "user", "assistant", "user", "assistant"]
        assert saved["messages"][0]["content"] == "Be kind."
        assert saved["messages"][4]["content"] != ""  # the partial reply is kept

        child.sendline("/reset")
        child.expect_exact("[conversation reset]")
        child.expect_exact("you> ")
        assert [m["role"] for m in _saved(child, tmp_path / "empty.json")["messages"]] == ["system"]

        child.sendline("the cat \\")  # short: the tiny model's context is 32 tokens
        child.expect_exact("...> ")
        child.sendline("the dog")
        child.expect_exact("assistant> ")
        child.expect_exact("you> ")
        saved = _saved(child, tmp_path / "multi.json")
        assert saved["messages"][1]["content"] == "the cat \nthe dog"

        child.sendline("/help")
        child.expect_exact("/system TEXT")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_ctrl_d_and_ctrl_c_at_the_prompt_leave(tiny_model_dir):
    for leave in ("eof", "intr"):
        child = _spawn(tiny_model_dir, 0.0)
        try:
            child.expect_exact("you> ")
            child.sendeof() if leave == "eof" else child.sendintr()
            child.expect(pexpect.EOF)
            child.close()
            assert child.exitstatus == 0
        finally:
            if child.isalive():
                child.terminate(force=True)
