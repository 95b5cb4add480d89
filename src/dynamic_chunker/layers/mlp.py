"""Gated MLP (SwiGLU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """fc2(SiLU(gate) * value) where fc1 = [value | gate]: the *second* half is the gate, as in the official MLP."""

    def __init__(self, d_model: int, hidden: int, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(d_model, 2 * hidden, bias=False, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, d_model, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * value)
