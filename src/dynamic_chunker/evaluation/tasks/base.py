"""Zero-shot tasks scored by log-likelihood, as the lm-evaluation-harness does (``lm_eval/api/task.py``,
``process_results`` of ``multiple_choice`` and ``loglikelihood`` tasks; checked against its source).

Multiple choice: choice j is the request (context, delimiter + choice_j), the delimiter being the harness's
``target_delimiter`` (" "). ``acc`` picks the highest summed log-likelihood; ``acc_norm`` the highest
log-likelihood divided by ``len(choice_j)``, the number of *characters* of the choice string without the delimiter
(the harness's ``completion_len``; characters, not bytes or tokens). Ties go to the first choice (``np.argmax``).
Partial scoring (WinoGrande, XWinograd, the harness's "multiple input" mode): the choices are contexts (the sentence
up to the blank with each option filled in) and share the continuation (delimiter + the rest of the sentence);
only ``acc`` is reported. Greedy tasks (LAMBADA, ``lambada_openai``): ``acc`` is the share of items whose whole
continuation (delimiter + last word) greedy decoding reproduces (the harness's ``is_greedy``).
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
    delimiter: str = " "  # the harness's target_delimiter: starts every continuation; not counted by acc_norm

    def choice(self, continuation: str) -> str:
        """The choice string behind a continuation (without the delimiter): what acc_norm divides by."""
        return continuation.removeprefix(self.delimiter)


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
        norm = [r.logprob / max(len(task.choice(c)), 1) for r, c in zip(results, item.continuations, strict=True)]
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
