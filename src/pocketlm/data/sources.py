"""Source resolution: turn `pocketlm data build` arguments into streams of Documents.

A source is a file, a folder (walked recursively, sorted), `stdlib` (the running Python's
standard library sources and documentation topics), or `hf:NAME_OR_PATH` (a Hugging Face
`datasets` dataset saved on disk, or a hub name when online). A folder saved with
`Dataset.save_to_disk` is recognised without the `hf:` prefix.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from pathlib import Path

from pocketlm.common.errors import InputError, require
from pocketlm.data import readers
from pocketlm.data.accounting import Accounting
from pocketlm.data.csv_reader import read_csv
from pocketlm.data.records import BadRecordLog, Document
from pocketlm.data.source_options import SourceOptions

TEXT_EXTENSIONS = frozenset({".txt", ".text", ".md", ".markdown", ".rst", ".tex", ".org", ".adoc"})
HTML_EXTENSIONS = frozenset({".html", ".htm", ".xhtml"})
CODE_EXTENSIONS = frozenset(
    {
        ".py",
        ".pyi",
        ".c",
        ".h",
        ".cc",
        ".cpp",
        ".cxx",
        ".hpp",
        ".hh",
        ".rs",
        ".go",
        ".java",
        ".kt",
        ".scala",
        ".js",
        ".mjs",
        ".cjs",
        ".ts",
        ".tsx",
        ".jsx",
        ".rb",
        ".php",
        ".pl",
        ".pm",
        ".sh",
        ".bash",
        ".zsh",
        ".fish",
        ".lua",
        ".r",
        ".jl",
        ".swift",
        ".m",
        ".mm",
        ".cs",
        ".fs",
        ".hs",
        ".ml",
        ".ex",
        ".exs",
        ".erl",
        ".clj",
        ".sql",
        ".toml",
        ".yaml",
        ".yml",
        ".ini",
        ".cfg",
        ".css",
        ".scss",
        ".vue",
        ".svelte",
        ".dart",
        ".zig",
        ".nim",
        ".f90",
        ".cmake",
        ".mk",
        ".proto",
        ".ipynb",
    }
)
CODE_FILENAMES = frozenset({"Makefile", "Dockerfile", "CMakeLists.txt", "Justfile"})
JSONL_EXTENSIONS = frozenset({".jsonl", ".ndjson"})
CSV_EXTENSIONS = frozenset({".csv", ".tsv"})
PARQUET_EXTENSIONS = frozenset({".parquet"})
_STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
)


def file_kind(path: Path) -> str | None:
    """'text' | 'html' | 'jsonl' | 'csv' | 'parquet' for a known file type, else None."""
    suffix = path.suffix.lower()
    if suffix in TEXT_EXTENSIONS or suffix in CODE_EXTENSIONS or path.name in CODE_FILENAMES:
        return "text"
    for kind, exts in (
        ("html", HTML_EXTENSIONS),
        ("jsonl", JSONL_EXTENSIONS),
        ("csv", CSV_EXTENSIONS),
        ("parquet", PARQUET_EXTENSIONS),
    ):
        if suffix in exts:
            return kind
    return None


def is_hf_dataset_dir(path: Path) -> bool:
    """A folder written by `datasets` save_to_disk (Dataset or DatasetDict)."""
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


def describe_source(spec: str) -> str:
    """Validate a source argument early; returns its kind ('stdlib', 'hf', 'dir', 'file')."""
    if spec == "stdlib":
        return "stdlib"
    if spec.startswith("hf:"):
        return "hf"
    path = Path(spec)
    if not path.exists():
        raise InputError(
            "no such file or folder",
            path=spec,
            hint="a source is a file, a folder, 'stdlib', or hf:NAME_OR_PATH for a Hugging Face dataset",
        )
    if is_hf_dataset_dir(path):
        return "hf"
    return "dir" if path.is_dir() else "file"


def iter_source(spec: str, opts: SourceOptions, book: Accounting) -> Iterator[Document]:
    """All documents of one source argument, in a deterministic order; every file gets a ledger."""
    kind = describe_source(spec)
    if kind == "stdlib":
        yield from _iter_stdlib(spec, opts, book)
    elif kind == "hf":
        yield from _iter_hf(spec, opts, book)
    elif kind == "file":
        yield from _iter_file(Path(spec), spec, opts, book, explicit=True)
    else:
        for path in walk_files(Path(spec), opts.include_hidden):
            yield from _iter_file(path, spec, opts, book, explicit=False)


def walk_files(root: Path, include_hidden: bool) -> Iterator[Path]:
    """The files under `root`, sorted (dot-files and dot-folders only with include_hidden)."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).parts
        if not include_hidden and any(p.startswith(".") for p in rel):
            continue
        if path.is_file() or (path.is_symlink() and not path.exists()):
            yield path  # a broken link is read and reported unreadable, never passed over


