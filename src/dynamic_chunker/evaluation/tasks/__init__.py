"""Zero-shot tasks (one module per family) and their registry: ``TASKS[name]()`` -> :class:`Task`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import cache, partial

from ...errors import InvalidArgument
from .base import Item, Task, evaluate, score
from .hellaswag import hellaswag
from .lambada import lambada
from .multiple_choice import arc_challenge, arc_easy, openbookqa, piqa
from .winograd import XWINOGRAD_LANGUAGES, winogrande, xwinograd

TASKS: dict[str, Callable[[], Task]] = {
    "hellaswag": hellaswag,
    "piqa": piqa,
    "arc_easy": arc_easy,
    "arc_challenge": arc_challenge,
    "winogrande": winogrande,
    "lambada": lambada,
    "openbookqa": openbookqa,
    **{f"xwinograd_{lang}": partial(xwinograd, lang) for lang in XWINOGRAD_LANGUAGES},
}


@cache
def _parsed(name: str) -> Task:
    return TASKS[name]()


def load_task(name: str, limit: int | None = None) -> Task:
    """Task ``name`` with its first ``limit`` items (all when None); files are parsed once per process."""
    if name not in TASKS:
        raise InvalidArgument(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    if limit is not None and limit < 1:
        raise InvalidArgument(f"--limit must be at least 1, got {limit}")
    task = _parsed(name)
    return dataclasses.replace(task, items=list(task.items[:limit]))


def evaluate_tasks(
    lm, names: list[str] | None = None, limit: int | None = None, batch_size: int = 16, progress: bool = False
) -> dict[str, dict[str, float]]:
    """{task: {acc, acc_norm, items}} for every task in ``names`` (default: all), ``limit`` items each."""
    results = {}
    for name in names or list(TASKS):
        if progress:
            print(f"{name}:", flush=True)
        results[name] = evaluate(lm, load_task(name, limit), batch_size=batch_size, progress=progress)
    return results


__all__ = ["TASKS", "Item", "Task", "evaluate", "evaluate_tasks", "load_task", "score"]
