"""WinoGrande and XWinograd with partial scoring: the candidate fills the blank in the context, and only the rest
of the sentence is scored (the harness's ``winogrande`` / ``xwinograd``)."""

from __future__ import annotations

import json

from ...errors import InvalidArgument
from .base import Item, Task, read_text

XWINOGRAD_LANGUAGES = ("en", "fr", "jp", "pt", "ru", "zh")


def winogrande() -> Task:
    items = []
    for line in read_text("winogrande.jsonl.xz").splitlines():
        record = json.loads(line)
        options = record["context_options"]
        items.append(Item(options, [" " + record["continuation"]] * len(options), record["gold"]))
    return Task("winogrande", items, metrics=("acc",))


def _pronoun_span(sentence: str, tokens: list[str], span: list[int]) -> tuple[int, int]:
    """Character offsets in ``sentence`` of tokens ``span[0]:span[1]``, found left to right. Tokenizer spellings of
    quotes (`` and '') become '"'; a token still not found gets an empty span where the search stands."""
    position, offsets = 0, []
    for token in tokens:
        token = {"``": '"', "''": '"'}.get(token, token)
        start = sentence.find(token, position)
        end = position if start < 0 else start + len(token)
        offsets.append((position if start < 0 else start, end))
        position = end
    start, end = offsets[span[0]][0], offsets[span[1] - 1][1]
    if start == end:
        raise InvalidArgument(f"pronoun tokens {tokens[span[0] : span[1]]} not found in {sentence!r}")
    return start, end


def xwinograd(language: str) -> Task:
    """XWinograd items of one language as the harness's ``xwinograd_*`` (which reads the same sentences with the
    pronoun as "_"): context = sentence up to the pronoun with a candidate in its place, continuation = " " + the rest
    of the sentence stripped (the space is added in every language, Chinese and Japanese included, as the harness
    does). Where nothing follows the pronoun (10 Russian items) the candidates are the continuations instead."""
    if language not in XWINOGRAD_LANGUAGES:
        raise InvalidArgument(f"unknown XWinograd language {language!r}; choose from {', '.join(XWINOGRAD_LANGUAGES)}")
    items = []
    for line in read_text("xwinograd.tsv.xz").splitlines():
        fields = line.split("\t")
        if fields[0] != language:
            continue
        sentence, tokens, pronoun, candidates = fields[3], *(json.loads(f) for f in fields[4:7])
        start, end = _pronoun_span(sentence, tokens, pronoun[1])
        rest = sentence[end:].strip()
        gold = [c[3] for c in candidates].index(True)
        if rest:
            items.append(Item([sentence[:start] + c[0] for c in candidates], [" " + rest] * len(candidates), gold))
        else:  # the pronoun ends the sentence (10 Russian items): nothing to score after it, so score the candidates
            head = sentence[:start].rstrip(" ")
            items.append(Item([head] * len(candidates), [sentence[len(head) : start] + c[0] for c in candidates], gold))
    return Task(f"xwinograd_{language}", items, metrics=("acc",))
