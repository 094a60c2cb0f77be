"""`pocketlm inspect DIR`: print an artifact's manifest in a readable form."""

from __future__ import annotations

import argparse
import json

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
    from pocketlm.common.manifest import read_manifest, verify_files
    from pocketlm.common.units import format_bytes

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
