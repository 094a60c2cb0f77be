"""An instruction set PocketLM derives offline from the standard library's own source: for each
documented function, the request is its docstring's first sentence and the answer is the
function's code. It turns the quickstart's base model into one that answers a request with code
(`pocketlm quickstart --chat`), with nothing downloaded.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path

MAX_ANSWER_CHARS = 700  # keeps request + answer within a 256-token row at ~3.5 bytes/token
_SENTENCE = re.compile(r"^(.+?[.!?])(\s|$)", re.S)


def first_sentence(docstring: str) -> str:
    """The docstring's first sentence on one line ('' when it has none worth asking for)."""
    text = " ".join(docstring.strip().split("\n\n")[0].split())
    match = _SENTENCE.match(text)
    sentence = match.group(1) if match else text
    return sentence if 12 <= len(sentence) <= 200 else ""


def records_from_source(source: str) -> Iterator[dict[str, str]]:
    """Prompt/completion records of the documented top-level and method functions in one module's
    source (none when it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.name.startswith(
            "_"
        ):
            continue
        request = first_sentence(ast.get_docstring(node) or "")
        segment = ast.get_source_segment(source, node)
        # a method's segment starts at its `def` but keeps its body's indentation: dedent both
        code = textwrap.dedent(" " * node.col_offset + segment) if segment else ""
        if not request or not code or len(code) > MAX_ANSWER_CHARS:
            continue
        args = ", ".join(a.arg for a in node.args.args if a.arg not in ("self", "cls"))
        yield {
            "prompt": f"Write a Python function {node.name}({args}): {request}",
            "completion": code,
        }


def stdlib_instruction_records(files: Iterable[Path], limit: int = 4000) -> list[dict[str, str]]:
    """Up to `limit` records from the given source files, in file order (deterministic)."""
    records: list[dict[str, str]] = []
    for path in files:
        if path.suffix != ".py":
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # a file the corpus would skip too: nothing to learn from it
        for record in records_from_source(source):
            records.append(record)
            if len(records) >= limit:
                return records
    return records
