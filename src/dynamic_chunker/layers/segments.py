"""Where sequences start and end inside a (B, L) batch.

Every full-sequence layer takes a :class:`Segments`. Two independent things can
be described:

* ``mask`` (B, L) bool: valid positions, right padding only. Padded positions
  are computed like any other but never influence a valid one, because every
  mixer is causal.
* ``starts`` (B, L) bool: positions where a new document begins inside a row
  (packed sequences). Convolution, SSM state, attention, rotary positions,
  routing and the dechunk EMA all restart there. Column 0 always starts a
  document, whether or not it is marked.

``Segments()`` (both None) means every row is one full sequence, which lets
layers take their fastest path.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(eq=False)
class Segments:
    mask: torch.Tensor | None = None
    starts: torch.Tensor | None = None

    @cached_property
    def doc_ids(self) -> torch.Tensor:
        """(B, L) index of the document each position belongs to (requires ``starts``)."""
        assert self.starts is not None
        return self.starts.long().cumsum(dim=1)

    def positions(self, length: int, device: torch.device) -> torch.Tensor:
        """Position of each element within its own document: (L,) or (B, L)."""
        index = torch.arange(length, device=device)
        if self.starts is None:
            return index
        first = torch.where(self.starts, index, torch.zeros_like(index)).cummax(dim=1).values
        return index - first

    def select(self, index: torch.Tensor, counts: torch.Tensor) -> Segments:
        """Segments of the sequence made of the positions ``index`` (B, M), of which the first ``counts`` are valid."""
        mask = torch.arange(index.shape[1], device=index.device) < counts[:, None]
        starts = None if self.starts is None else self.starts.gather(1, index)
        return Segments(mask=mask, starts=starts)
