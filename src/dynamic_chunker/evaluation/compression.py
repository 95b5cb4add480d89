"""Compression per stage: how many bytes (and positions of the stage above) each chunk of each stage holds.

:func:`positions_per_chunk` is the one definition of a stage's realised compression, used by the trainer's
statistics, :func:`compression`, ``hnet boundaries`` and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

from .boundaries import find_boundaries


def positions_per_chunk(length: float, counts: Sequence[float]) -> list[float]:
    """Per stage (outermost first): the positions it reads over its chunks. ``length``: bytes read by stage 0;
    ``counts[s]``: chunks of stage s (= the positions stage s + 1 reads). A stage without chunks counts as one."""
    positions = [length, *counts]
    return [positions[s] / max(positions[s + 1], 1) for s in range(len(counts))]


def compression(model, data: bytes, window: int = 8192, batch_size: int = 8) -> list[dict[str, float]]:
    """One row per chunking stage (outermost first): ``chunks``, ``bytes_per_chunk`` (cumulative) and
    ``positions_per_chunk`` (the stage's own ratio, what the ratio loss targets). Empty for isotropic models."""
    if model.config.num_stages == 1:
        return []
    return compression_rows(len(data), find_boundaries(model, data, window=window, batch_size=batch_size))


def compression_rows(length: int, starts) -> list[dict[str, float]]:
    """The rows of :func:`compression` from each stage's chunk starts (bool over ``length`` bytes)."""
    counts = [int(s.sum()) for s in starts]
    ratios = positions_per_chunk(length, counts)
    return [
        {"stage": s, "chunks": c, "bytes_per_chunk": length / max(c, 1), "positions_per_chunk": r}
        for s, (c, r) in enumerate(zip(counts, ratios, strict=True))
    ]
