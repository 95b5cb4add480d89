"""Decoding state of the mixers, and the conventions every cache follows.

* Batch rows advance independently: a step receives ``rows`` (k,) long, the batch rows it advances, and
  inputs of shape (k, D) for exactly those rows; every other row's state stays untouched.
* A cache is filled by a full-sequence forward (prefill) over a right-padded batch: each row's state then ends at
  its own last valid position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .segments import Segments


def valid_lengths(segments: Segments, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """(B,) number of valid positions of each row."""
    if segments.mask is None:
        return torch.full((batch,), length, dtype=torch.long, device=device)
    return segments.mask.sum(dim=1)


@dataclass
class MambaCache:
    conv: torch.Tensor  # (B, conv_dim, d_conv): the last d_conv conv inputs, newest last (model dtype)
    ssm: torch.Tensor  # (B, heads, headdim, d_state) SSM state in the compute dtype (float32 or wider)


@dataclass
class KVCache:
    """Rotated keys and values, position p stored in slot p % S.

    S = window + 1 for sliding-window layers (a ring buffer holding exactly the visible keys) and the maximum
    sequence length for global ones. A step at position p may attend every slot j <= p: before the buffer wraps
    those are positions 0..p, afterwards every slot holds one of the S visible positions.
    """

    keys: torch.Tensor  # (B, S, heads, head_dim)
    values: torch.Tensor  # (B, S, heads, head_dim)
    positions: torch.Tensor  # (B,) long: positions processed so far = position of the next one
    filled: int = 0  # leading slots that may hold data (an upper bound over rows, kept without reading the device)

    def prefill(self, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> None:
        """Store the rotated keys/values (B, L, heads, head_dim) of each row's first ``lengths`` positions."""
        S, L = self.keys.shape[1], keys.shape[1]
        last = lengths[:, None] - 1
        # latest position <= last that lands in each slot; negative for slots no position reached yet
        source = last - (last - torch.arange(S, device=keys.device)) % S
        index = source.clamp(0, L - 1)[..., None, None].expand(-1, -1, *keys.shape[2:])
        self.keys.copy_(keys.detach().gather(1, index))
        self.values.copy_(values.detach().gather(1, index))
        self.positions.copy_(lengths)
        self.filled = min(S, L)
