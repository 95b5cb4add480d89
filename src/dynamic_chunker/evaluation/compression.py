"""Compression per stage: how many bytes (and positions of the stage above) each chunk of each stage holds."""

from __future__ import annotations

from .boundaries import find_boundaries


def compression(model, data: bytes, window: int = 8192, batch_size: int = 8) -> list[dict[str, float]]:
    """One row per chunking stage (outermost first): ``chunks``, ``bytes_per_chunk`` (cumulative) and
    ``positions_per_chunk`` (the stage's own ratio, what the ratio loss targets). Empty for isotropic models."""
    if model.config.num_stages == 1:
        return []
    starts = find_boundaries(model, data, window=window, batch_size=batch_size)
    rows, positions = [], len(data)
    for stage, stage_starts in enumerate(starts):
        chunks = int(stage_starts.sum())
        rows.append(
            {
                "stage": stage,
                "chunks": chunks,
                "bytes_per_chunk": len(data) / max(chunks, 1),
                "positions_per_chunk": positions / max(chunks, 1),
            }
        )
        positions = chunks
    return rows
