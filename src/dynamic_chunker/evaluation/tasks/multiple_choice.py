"""ARC-Easy, ARC-Challenge, PIQA and OpenBookQA: one question, several answers, prompts as in the harness."""

from __future__ import annotations

import json

from .base import Item, Task, read_text


def _load(name: str, file: str, prompt) -> Task:
    items = []
    for line in read_text(file).splitlines():
        record = json.loads(line)
        context = prompt(record["query"])
        items.append(Item([context] * len(record["choices"]), [" " + c for c in record["choices"]], record["gold"]))
    return Task(name, items)


def arc_easy() -> Task:
    return _load("arc_easy", "arc_easy.jsonl.xz", lambda q: q + "\nAnswer:")  # "Question: ...\nAnswer: choice"


def arc_challenge() -> Task:
    return _load("arc_challenge", "arc_challenge.jsonl.xz", lambda q: q + "\nAnswer:")


def piqa() -> Task:
    return _load("piqa", "piqa.jsonl.xz", lambda q: q.rstrip("\n") + "\nAnswer:")  # "Question: goal\nAnswer: sol"


def openbookqa() -> Task:
    return _load("openbookqa", "openbook_qa.jsonl.xz", lambda q: q)  # the question stem, then " choice"
