"""`pocketlm serve`: an OpenAI-compatible HTTP server and a chat page for a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pocketlm.cli.options import (
    MODEL_HELP,
    add_parser,
    add_runtime_options,
    cap_threads,
)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API (and a chat page)",
        description=(
            "Serve a model on your machine: /v1/models, /v1/completions and /v1/chat/completions\n"
            "(streaming or not) for any OpenAI client, /health, /metrics (Prometheus) and a chat\n"
            "page at /. Concurrent requests share the model through continuous batching: up to\n"
            "--slots sequences decode together, up to --max-queue more wait (then 503 with\n"
            "Retry-After). Binds 127.0.0.1 unless told otherwise; with --api-key (or\n"
            "--api-key-file) every route but the public ones needs 'Authorization: Bearer KEY'.\n"
            "Web pages cannot use it: a request must name this server in its Host header (against\n"
            "DNS rebinding; see --allow-host) and a page of another origin is refused unless\n"
            "--cors-origin names it. SIGTERM or Ctrl-C stops taking new work; what is in flight\n"
            "gets --shutdown-timeout seconds, then a 503 (streams: an error event and [DONE]).\n"
            "Chat requests use the model's chat template (an imported model's own); sampling\n"
            "fields a request leaves out (temperature, top_p, top_k, min_p, repetition_penalty,\n"
            "max_tokens) take the model's generation_config.json values, else OpenAI's defaults.\n"
            "LoRA adapters of the model are served next to it (--adapter NAME=DIR, repeatable):\n"
            "a request's 'model' field picks one by NAME, or the base by its own name; one that\n"
            "names none gets the first adapter (else the base); an unknown name gets a 404\n"
            "(model_not_found). Requests for the base and its adapters share one continuous batch\n"
            "on the torch backend, each row with its own adapter (--separate-adapters: a batch\n"
            "and --slots per adapter).\n"
            'A classifier (a model with labels) answers POST /v1/classify instead: {"input": text\n'
            "or [texts]} -> each text's label and the probability of every label; up to --slots\n"
            "inputs are classified together, up to --max-queue more wait; the generation routes\n"
            "answer it with a 400."
        ),
        examples=(
            "  pocketlm serve --model runs/sft\n"
            "  pocketlm serve --model runs/sft --port 8080 --slots 8 --api-key-file ~/.pocketlm-key\n"
            "  pocketlm serve --model models/base --adapter support=runs/lora-support \\\n"
            "                 --adapter code=runs/lora-code\n"
            "  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\\n"
            '       -d \'{"messages": [{"role": "user", "content": "Hello"}]}\'\n'
            "  pocketlm serve --model runs/sentiment   # a classifier: POST /v1/classify\n"
            "  curl http://127.0.0.1:8000/v1/classify -H 'Content-Type: application/json' \\\n"
            '       -d \'{"input": ["a lovely film", "a waste of time"]}\''
        ),
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument(
        "--adapter",
        action="append",
        metavar="[NAME=]DIR",
        help="a LoRA adapter (or a LoRA fine-tuning run) of --model, the base it was trained on "
        "(checked by hash), served as model NAME (default: DIR's name) next to the base; "
        "repeatable; runs on the torch backend",
    )
    p.add_argument(
        "--separate-adapters",
        action="store_true",
        help="give each adapter its own batch and --slots (the base may then run on the native "
        "engine) instead of mixing base and adapter requests in one batch",
    )
    p.add_argument(
        "--model-name",
        help="the id clients use for --model, the base (default: its directory name)",
    )
    n = p.add_argument_group("network")
    n.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    n.add_argument("--port", type=int, default=8000, help="TCP port")
    n.add_argument("--api-key", help="require this key (note: visible in the process list)")
    n.add_argument("--api-key-file", metavar="FILE", help="require the key stored in FILE")
    n.add_argument(
        "--public-route",
        action="append",
        metavar="PATH",
        help="a path that needs no key (repeatable; default: /health and /)",
    )
    n.add_argument(
        "--allow-host",
        action="append",
        metavar="NAME",
        help="another name clients may give in the Host header (repeatable; * for any). "
        "Accepted without it: the --host address, localhost, 127.0.0.1 and [::1]; on 0.0.0.0 "
        "or :: also any IP address, but names (myhost.local) must be added: a check against "
        "DNS rebinding, by which a web page reads answers through a name of its own",
    )
    n.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="let web pages from ORIGIN (scheme://host[:port], e.g. http://localhost:3000) use "
        "the server, with CORS (repeatable; * for any page, then use --api-key). Pages of other "
        "origins are refused (403); the chat page at / is the server's own origin",
    )
    lim = p.add_argument_group("limits")
    lim.add_argument(
        "--max-body-bytes", type=int, default=1_000_000, help="largest request body (else 413)"
    )
    lim.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="connections open at once; past it a new one closes the oldest idle or half-sent one "
        "(503 when all have a request in flight); lowered to fit the open-files limit",
    )
    lim.add_argument(
        "--idle-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds a connection may stay open without a request",
    )
    lim.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds from a request's first byte to the end of its headers (else 408)",
    )
    lim.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds from the end of the headers to the end of the body (else 408)",
    )
    lim.add_argument(
        "--shutdown-timeout",
        type=float,
        default=3.0,
        metavar="S",
        help="seconds in-flight requests get to finish at shutdown; then they get a 503 "
        "(streams: an error event and [DONE])",
    )
    b = p.add_argument_group("batching")
    b.add_argument("--slots", type=int, default=4, help="sequences generated together")
    b.add_argument("--max-queue", type=int, default=32, help="sequences waiting for a slot")
    b.add_argument("--max-len", type=int, help="context per slot in tokens (default: the model's)")
    add_runtime_options(
        p, threads_help="native backend threads (0 = all cores but one, left to the HTTP side)"
    )
    p.set_defaults(handler=_serve)


def _api_key(args: argparse.Namespace) -> str | None:
    from pocketlm.common.errors import ConfigError

    if args.api_key and args.api_key_file:
        raise ConfigError("give --api-key or --api-key-file, not both")
    if args.api_key_file:
        path = Path(args.api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the API key file {path}: {exc}") from exc
        if not key:
            raise ConfigError(f"the API key file {path} is empty")
        return key
    if args.api_key is not None and not args.api_key.strip():
        raise ConfigError("--api-key is empty")
    return args.api_key


def _check(args: argparse.Namespace) -> None:
    from pocketlm.common.errors import ConfigError

    if args.slots < 1:
        raise ConfigError(f"--slots must be >= 1, got {args.slots}")
    if args.max_queue < 0:
        raise ConfigError(f"--max-queue must be >= 0, got {args.max_queue}")
    if args.max_body_bytes < 1024:
        raise ConfigError(f"--max-body-bytes must be >= 1024, got {args.max_body_bytes}")
    if args.max_connections < 1:
        raise ConfigError(f"--max-connections must be >= 1, got {args.max_connections}")
    for flag in ("idle_timeout", "header_timeout", "body_timeout"):
        if not getattr(args, flag) > 0:  # also refuses nan
            raise ConfigError(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    if not 0 <= args.shutdown_timeout < float("inf"):
        raise ConfigError(f"--shutdown-timeout must be >= 0, got {args.shutdown_timeout}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    for path in args.public_route or ():
        if not path.startswith("/"):
            raise ConfigError(f"--public-route must be a path starting with '/', got {path!r}")


def adapter_specs(values: list[str] | None) -> list[tuple[str, Path]]:
    """(name, directory) of each --adapter value: NAME=DIR, or DIR (named after the directory)."""
    from pocketlm.common.errors import ConfigError

    specs = []
    for value in values or ():
        name, sep, rest = value.partition("=")
        if sep and name and "/" not in name and not Path(value).exists():
            if not rest:
                raise ConfigError(f"--adapter {value}: give a directory after '{name}='")
            specs.append((name, Path(rest)))
        else:
            specs.append((Path(value).resolve().name, Path(value)))
    return specs


def open_models(args: argparse.Namespace, threads: int):
    """(the base, the adapters) as ServedModels for the parsed serve options. Adapters share one
    batch with the base on the torch backend (--slots in all); with --separate-adapters, a
    QLoRA adapter or a mixture-of-experts base, the base runs on --backend and each adapter on
    the torch backend with --slots of its own, all over one copy of the base's weights."""
    from pocketlm.common.errors import ConfigError
    from pocketlm.engine.load import (
        classifier_labels,
        open_adapters,
        open_backend,
        open_mixed_adapters,
    )
    from pocketlm.engine.scheduler import BatchScheduler
    from pocketlm.serve.served_models import ServedModel, check_model_ids

    specs = adapter_specs(args.adapter)
    base_id = args.model_name or Path(args.model).resolve().name
    check_model_ids([base_id, *(name for name, _ in specs)])  # before any model is read
    if classifier_labels(args.model):
        if specs:
            raise ConfigError("--adapter: a classifier is served alone, without adapters")
        return open_classifier_model(args, base_id), []
    dirs = [directory for _, directory in specs]
    settings = dict(
        slots=args.slots, device=args.device, precision=args.precision, max_len=args.max_len
    )
    if specs and not args.separate_adapters and args.backend != "native":
        try:
            backend, tokenizer = open_mixed_adapters(args.model, dirs, **settings)
        except ConfigError as exc:
            print(f"adapters served one model each: {exc}", file=sys.stderr)
        else:
            scheduler = BatchScheduler(backend, tokenizer, max_queue=args.max_queue)
            base = ServedModel(base_id, scheduler, tokenizer, backend_name=backend.name)
            adapters = [
                ServedModel(name, scheduler, tokenizer, base_id, backend.name, adapter=k)
                for k, (name, _) in enumerate(specs)
            ]
            return base, adapters
    backend, tokenizer = open_backend(args.model, backend=args.backend, threads=threads, **settings)
    base = ServedModel(
        base_id,
        BatchScheduler(backend, tokenizer, max_queue=args.max_queue),
        tokenizer,
        backend_name=backend.name,
    )
    # the native engine runs no adapters: they take torch even when the base runs natively
    adapters = []
    for (name, _), (opened, adapter_tok) in zip(
        specs, open_adapters(args.model, dirs, **settings), strict=True
    ):
        if opened.context_length != backend.context_length:
            raise ConfigError(
                f"adapter {name}: context {opened.context_length} tokens, the base "
                f"{backend.context_length}: give --max-len so that they agree"
            )
        scheduler = BatchScheduler(opened, adapter_tok, max_queue=args.max_queue)
        adapters.append(ServedModel(name, scheduler, adapter_tok, base_id, opened.name))
    return base, adapters


