"""Prompts for task items, zero- or few-shot, in lm-evaluation-harness's layout.

An item's context is its question (prompt, or a classify text in CLASSIFY_TEMPLATE); a choice is
scored as the continuation TARGET_DELIMITER + choice. A few-shot prompt puts `shots` solved
examples before it, each context + TARGET_DELIMITER + its answer, joined by FEWSHOT_DELIMITER
(lm-eval's defaults: " " and a blank line). The examples are other items of the same task, drawn
by a seeded generator per item, so a run is repeatable and an item never sees itself solved.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pocketlm.evals.task_files import ChoiceItem, ClassifyItem, GenerateItem, Item, Task

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
CLASSIFY_TEMPLATE = "{text}\nLabel:"  # a language model labels a text by the word after this


@dataclass(frozen=True)
class Prompt:
    """What the model sees for one item: the context, and for scored items the continuations
    (TARGET_DELIMITER + each choice) with the right one's index."""

    context: str
    continuations: tuple[str, ...] = ()
    gold: int = -1


def item_context(item: Item) -> str:
    """The item's own context, without examples."""
    if isinstance(item, ChoiceItem):
        return item.context
    if isinstance(item, GenerateItem):
        return item.prompt
    return CLASSIFY_TEMPLATE.format(text=item.text)


def item_target(item: Item) -> str:
    """The item's answer as a solved example shows it."""
    if isinstance(item, ChoiceItem):
        return item.choices[item.gold]
    if isinstance(item, GenerateItem):
        return item.answers[0]
    return item.label


def fewshot_examples(task: Task, index: int, shots: int, seed: int) -> list[Item]:
    """`shots` other items of the task for item `index`, drawn by a generator seeded with
    (seed, index)."""
    if shots <= 0:
        return []
    pool = [i for i in range(len(task.items)) if i != index]
    rng = random.Random(seed * 1_000_003 + index)
    picked = rng.sample(pool, min(shots, len(pool)))
    return [task.items[i] for i in picked]


def build_prompt(task: Task, index: int, *, shots: int = 0, seed: int = 1234) -> Prompt:
    """The prompt of item `index` of `task` with `shots` solved examples before it."""
    item = task.items[index]
    examples = fewshot_examples(task, index, shots, seed)
    parts = [item_context(e) + TARGET_DELIMITER + item_target(e) for e in examples]
    context = FEWSHOT_DELIMITER.join([*parts, item_context(item)])
    if isinstance(item, ChoiceItem):
        conts = tuple(TARGET_DELIMITER + c for c in item.choices)
        return Prompt(context, conts, item.gold)
    if isinstance(item, ClassifyItem):
        conts = tuple(TARGET_DELIMITER + label for label in task.labels)
        return Prompt(context, conts, task.labels.index(item.label))
    return Prompt(context)


def choice_texts(task: Task, item: Item) -> tuple[str, ...]:
    """The choices as acc_norm measures them (without the delimiter, as lm-eval does)."""
    if isinstance(item, ChoiceItem):
        return item.choices
    return task.labels
