"""HellaSwag validation: context "activity: ctx", four endings; the harness's text clean-up.

One known difference from the harness: it builds the context as ``ctx_a + " " + ctx_b.capitalize()``, but the shipped
text (klosax/hellaswag_text_data) holds only the joined ``ctx``, so ``ctx_b`` keeps its lower-case first letter
("... on a roof. he" where the harness reads "... on a roof. He"). The same for every choice of an item.
"""

from __future__ import annotations

import re

from .base import Item, Task, read_text


def preprocess(text: str) -> str:
    """The harness's HellaSwag clean-up: ' [title]' becomes '. ', other [bracketed] artefacts and doubled spaces go."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag() -> Task:
    lines = read_text("hellaswag_val.txt.xz").split("\n")
    items = []
    for i in range(0, len(lines) - 5, 6):
        context, gold, endings = lines[i], int(lines[i + 1]), lines[i + 2 : i + 6]
        context = preprocess(context)
        items.append(Item([context] * 4, [" " + preprocess(e) for e in endings], gold))
    return Task("hellaswag", items)
