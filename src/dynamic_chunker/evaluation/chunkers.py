"""The chunkers people use today, as ``text -> chunks`` functions of one size parameter, and the search that sets
that parameter so the mean chunk length hits a target (the fair way to compare chunkers: retrieval quality moves
with chunk length far more than with where the boundaries go).

Every baseline runs without overlap and counts characters (``len``), so the parameter is a length in characters;
the package's own offsets are used where it gives them. The packages are in the ``rag`` extra.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .retrieval import Chunker, to_spans


def fixed_size(size: int) -> Chunker:
    """Consecutive windows of ``size`` characters (the last one shorter)."""

    def chunk(text: str) -> list[tuple[int, int]]:
        return [(start, min(start + size, len(text))) for start in range(0, len(text), size)]

    return chunk


def langchain_recursive(size: int) -> Chunker:
    """LangChain's ``RecursiveCharacterTextSplitter`` (separators blank line, newline, space, nothing; default
    options), returning strings."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    return RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=0, length_function=len).split_text


def semchunk_chars(size: int) -> Chunker:
    """``semchunk`` with a character counter (``len``), using its offsets."""
    import semchunk

    chunker = semchunk.chunkerify(len, chunk_size=size)
    return lambda text: chunker(text, offsets=True)[1]


def chonkie_recursive(size: int) -> Chunker:
    """chonkie's ``RecursiveChunker`` with its character tokenizer and default rules, using its offsets."""
    from chonkie import RecursiveChunker

    chunker = RecursiveChunker(tokenizer="character", chunk_size=size)
    return lambda text: [(c.start_index, c.end_index) for c in chunker.chunk(text)]


def chonkie_sentence(size: int) -> Chunker:
    """chonkie's ``SentenceChunker`` (sentences packed up to ``size`` characters), using its offsets."""
    from chonkie import SentenceChunker

    chunker = SentenceChunker(tokenizer="character", chunk_size=size, chunk_overlap=0)
    return lambda text: [(c.start_index, c.end_index) for c in chunker.chunk(text)]


# name -> (factory of one integer parameter, the package it needs)
BASELINES: dict[str, tuple[Callable[[int], Chunker], str | None]] = {
    "fixed-size": (fixed_size, None),
    "langchain-recursive": (langchain_recursive, "langchain-text-splitters"),
    "semchunk": (semchunk_chars, "semchunk"),
    "chonkie-recursive": (chonkie_recursive, "chonkie"),
    "chonkie-sentence": (chonkie_sentence, "chonkie"),
}


def mean_chunk_length(chunker: Chunker, documents: Sequence[str]) -> float:
    lengths = [e - s for d in documents for s, e in to_spans(d, chunker(d))]
    return float(np.mean(lengths)) if lengths else 0.0


def calibrate(
    factory: Callable[[int], Chunker], documents: Sequence[str], target: float, max_steps: int = 8, tolerance=0.01
) -> tuple[int, float]:
    """The integer parameter whose mean chunk length over ``documents`` is nearest to ``target`` characters, and
    that mean. Search: start at ``target``, then rescale the parameter by target / mean (mean length is close to
    proportional to it) until within ``tolerance`` or ``max_steps`` chunkings; then the nearest of the tried values.
    """
    tried: dict[int, float] = {}
    param = max(int(round(target)), 1)
    for _ in range(max_steps):
        tried[param] = mean_chunk_length(factory(param), documents)
        if abs(tried[param] - target) <= tolerance * target or tried[param] == 0:
            break
        proposal = max(int(round(param * target / tried[param])), 1)
        if proposal in tried:  # the rescaling cycles: step by one towards the target instead
            proposal = param + (1 if tried[param] < target else -1)
            if proposal in tried or proposal < 1:
                break
        param = proposal
    best = min(tried, key=lambda p: abs(tried[p] - target))
    return best, tried[best]
