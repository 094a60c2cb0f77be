"""The end-of-turn check where a command opens or writes a chat model: one warning line per
problem on stderr (tokenizer/chat_consistency.py), never a failure: a model whose stop is
broken still generates, up to its token budget, and the user may be about to fix it."""

from __future__ import annotations

import sys
from pathlib import Path

from pocketlm.common.errors import PocketLMError
from pocketlm.tokenizer.chat_consistency import chat_consistency_problems, check_chat_consistency
from pocketlm.tokenizer.tokenizer import Tokenizer


def warn_chat_consistency(path: str | Path) -> list[str]:
    """Check the tokenizer of a model folder, artifact or training run and print a warning per
    problem; the problems ([] also when `path` holds no model to check)."""
    folder = Path(path)
    if not (folder / "tokenizer.json").is_file():
        from pocketlm.checkpoint.layout import resolve_model_dir

        try:
            folder = resolve_model_dir(folder)
        except PocketLMError:
            return []  # not a model: the command itself says what is wrong
    return print_problems(check_chat_consistency(folder), folder)


def warn_tokenizer_consistency(tokenizer: Tokenizer, where: str | Path) -> list[str]:
    """Check an opened model's tokenizer and print a warning per problem; the problems."""
    return print_problems(chat_consistency_problems(tokenizer), where)


def print_problems(problems: list[str], where: str | Path) -> list[str]:
    """One `warning: WHERE: problem` line on stderr per problem; the problems."""
    for problem in problems:
        print(f"warning: {where}: {problem}", file=sys.stderr)
    return problems
