"""Zero-shot tasks scored by log-likelihood, as the lm-evaluation-harness does.

Multiple choice: each choice is a (context, continuation) request; ``acc`` picks the highest summed log-likelihood,
``acc_norm`` the highest log-likelihood divided by the continuation's length in characters (the harness's
``acc_norm``). Partial scoring (WinoGrande, XWinograd): the choices differ in the context and share the
continuation. Greedy tasks (LAMBADA): ``acc`` is the share of items whose continuation greedy decoding reproduces.
"""

from __future__ import annotations

import bz2
import lzma
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import InvalidArgument
from ..lm import ByteLM
from ..loglik import Loglik, continuation_logliks

DATA = Path(__file__).parent / "data"


@dataclass
class Item:
    contexts: list[str]  # one per choice (the same string for ordinary multiple choice)
    continuations: list[str]  # one per choice
    gold: int = 0

    def requests(self) -> list[tuple[str, str]]:
        return list(zip(self.contexts, self.continuations, strict=True))


@dataclass
class Task:
    name: str
    items: list[Item]
    greedy: bool = False  # LAMBADA-style: accuracy of greedy decoding of the single continuation
    metrics: tuple[str, ...] = field(default=("acc", "acc_norm"))


def read_text(name: str) -> str:
    """A shipped data file, decompressed."""
    path = DATA / name
    opener = lzma.open if path.suffix == ".xz" else bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as file:
        return file.read()


def score(task: Task, logliks: list[Loglik]) -> dict[str, float]:
    """acc and acc_norm (or greedy acc) from the logliks of every request of ``task``, in item order."""
    correct = correct_norm = 0
    position = 0
    for item in task.items:
        n = len(item.continuations)
        results = logliks[position : position + n]
        position += n
        if task.greedy:
            correct += all(r.greedy for r in results)
            continue
        raw = [r.logprob for r in results]
        norm = [r.logprob / max(len(c), 1) for r, c in zip(results, item.continuations, strict=True)]
        correct += max(range(n), key=raw.__getitem__) == item.gold
        correct_norm += max(range(n), key=norm.__getitem__) == item.gold
    out = {"acc": correct / len(task.items), "items": len(task.items)}
    if "acc_norm" in task.metrics and not task.greedy:
        out["acc_norm"] = correct_norm / len(task.items)
    return out


def evaluate(
    lm: ByteLM, task: Task, batch_size: int = 16, max_length: int | None = None, progress: bool = False
) -> dict[str, float]:
    """Score every item of ``task`` with ``lm``."""
    if not task.items:
        raise InvalidArgument(f"task {task.name} has no items")
    requests = [r for item in task.items for r in item.requests()]
    logliks = continuation_logliks(lm, requests, batch_size=batch_size, max_length=max_length, progress=progress)
    return score(task, logliks)
