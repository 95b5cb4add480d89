"""A sanity check of the whole scoring pipeline built from a corpus: does the model pick a passage's true
continuation over continuations taken from other documents?

Item: a document of the split is cut at a random character; the context is the ``context`` characters before the
cut, the choices are the ``length`` characters after it and ``choices - 1`` passages of the same length that start
at random characters of other documents, in random order. The choices follow the context directly (no delimiter)
and have equal lengths, so acc_norm ranks as acc does. Chance is 1 / choices; a model that has learnt anything of
the text's statistics (spelling across the cut, topic) scores well above it, an untrained or uniform one at it.
Built from the model's own training split it checks the pipeline; from the validation split, what was learnt.
"""

from __future__ import annotations

import random

from ...errors import InvalidArgument
from .base import Item, Task


def continuation_task(
    texts: list[str], items: int = 200, context: int = 200, length: int = 40, choices: int = 4, seed: int = 0
) -> Task:
    """The task over ``texts`` (documents), seeded: the same texts and seed give the same items."""
    if items < 1 or context < 1 or length < 1 or choices < 2:
        raise InvalidArgument(
            f"items, context and length must be >= 1 and choices >= 2, got {items}, {context}, {length}, {choices}"
        )
    usable = [t for t in texts if len(t) >= context + length]
    if len(usable) < 2:
        raise InvalidArgument(
            f"the continuation task needs at least 2 documents of {context + length} characters or more, "
            f"found {len(usable)}"
        )
    rng = random.Random(seed)
    out = []
    for _ in range(items):
        source = rng.randrange(len(usable))
        text = usable[source]
        cut = rng.randint(context, len(text) - length)
        others = []
        while len(others) < choices - 1:
            other = rng.randrange(len(usable))
            if other != source:
                start = rng.randint(0, len(usable[other]) - length)
                others.append(usable[other][start : start + length])
        gold = rng.randrange(choices)
        options = [*others[:gold], text[cut : cut + length], *others[gold:]]
        out.append(Item([text[cut - context : cut]] * choices, options, gold))
    return Task("continuation", out, delimiter="")


def corpus_continuation_task(split, items: int = 200, seed: int = 0, max_bytes: int = 20_000_000, **sizes) -> Task:
    """:func:`continuation_task` over the documents of a prepared corpus split (its first ``max_bytes`` bytes)."""
    from ...data.tokens import documents

    return continuation_task(list(documents(split, max_bytes=max_bytes)), items=items, seed=seed, **sizes)