def open_classifier_model(args: argparse.Namespace, model_id: str):
    """A classifier as a ServedModel: its inputs classified in batches of up to --slots, up to
    --max-queue more waiting, on the torch backend (the native engine generates only)."""
    from pocketlm.common.errors import ConfigError
    from pocketlm.engine.classify import open_classifier
    from pocketlm.engine.classify_batcher import ClassifyBatcher
    from pocketlm.serve.served_models import ServedModel

    if args.backend == "native":
        raise ConfigError("a classifier runs on the torch backend: use --backend torch (or auto)")
    classifier = open_classifier(
        args.model, device=args.device, precision=args.precision, max_len=args.max_len
    )
    batcher = ClassifyBatcher(classifier, max_batch=args.slots, max_queue=args.max_queue)
    return ServedModel(model_id, batcher, classifier.tokenizer, backend_name="torch-classifier")


def _serve(args: argparse.Namespace) -> int:
    from pocketlm.common.errors import require

    _check(args)
    key = _api_key(args)
    require("fastapi", "serve", "pocketlm serve")
    require("uvicorn", "serve", "pocketlm serve")
    from pocketlm.cli.chat_check import warn_tokenizer_consistency
    from pocketlm.common.cpu_load import free_cores, runnable_others
    from pocketlm.common.device import serving_threads
    from pocketlm.serve.app import DEFAULT_PUBLIC_PATHS, ServerSettings, create_app, run_server
    from pocketlm.serve.origin_guard import ANY, AccessPolicy

    allow_hosts, cors_origins = tuple(args.allow_host or ()), tuple(args.cors_origin or ())
    AccessPolicy.build(args.host, allow_hosts, cors_origins)  # bad names fail before loading

    threads = serving_threads(cap_threads(args.threads), free_cores(runnable_others()))
    base, adapters = open_models(args, threads)
    if not hasattr(base.scheduler, "labels"):  # a classifier has no chat turns to end
        warn_tokenizer_consistency(base.tokenizer, args.model)
    settings = ServerSettings(
        model_id=base.model_id,
        default_model=adapters[0].model_id if adapters else None,
        api_key=key,
        public_paths=tuple(args.public_route or DEFAULT_PUBLIC_PATHS),
        host=args.host,
        port=args.port,
        allowed_hosts=allow_hosts,
        cors_origins=cors_origins,
        max_body_bytes=args.max_body_bytes,
        max_connections=args.max_connections,
        idle_timeout_s=args.idle_timeout,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        shutdown_timeout_s=args.shutdown_timeout,
        backend_name=base.backend_name,
    )
    app = create_app(base.scheduler, base.tokenizer, settings, adapters=adapters)
    if args.host not in _LOOPBACK and not key:
        print(
            f"warning: serving on {args.host} without an API key: anyone who can reach this "
            "machine can use the model (add --api-key-file)",
            file=sys.stderr,
        )
    if ANY in cors_origins and not key:
        print(
            "warning: --cors-origin * without an API key: any web page can use the model",
            file=sys.stderr,
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    names = ", ".join(f"{m.model_id} ({m.backend_name})" for m in (base, *adapters))
    shared = not adapters or adapters[0].scheduler is base.scheduler
    if hasattr(base.scheduler, "labels"):  # a classifier
        labels = ", ".join(base.scheduler.labels)
        what = f"the classifier {base.model_id} ({labels}): batches of {args.slots}"
        tail = "POST /v1/classify, Ctrl-C stops"
    else:
        what = f"{names}: {args.slots} slots{'' if shared else ' each'}"
        tail = "chat page at /, Ctrl-C stops"
    print(
        f"serving {what}, context {base.scheduler.context_length} on http://{host}:{args.port}  "
        f"({tail})",
        file=sys.stderr,
        flush=True,
    )
    run_server(app)
    return 0
