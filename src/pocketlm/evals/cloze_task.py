"""A multiple-choice cloze task made from plain text (pure): which few words come next?

Each item's question is the text up to a word inside a line (the lines before it too, up to
`context_chars`), its right choice the next `words` words of that line, and its other choices
`words`-word runs taken from other lines of the same text (a long line counts as pieces of
`line_words` words). Seeded: the same texts and seed give
the same records (task_files' `question` / `choices` / `answer`). The quickstart scores its
variants on such a task from its own validation text, so their task scores mean something.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

_WORD = re.compile(r"\S+")


def _candidates(texts: Sequence[str], min_words: int, max_words: int) -> list[tuple[int, int, str]]:
    """(text index, offset in it, the piece) of every piece with enough words: the lines, a long
    line cut into pieces of `max_words` words (prose may hold a paragraph a line)."""
    out = []
    for t, text in enumerate(texts):
        offset = 0
        for line in text.splitlines(keepends=True):
            spans = list(_WORD.finditer(line))
            for first in range(0, len(spans), max_words):
                piece = spans[first : first + max_words]
                if len(piece) >= min_words:
                    start = piece[0].start() if first else 0  # a line's first piece: its indent
                    out.append((t, offset + start, line[start : piece[-1].end()]))
            offset += len(line)
    return out


def _run(line: str, rng: random.Random, words: int) -> str:
    """`words` consecutive words of the line from a random position."""
    tokens = line.split()
    start = rng.randrange(len(tokens) - words + 1)
    return " ".join(tokens[start : start + words])


def cloze_records(
    texts: Sequence[str],
    *,
    items: int = 32,
    choices: int = 4,
    words: int = 3,
    context_chars: int = 200,
    line_words: int = 16,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Up to `items` multiple-choice records ({"question", "choices", "answer": index}) from
    `texts`; fewer when the texts hold fewer usable lines (one item a line, or a piece of
    `line_words` words of a longer line, at most)."""
    if choices < 2 or words < 1 or items < 0:
        raise ValueError(f"need choices >= 2, words >= 1, items >= 0; got {choices}, {words}, {items}")  # fmt: skip
    rng = random.Random(seed)
    lines = _candidates(
        texts, words + 1, max(line_words, words + 1)
    )  # at least one word of the line before the blank
    if len(lines) < choices:
        return []
    records = []
    for t, offset, line in rng.sample(lines, min(items, len(lines))):
        spans = list(_WORD.finditer(line))
        cut = rng.randrange(1, len(spans) - words + 1)  # words before the blank
        gold = " ".join(m.group() for m in spans[cut : cut + words])
        question = (texts[t][:offset] + line[: spans[cut - 1].end()])[-context_chars:]
        others: list[str] = []
        for _ in range(20 * choices):  # distinct runs of other lines; a short text may lack them
            if len(others) == choices - 1:
                break
            other = lines[rng.randrange(len(lines))][2]
            run = _run(other, rng, words)
            if other != line and run != gold and run not in others:
                others.append(run)
        if len(others) < choices - 1:
            continue
        answer = rng.randrange(choices)
        options = [*others[:answer], gold, *others[answer:]]
        records.append({"question": question, "choices": options, "answer": answer})
    return records
