"""Precision policy: internal arithmetic (residual streams, norms, SSM scan) runs in float32, or wider.

A bf16/fp16/fp32 model computes these in float32, as the official implementation does; a float64 model
keeps float64 throughout, so that it can serve as an exact reference (e.g. for gradcheck).
"""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """float32, or ``dtype`` if it is wider (None means torch's default dtype)."""
    return torch.promote_types(dtype or torch.get_default_dtype(), torch.float32)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in its compute dtype (see :func:`compute_dtype`)."""
    return x.to(compute_dtype(x.dtype))
