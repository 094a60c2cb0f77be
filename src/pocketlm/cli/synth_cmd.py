"""`pocketlm synth`: fine-tuning data written by a teacher behind an OpenAI-compatible API."""

from __future__ import annotations

import argparse
import sys

from pocketlm.cli.options import add_parser, command_line, done

KEY_ENV = "POCKETLM_TEACHER_API_KEY"

_DESCRIPTION = f"""\
Black-box distillation: send prompts to a teacher model behind any OpenAI-compatible
chat-completions API (a remote LLM, or `pocketlm serve` of a bigger model) and write its answers
as a chat data set that `pocketlm finetune --data OUT/data.jsonl` reads as it is.
Prompts: --prompts files (.txt: one a line; .jsonl/.json: {{"prompt": ...}}, {{"messages": [...]}} or
{{"instruction", "input"}} records), and/or --seed-topics (the teacher first writes
--prompts-per-topic requests per topic). Prompts and answers are de-duplicated (case and
whitespace folded). Requests run --concurrency at a time under --requests-per-minute, retried on
429, 5xx and connection errors with exponential backoff and jitter (a Retry-After is honoured).
With --top-logprobs K each record keeps the teacher's top-K log-probabilities per answer token
(text form) as sparse targets for distillation.
Resumable: records are written one line at a time; a killed or failed run continues when the
same command is run again (only unanswered prompts are sent), and a finished OUT is extended by a
re-run with more prompts. requests.log and the manifest hold the cost/time log (requests, retries,
failures, tokens in/out, time, and money with --price-per-1k-tokens).
The API key comes from --api-key-file, else the environment variable --api-key-env names
(default {KEY_ENV}); it is sent only to --teacher-url, never printed or stored."""


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "synth",
        help="write a fine-tuning data set with a teacher model behind an OpenAI-compatible API",
        description=_DESCRIPTION,
        examples=(
            "  pocketlm synth --teacher-url http://127.0.0.1:8000 --prompts prompts.txt --out runs/synth\n"
            "  pocketlm synth --teacher-url https://api.openai.com/v1 --api-key-file ~/.openai-key "
            "--model gpt-4o-mini --seed-topics 'python lists' 'unit conversion' "
            "--prompts-per-topic 50 --requests-per-minute 300 --price-per-1k-tokens 0.00015 0.0006 "
            "--out runs/synth\n"
            "  pocketlm finetune --model runs/pretrain --data runs/synth/data.jsonl --out runs/student"
        ),
    )
    t = p.add_argument_group("teacher")
    t.add_argument(
        "--teacher-url",
        required=True,
        metavar="URL",
        help="the API: a server root, its /v1, or the full /v1/chat/completions URL",
    )
    t.add_argument("--api-key-file", metavar="FILE", help="a file holding the API key")
    t.add_argument(
        "--api-key-env",
        metavar="NAME",
        default=KEY_ENV,
        help="the environment variable holding the API key when --api-key-file is not given",
    )
    t.add_argument("--model", help="the request's 'model' (default: left out: the server's own)")
    src = p.add_argument_group("prompts")
    src.add_argument("--prompts", nargs="+", metavar="FILE", default=[], help="prompt files")
    src.add_argument(
        "--seed-topics",
        nargs="+",
        metavar="TOPIC",
        default=[],
        help="topics the teacher writes prompts about first",
    )
    src.add_argument(
        "--prompts-per-topic",
        type=int,
        metavar="N",
        default=10,
        help="prompts asked for per seed topic",
    )
    src.add_argument(
        "--system", metavar="TEXT", help="a system prompt for prompts without one (kept in records)"
    )
    g = p.add_argument_group("generation")
    g.add_argument(
        "--max-tokens", type=int, metavar="N", help="answer length limit (default: the server's)"
    )
    g.add_argument("--temperature", type=float, metavar="T", help="(default: the server's)")
    g.add_argument("--top-p", type=float, metavar="P", help="(default: the server's)")
    g.add_argument(
        "--seed", type=int, metavar="N", help="the request's sampling seed, where the API has one"
    )
    g.add_argument(
        "--top-logprobs",
        type=int,
        default=0,
        metavar="K",
        help="keep the teacher's top-K log-probabilities per answer token (0: none; max 20)",
    )
    g.add_argument(
        "--keep-truncated",
        action="store_true",
        help="keep answers cut by --max-tokens (default: dropped and counted)",
    )
    r = p.add_argument_group("requests")
    r.add_argument(
        "--concurrency", type=int, metavar="N", default=4, help="requests in flight at once"
    )
    r.add_argument(
        "--requests-per-minute", type=float, default=0.0, metavar="N", help="rate limit (0: none)"
    )
    r.add_argument("--max-retries", type=int, metavar="N", default=6, help="retries of one request")
    r.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=120.0,
        help="seconds one request may take",
    )
    r.add_argument(
        "--price-per-1k-tokens",
        type=float,
        nargs="+",
        metavar="PRICE",
        default=[],
        help="price per 1,000 tokens (one for both, or input then output): the cost in the log",
    )
    p.add_argument("--out", required=True, help="output directory (a re-run continues it)")
    p.add_argument("--overwrite", action="store_true", help="start again: discard what --out holds")
    p.set_defaults(handler=_synth)


def _synth(args: argparse.Namespace) -> int:
    from pocketlm.common.env import secret_from_env
    from pocketlm.common.progress import progress_bar
    from pocketlm.data.synth.config import SynthConfig, read_api_key_file
    from pocketlm.data.synth.run import synthesize
    from pocketlm.data.synth.tally import format_totals

    key = read_api_key_file(args.api_key_file) if args.api_key_file else None
    key = key or secret_from_env(args.api_key_env)
    config = SynthConfig(
        teacher_url=args.teacher_url,
        prompts=tuple(args.prompts),
        seed_topics=tuple(args.seed_topics),
        prompts_per_topic=args.prompts_per_topic,
        model=args.model,
        system=args.system,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        top_logprobs=args.top_logprobs,
        keep_truncated=args.keep_truncated,
        concurrency=args.concurrency,
        requests_per_minute=args.requests_per_minute,
        max_retries=args.max_retries,
        timeout_s=args.timeout,
        price_per_1k_tokens=tuple(args.price_per_1k_tokens),
    )
    bars: dict[str, object] = {}

    def progress(phase: str, finished: int, total: int) -> None:
        bar = bars.get(phase) or bars.setdefault(
            phase, progress_bar(total, desc=f"synth {phase}", unit="req")
        )
        bar.update(finished - bar.n)

    try:
        result = synthesize(
            config,
            args.out,
            api_key=key,
            overwrite=args.overwrite,
            command=command_line(),
            on_progress=progress,
        )
    finally:
        for bar in bars.values():
            bar.close()
    print(f"synth: {format_totals(result.summary['this_run'])}", file=sys.stderr)
    return done(result.path)