def _iter_file(
    path: Path, source: str, opts: SourceOptions, book: Accounting, *, explicit: bool
) -> Iterator[Document]:
    kind = file_kind(path)
    if kind is None:
        if not explicit:
            reason = f"unsupported type {path.suffix or path.name}"
            book.skip_file(path, source, _size(path), reason)
            return
        kind = "text"  # an explicitly named file is read as text whatever its extension
    try:
        binary = kind in ("text", "html") and readers.sniff_binary(path)
    except OSError as exc:  # unreadable before the first byte: named like any unreadable file
        ledger = book.open(path, source)
        ledger.unreadable(InputError(f"cannot read the file ({exc.strerror or exc})", path=path), 0)
        book.done_reading(ledger)
        return
    if binary:
        if explicit:
            raise InputError("looks like a binary file (contains NUL bytes), not text", path=path)
        book.skip_file(path, source, _size(path), "binary")
        return
    ledger = book.open(path, source)
    try:
        if kind in ("text", "html"):
            yield from readers.read_text_file(path, opts, ledger, is_html=kind == "html")
        elif kind == "jsonl":
            yield from readers.read_jsonl(path, opts, ledger)
        elif kind == "csv":
            yield from read_csv(path, opts, ledger)
        else:
            yield from readers.read_parquet(path, opts, ledger)
    except OSError as exc:  # permission denied, a file that vanished, an I/O error mid-read
        reason = f"cannot read the file ({exc.strerror or exc})"
        ledger.unreadable(InputError(reason, path=path), _size(path))
    book.done_reading(ledger)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def stdlib_root() -> Path:
    """Folder of the running Python's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """Standard-library .py files (tests and third-party packages excluded), sorted."""
    root = stdlib_root()
    out = []
    for path in sorted(root.rglob("*.py")):
        if _STDLIB_SKIP_DIRS.intersection(path.relative_to(root).parts[:-1]):
            continue
        out.append(path)
    return out


def _stdlib_topics() -> dict[str, str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip the docs
        return {}
    return topics


def stdlib_docs_bytes() -> int:
    """UTF-8 size of the documentation topics that ship with Python."""
    return sum(len(t.encode("utf-8")) for t in _stdlib_topics().values())


def _iter_stdlib(source: str, opts: SourceOptions, book: Accounting) -> Iterator[Document]:
    # The stdlib is read as it ships: a file that is not UTF-8 is counted and skipped, never fatal,
    # because the user cannot fix it.
    lenient = BadRecordLog(
        policy="skip", counts=book.bad_log.counts, examples=book.bad_log.examples
    )
    for path in stdlib_files():
        ledger = book.open(path, source, lenient)
        yield from readers.read_text_file(path, opts, ledger)
        book.done_reading(ledger)
    topics = _stdlib_topics()
    ledger = book.open("pydoc_data.topics", source)
    for name in sorted(topics):
        text = topics[name]
        n_bytes = len(text.encode("utf-8"))
        ledger.progress(n_bytes)
        yield ledger.emit(text, f"pydoc_data.topics:{name}", n_bytes)
    book.done_reading(ledger)


def _iter_hf(spec: str, opts: SourceOptions, book: Accounting) -> Iterator[Document]:
    name, rows = hf_rows(spec, opts.hf_split)
    ledger = book.open(name, spec)
    yield from readers.read_records(rows, name, opts, ledger)
    book.done_reading(ledger)


def hf_rows(spec: str, split: str) -> tuple[str, Iterator[dict]]:
    """(name, rows as dicts) of a Hugging Face dataset: a save_to_disk folder (the `split` of a
    DatasetDict) or, online, a hub name streamed; `spec` may carry the hf: prefix."""
    name = spec[3:] if spec.startswith("hf:") else spec
    datasets = require("datasets", "hf", "Reading Hugging Face datasets")
    if Path(name).exists():
        loaded = datasets.load_from_disk(name)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise InputError(
                    f"no split '{split}' (splits: {', '.join(loaded)})",
                    path=name,
                    hint="choose one with --set sources.hf_split=NAME",
                )
            loaded = loaded[split]
        return name, iter(loaded)
    # Online path: the same reader over a streamed hub dataset.
    return name, iter(datasets.load_dataset(name, split=split, streaming=True))
