"""LAMBADA (OpenAI version): is the passage's last word the model's greedy continuation?"""

from __future__ import annotations

import json

from .base import Item, Task, read_text


def lambada() -> Task:
    items = []
    for line in read_text("lambada_openai.jsonl.xz").splitlines():
        record = json.loads(line)
        items.append(Item([record["context"]], [" " + record["continuation"]]))
    return Task("lambada", items, greedy=True, metrics=("acc",))
