"""`pocketlm inspect DIR`: print an artifact's manifest in a readable form."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pocketlm.cli.options import add_parser


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "inspect",
        help="show what an artifact directory is and how it was made",
        description="Print an artifact's kind, provenance (command, parents with hashes), configuration,\nsummary numbers and files. --json prints the raw manifest.",
        examples="  pocketlm inspect runs/corpus\n  pocketlm inspect runs/model --verify",
    )
    p.add_argument("path", metavar="DIR", help="an artifact directory (has manifest.json)")
    p.add_argument("--json", action="store_true", help="print manifest.json as is")
    p.add_argument("--verify", action="store_true", help="also check every file's size and sha256")
    p.set_defaults(handler=_inspect)


def _flatten(prefix: str, value: object, out: list[tuple[str, object]]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out.append((prefix, value))


def _inspect(args: argparse.Namespace) -> int:
    from pocketlm.checkpoint.run_checkpoints import is_run_dir
    from pocketlm.common.manifest import MANIFEST_NAME, read_manifest, verify_files
    from pocketlm.common.units import format_bytes

    if not (Path(args.path) / MANIFEST_NAME).is_file() and is_run_dir(args.path):
        return _inspect_run(args)
    manifest = read_manifest(args.path)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    print(
        f"{args.path}: {manifest['kind']} (schema {manifest.get('schema')}, pocketlm {manifest.get('pocketlm_version')})"
    )
    print(f"  created  {manifest.get('created_at')}")
    if manifest.get("command"):
        print(f"  command  {' '.join(manifest['command'])}")
    parents = manifest.get("parents", [])
    if parents:
        print("parents:")
        for p in parents:
            sha = p.get("sha256", "")
            print(
                f"  {p.get('kind', '?'):10} {p.get('path')}"
                + (f"  sha256:{sha[:16]}" if sha else "")
            )
    for title, key in (("summary", "summary"), ("config", "config")):
        rows: list[tuple[str, object]] = []
        _flatten("", manifest.get(key, {}), rows)
        rows = [(k, v) for k, v in rows if k and not (isinstance(v, list) and len(v) > 8)]
        if rows:
            print(f"{title}:")
            width = min(48, max(len(k) for k, _ in rows))
            for k, v in rows:
                print(f"  {k:<{width}}  {v}")
    files = manifest.get("files", {})
    if files:
        total = sum(f["bytes"] for f in files.values())
        print(f"files: {len(files)}, {format_bytes(total)}")
        for name, info in list(files.items())[:20]:
            print(f"  {format_bytes(info['bytes']):>10}  {name}")
        if len(files) > 20:
            print(f"  ... and {len(files) - 20} more")
    if args.verify:
        verify_files(args.path)
        print("verify: every file matches its size and sha256")
    return 0


_RUN_STATES = {
    "finished": "finished: its final model is {model}",
    "interrupted": "interrupted after step {steps}: the same command with --resume continues it",
    "started": "started, no checkpoint yet: the same command with --resume starts it again",
}


def _inspect_run(args: argparse.Namespace) -> int:
    """A training run's directory: its state, then its final model's manifest if finished."""
    from pocketlm.checkpoint.run_checkpoints import run_status
    from pocketlm.common.units import format_count

    status = run_status(args.path)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"{args.path}: training run ({status.get('task') or 'task unknown'}), "
          + _RUN_STATES[status["state"]].format(**status))  # fmt: skip
    if "tokens" in status:
        print(f"  steps {status['steps']}, tokens {format_count(status['tokens'])}"
              + (f", val bits/byte {status['val_bpb']:.4f}" if "val_bpb" in status else ""))  # fmt: skip
    if status.get("checkpoints"):
        print(f"  checkpoints at steps {', '.join(map(str, status['checkpoints']))}")
    if status["state"] == "finished":
        print()
        args.path = status["model"]
        return _inspect(args)
    return 0
