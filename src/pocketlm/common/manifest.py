"""Artifact directories: written to a temp dir, described by manifest.json, renamed into place.

Every stage writes one directory holding `manifest.json` with: kind, schema, pocketlm version,
resolved config, parents (path + sha256 of their manifest), created_at, command line, files
(bytes + sha256) and free-form `summary` numbers. A crash leaves only a `.tmp-*` directory behind,
never a half-written artifact under the final name. A resumable stage (synth) names its
temporary directory (`staging`): a re-run continues in it, and a failure keeps it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pocketlm.common.errors import ArtifactError
from pocketlm.common.hashing import sha256_bytes, sha256_file

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


def _version() -> str:
    from pocketlm import __version__

    return __version__


def read_manifest(path: str | Path, kind: str | Iterable[str] | None = None) -> dict[str, Any]:
    """Load `path/manifest.json`, checking the artifact kind; raises ArtifactError with a fix."""
    directory = Path(path)
    manifest_path = directory / MANIFEST_NAME
    if not directory.exists():
        raise ArtifactError(f"{directory}: no such directory")
    if not manifest_path.is_file():
        raise ArtifactError(
            f"{directory}: not a PocketLM artifact (no {MANIFEST_NAME}); "
            "it may be incomplete or made by another tool"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{manifest_path}: corrupt manifest ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("kind"), str):
        raise ArtifactError(f"{manifest_path}: corrupt manifest (no 'kind')")
    schema = manifest.get("schema", 0)
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise ArtifactError(
            f"{manifest_path}: corrupt manifest (schema {schema!r} is not a number)"
        )
    _check_files_table(manifest_path, manifest.get("files", {}))
    if kind is not None:
        kinds = {kind} if isinstance(kind, str) else set(kind)
        if manifest["kind"] not in kinds:
            expected = " or ".join(sorted(kinds))
            raise ArtifactError(
                f"{directory} is a '{manifest['kind']}' artifact, expected {expected}"
            )
    if schema > SCHEMA_VERSION:
        raise ArtifactError(
            f"{directory}: schema {schema} is newer than this PocketLM understands "
            f"({SCHEMA_VERSION}); upgrade pocketlm"
        )
    return manifest


def _check_files_table(manifest_path: Path, files: Any) -> None:
    """'files' maps each name to {'bytes': n >= 0, 'sha256': 64 hex digits (optional)}."""
    if not isinstance(files, dict):
        raise ArtifactError(f"{manifest_path}: corrupt manifest ('files' is not an object)")
    for name, info in files.items():
        size = info.get("bytes") if isinstance(info, dict) else None
        digest = info.get("sha256", "0" * 64) if isinstance(info, dict) else None
        if (
            not isinstance(size, int)
            or isinstance(size, bool)
            or size < 0
            or not isinstance(digest, str)
            or len(digest) != 64
        ):
            raise ArtifactError(
                f"{manifest_path}: corrupt manifest (entry for {name!r} needs 'bytes' and a sha256)"
            )


def parent_ref(path: str | Path) -> dict[str, Any]:
    """A manifest `parents` entry for an artifact dir (hash of its manifest) or a plain file."""
    p = Path(path).resolve()
    if p.is_dir() and (p / MANIFEST_NAME).is_file():
        data = (p / MANIFEST_NAME).read_bytes()
        kind = json.loads(data).get("kind", "unknown")
        return {"path": str(p), "kind": kind, "sha256": sha256_bytes(data)}
    if p.is_file():
        return {"path": str(p), "kind": "file", "sha256": sha256_file(p)}
    raise ArtifactError(f"{p}: cannot reference as a parent (not a file or artifact directory)")


def verify_files(path: str | Path, *, check_hashes: bool = True) -> None:
    """Check every file the manifest lists exists with its size (and sha256); raise ArtifactError."""
    directory = Path(path)
    manifest = read_manifest(directory)
    for name in manifest.get("files", {}):
        check_listed_file(directory, manifest, name, check_hash=check_hashes)


def check_listed_file(
    directory: Path, manifest: dict[str, Any], name: str, *, check_hash: bool = True
) -> None:
    """Raise ArtifactError unless file `name` is listed in the manifest, present, of the listed
    size and (with check_hash, when listed) of the listed sha256."""
    info = manifest.get("files", {}).get(name)
    f = directory / name
    if info is None:
        raise ArtifactError(
            f"{f}: not listed in {directory / MANIFEST_NAME}: the artifact was changed after it "
            "was written"
        )
    if not f.is_file():
        raise ArtifactError(f"{directory}: missing file {name} listed in the manifest")
    size = f.stat().st_size
    if size != info["bytes"]:
        raise ArtifactError(
            f"{f}: size {size} bytes, manifest says {info['bytes']}: the file is truncated or corrupt"
        )
    if check_hash and "sha256" in info and sha256_file(f) != info["sha256"]:
        raise ArtifactError(f"{f}: sha256 does not match the manifest: the file is corrupt")


class ArtifactWriter:
    """Write an artifact into a temporary sibling directory, then rename it to `out` on commit."""

    def __init__(
        self,
        out: str | Path,
        kind: str,
        *,
        config: dict[str, Any] | None = None,
        parents: Sequence[dict[str, Any]] = (),
        command: Sequence[str] | None = None,
        overwrite: bool = False,
        staging: str | None = None,
    ) -> None:
        """staging: a fixed name for the temporary sibling directory; an existing one is
        continued (not wiped) and a failure keeps it, so a re-run resumes what a killed one wrote."""
        self.out = Path(out)
        self.kind = kind
        self.config = config or {}
        self.parents = list(parents)
        self.command = list(command) if command is not None else None
        self.overwrite = overwrite
        self.summary: dict[str, Any] = {}
        occupied = self.out.exists() and (self.out.is_file() or any(self.out.iterdir()))
        if occupied and not overwrite:
            raise ArtifactError(
                f"{self.out} already exists; choose another --out or pass --overwrite"
            )
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.resumable = staging is not None
        self.tmp = self.out.parent / (staging or f".{self.out.name}.tmp-{os.getpid()}")
        if self.tmp.exists() and not self.resumable:
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(exist_ok=self.resumable)
        self._done = False

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done and not self.resumable:
            self.abort()

    def path(self, name: str) -> Path:
        """Where to write file `name` inside the (temporary) artifact."""
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def abort(self) -> None:
        """Remove the temporary directory; the final path is untouched."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._done = True

    def commit(self, summary: dict[str, Any] | None = None) -> Path:
        """Hash files, write manifest.json, fsync, and atomically rename into place."""
        if summary:
            self.summary.update(summary)
        files = {}
        for f in sorted(self.tmp.rglob("*")):
            if f.is_file():
                rel = f.relative_to(self.tmp).as_posix()
                files[rel] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
        manifest = {
            "kind": self.kind,
            "schema": SCHEMA_VERSION,
            "pocketlm_version": _version(),
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "command": self.command,
            "config": self.config,
            "parents": self.parents,
            "summary": self.summary,
            "files": files,
        }
        write_json_atomic(self.tmp / MANIFEST_NAME, manifest)
        _fsync_dir(self.tmp)
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.out)
        _fsync_dir(self.out.parent)
        self._done = True
        return self.out


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to `path` via a temp file + fsync + rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def iter_lineage(path: str | Path, max_depth: int = 32) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (depth, parent entry) for an artifact's parents recursively, as far as they exist."""
    stack = [(1, p) for p in reversed(read_manifest(path).get("parents", []))]
    while stack:
        depth, ref = stack.pop()
        yield depth, ref
        p = Path(ref.get("path", ""))
        if depth < max_depth and (p / MANIFEST_NAME).is_file():
            with contextlib.suppress(ArtifactError):
                stack.extend((depth + 1, q) for q in reversed(read_manifest(p).get("parents", [])))
