"""Fixed-length byte windows over a packed corpus split, with deterministic, resumable, rank-sharded batches.

Window ``i`` covers bytes ``[i * seq_len, i * seq_len + seq_len + 1)`` of the split's concatenation: ``seq_len`` inputs
plus the next-byte target of the last one, so consecutive windows share one byte and the incomplete tail is dropped.
Documents are packed: ``document_ids`` number the documents inside a window from 0 and change exactly at each BOS,
which is what the model's packed mode (``document_ids=``) needs to restart state at document starts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import torch

from ..errors import InvalidArgument
from .corpus import CorpusSplit


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit torch seed for ``(seed, epoch)``; hashing keeps different pairs from colliding."""
    digest = hashlib.sha256(f"{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class ByteWindows:
    """Non-overlapping ``seq_len + 1``-byte windows of a split; ``windows[i]`` -> ``(input_ids, document_ids)``."""

    def __init__(self, split: CorpusSplit, seq_len: int = 8192, seed: int = 0) -> None:
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise InvalidArgument(f"seq_len must be a positive integer, got {seq_len!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        self.split = split
        self.seq_len = seq_len
        self.seed = seed
        self._count = (len(split) - 1) // seq_len
        if self._count < 1:
            raise InvalidArgument(
                f"split {split.name!r} has {len(split)} bytes, shorter than one window of seq_len + 1 = {seq_len + 1} "
                f"bytes; use a seq_len below {len(split)} or prepare more data"
            )
        self._offsets = np.arange(seq_len + 1, dtype=np.int64)
        self._order_cache: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self._count

    def _gather(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Bytes and window-relative document ids of windows ``indices``: two (len(indices), seq_len + 1) int64."""
        positions = indices[:, None] * self.seq_len + self._offsets  # (n, seq_len + 1)
        input_ids = np.asarray(self.split.data[positions], dtype=np.int64)
        document = np.searchsorted(self.split.doc_starts, positions, side="right")
        document_ids = document - document[:, :1]
        return torch.from_numpy(input_ids), torch.from_numpy(document_ids.astype(np.int64))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"window index must be an integer, got {type(index).__name__}")
        if not -self._count <= index < self._count:
            raise IndexError(f"window {index} out of range for {self._count} windows")
        input_ids, document_ids = self._gather(np.array([index % self._count], dtype=np.int64))
        return input_ids[0], document_ids[0]

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The permutation of window indices used in ``epoch`` (torch.Generator seeded from ``(seed, epoch)``)."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            self._order_cache = (epoch, torch.randperm(self._count, generator=generator))
        return self._order_cache[1]

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        """Global batches per epoch; the windows left over after the last full global batch wait for the next epoch."""
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size and world_size must be >= 1, got {batch_size} and {world_size}")
        steps = self._count // (batch_size * world_size)
        if steps < 1:
            raise InvalidArgument(
                f"split {self.split.name!r} has {self._count} windows of {self.seq_len + 1} bytes, fewer than one "
                f"global batch of batch_size * world_size = {batch_size * world_size}; lower seq_len or batch_size"
            )
        return steps

    def _check(self, step: int, batch_size: int, rank: int, world_size: int) -> int:
        """Validate batch arguments; returns the steps per epoch."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self.steps_per_epoch(batch_size, world_size)

    def batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        """Rank ``rank``'s share of global batch ``step``: ``input_ids`` and ``document_ids``, (batch_size, L+1)."""
        epoch, within = divmod(step, self._check(step, batch_size, rank, world_size))
        start = (within * world_size + rank) * batch_size
        indices = self.epoch_order(epoch)[start : start + batch_size].numpy()
        input_ids, document_ids = self._gather(indices)
        return {"input_ids": input_ids, "document_ids": document_ids}

    def batches(
        self, batch_size: int, start_step: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """Endless ``(step, batch)`` pairs from ``start_step`` on; resuming at step s repeats an uninterrupted run.

        Global batch ``g`` is windows ``[g * B * world, (g + 1) * B * world)`` of its epoch's order (the epoch's
        leftover windows are skipped); rank ``r`` takes the ``r``-th contiguous slice of ``B``.
        """
        self._check(start_step, batch_size, rank, world_size)  # fail at the call, not at the first next()

        def generate() -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
            step = start_step
            while True:
                yield step, self.batch(step, batch_size, rank, world_size)
                step += 1

        return generate()
