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
layers take their fastest path; ``starts is None`` is how the scans know, without
reading the device, that a batch has no document resets.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(eq=False)
class Segments:
    mask: torch.Tensor | None = None
    starts: torch.Tensor | None = None

    @classmethod
    def from_inputs(
        cls,
        input_ids: torch.Tensor,
        mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        vocab_size: int = 256,
        check_values: bool = True,
    ) -> Segments:
        """Check a model's inputs and describe them: input_ids (B, L) ints, mask (B, L) bool, document_ids (B, L).

        Types and shapes are always checked. ``check_values`` also reads the tensors, in one device-to-host copy:
        ids in 0..vocab_size-1, right padding, and whether the mask or the document ids change anything (if not,
        they are dropped, so that layers take their fastest path). Without it (trusted inputs, e.g. the trainer's
        windows, or a GPU loop that must not wait) the mask and the starts are kept as given.
        """
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor of byte ids, got {type(input_ids).__name__}")
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}); give at least one byte per row")
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise TypeError("mask must be a bool tensor (True = valid position)")
            if mask.shape != input_ids.shape:
                raise ValueError(
                    f"mask shape {tuple(mask.shape)} differs from input_ids shape {tuple(input_ids.shape)}"
                )
        starts = None
        if document_ids is not None:
            if not isinstance(document_ids, torch.Tensor) or document_ids.shape != input_ids.shape:
                raise ValueError("document_ids must be a tensor with the same shape as input_ids")
            starts = torch.nn.functional.pad(document_ids[:, 1:] != document_ids[:, :-1], (1, 0), value=False)
        if not check_values:
            return cls(mask=mask, starts=starts)
        ids = input_ids.long()  # `uint8 >= 256` would wrap around
        no = torch.zeros((), dtype=torch.bool, device=ids.device)
        facts = [ids.min(), ids.max()]
        if mask is not None:
            facts += [~mask[:, 0].all(), (mask[:, 1:] & ~mask[:, :-1]).any(), mask.all()]
        facts.append(no if starts is None else starts.any())
        values = torch.stack([f.long() for f in facts]).tolist()  # the one synchronisation
        low, high, has_starts = values[0], values[1], values[-1]
        if low < 0 or high >= vocab_size:
            raise ValueError(f"input_ids must be byte values in 0..{vocab_size - 1}, got values in {low}..{high}")
        if mask is not None:
            first_padded, gap, full = values[2:5]
            if first_padded:
                raise ValueError("every row needs at least one valid position, and padding must be on the right")
            if gap:
                raise ValueError("mask must be right-padded: a valid position follows a padded one in some row")
            mask = None if full else mask
        return cls(mask=mask, starts=starts if has_starts else None)

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
