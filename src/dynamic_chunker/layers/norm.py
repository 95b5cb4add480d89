"""RMSNorm variants. Arithmetic runs in float32 (float64 for float64 inputs); the result is cast to the input dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fused import gated_rms_norm
from .precision import upcast


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    x = upcast(x)
    # x * rsqrt(mean(x^2) + eps) * weight, in torch's single op (fewer passes over x than the expression)
    return F.rms_norm(x, x.shape[-1:], weight.to(x.dtype), eps).to(out_dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, out_dtype or x.dtype)


class GatedRMSNorm(RMSNorm):
    """Mamba-2's output norm: RMSNorm(y * SiLU(z)) over all channels (one group, gate before the norm)."""

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if torch.is_grad_enabled():  # the same arithmetic with a backward that recomputes the gate
            return gated_rms_norm(upcast(y), upcast(z), self.weight, self.eps, y.dtype)
        return rms_norm(upcast(y) * nn.functional.silu(upcast(z)), self.weight, self.eps, y.dtype)
