"""`pocketlm chat`: an interactive chat with a model in the terminal."""

from __future__ import annotations

import argparse
import contextlib
import sys

from pocketlm.cli.options import (
    MODEL_HELP,
    add_adapter_option,
    add_parser,
    add_runtime_options,
    add_sampling_options,
    cap_threads,
    sampling_from_args,
)
from pocketlm.cli.terminal import write_text

# PocketLM's sampling defaults; a model's generation_config.json replaces the values it sets.
DEFAULTS = {
    "max_new_tokens": 256,
    "temperature": 0.7,
    "top_k": 0,
    "top_p": 0.95,
    "min_p": 0.0,
    "repetition_penalty": 1.1,
}

PROMPT = "you> "
CONTINUATION = "...> "
REPLY = "assistant> "
HELP = """\
commands:
  /reset         forget the conversation (the system prompt stays)
  /system TEXT   set the system prompt (/system alone clears it)
  /save FILE     write the conversation to FILE as JSON
  /help          this help
  /quit          leave (or Ctrl-D / Ctrl-C at the prompt)
input: end a line with \\ to continue it on the next line, or put a block between lines of \"\"\"
       (start a message with // to send text beginning with /).
Ctrl-C while a reply streams stops the reply and returns to the prompt."""


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "chat",
        help="chat with a model in the terminal",
        description=(
            "An interactive chat: replies stream as they are generated, in the model's chat\n"
            "template (an imported model's own Jinja template). The history is kept within the\n"
            "context window: when it outgrows it, the oldest turns are dropped (with a notice).\n"
            "Sampling flags left out take the model's generation_config.json values (imported\n"
            "models ship one), else PocketLM's defaults. Type /help for the commands."
        ),
        examples=(
            "  pocketlm chat --model runs/sft\n"
            '  pocketlm chat --model runs/sft/model --system "You are terse." --temperature 0.3'
        ),
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    add_adapter_option(p)
    p.add_argument("--system", help="system prompt for the conversation")
    s = p.add_argument_group("sampling")
    add_sampling_options(
        s,
        defaults=DEFAULTS,
        max_tokens_flag="--max-tokens",
        max_tokens_help="most tokens per reply",
        seed_help="seed for reproducible replies (default: random)",
    )
    add_runtime_options(p, threads_help="native backend threads (0 = all cores)")
    p.set_defaults(handler=_chat)


def read_message(read=input) -> str:
    """One message from the user: `\\`-continued lines or a \"\"\" block joined with newlines."""
    first = read(PROMPT)
    if first.strip() == '"""':
        lines = []
        while (line := read(CONTINUATION)).strip() != '"""':
            lines.append(line)
        return "\n".join(lines)
    lines = [first]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        lines.append(read(CONTINUATION))
    return "\n".join(lines)


def _command(session, line: str) -> bool:
    """Run a /command; False when the user wants to leave."""
    name, _, rest = line[1:].partition(" ")
    name = name.strip().lower()
    if name in ("quit", "exit", "q"):
        return False
    if name == "reset":
        session.reset()
        write_text("[conversation reset]\n", sys.stderr)
    elif name == "system":
        session.set_system(rest)
        state = f"set: {session.system}" if session.system else "cleared"
        write_text(f"[system prompt {state}]\n", sys.stderr)
    elif name == "save":
        if not rest.strip():
            write_text("usage: /save FILE\n", sys.stderr)
        else:
            write_text(f"[saved to {session.save(rest.strip())}]\n", sys.stderr)
    elif name == "help":
        write_text(HELP + "\n", sys.stderr)
    else:
        write_text(f"unknown command /{name}; /help lists them\n", sys.stderr)
    return True


def _reply(session, text: str) -> None:
    reply = session.send(text)
    if reply.dropped:
        write_text(
            f"[dropped the {reply.dropped} oldest message(s) to fit the context window]\n",
            sys.stderr,
        )
    write_text(REPLY)
    try:
        for piece in reply:
            write_text(piece)
    except KeyboardInterrupt:
        reply.close()
        write_text("\n[reply stopped]")
    write_text("\n")


def _chat(args: argparse.Namespace) -> int:
    import signal

    from pocketlm.common.errors import InputError, PocketLMError
    from pocketlm.engine.chat_session import ChatSession
    from pocketlm.engine.load import load_engine

    sampling_from_args(args, defaults=DEFAULTS)  # bad flags fail before the model loads
    engine = load_engine(
        args.model,
        device=args.device,
        precision=args.precision,
        backend=args.backend,
        threads=cap_threads(args.threads),
        adapter=args.adapter,
    )
    if not engine.tokenizer.has_chat_template:
        raise InputError(
            f"{args.model} has no chat template (no chat_template.jinja, none in "
            "tokenizer_config.json), so it cannot chat",
            hint="continue text with `pocketlm generate`, or use an instruction-tuned model",
        )
    model = engine.tokenizer.generation_defaults
    params = sampling_from_args(args, defaults=DEFAULTS, model=model)
    session = ChatSession(engine, params, system=args.system)
    # Ctrl-C stops a reply: make it raise KeyboardInterrupt even when the shell that started
    # us ignores SIGINT (as it does for background jobs), which Python would inherit.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with contextlib.suppress(ImportError):  # not on every platform
        import readline  # noqa: F401  (line editing and history for input())
    write_text(
        f"[chatting with {args.model}: context {session.context_length} tokens, backend "
        f"{engine.name}; /help for commands, Ctrl-D to leave]\n",
        sys.stderr,
    )
    while True:
        try:
            text = read_message()
        except (EOFError, KeyboardInterrupt):
            write_text("\n")
            return 0
        if not text.strip():
            continue
        try:
            if text.startswith("/") and not text.startswith("//"):
                if not _command(session, text.strip()):
                    return 0
                continue
            _reply(session, text[1:] if text.startswith("//") else text)
        except KeyboardInterrupt:  # between the prompt and the first token
            write_text("\n[reply stopped]\n")
        except PocketLMError as exc:
            write_text(f"error: {exc}\n", sys.stderr)
