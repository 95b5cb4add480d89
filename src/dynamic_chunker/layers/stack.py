"""Pre-norm residual blocks and the isotropic stack built from a layout string."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import CausalSelfAttention
from .mamba2 import Mamba2
from .mlp import SwiGLU
from .norm import RMSNorm
from .precision import upcast
from .segments import Segments

# Lengths a compiled block sees are padded up to a bucket, so that the data-dependent lengths of chunked stages compile
# a few times rather than at every new length: four buckets per octave (above 256 positions at most a quarter more,
# about an eighth on average), multiples of at least 64 (the CPU scan's tile, which the scan pads to anyway).
BUCKETS_PER_OCTAVE = 4
MIN_BUCKET_STEP = 64
# torch.compile keeps compiled code per block and length bucket; its default limit (8) would fall back to eager
COMPILE_CACHE_LIMIT = 256


def bucket_length(length: int) -> int:
    """The padded length of a compiled block's input: the next multiple of a step that grows with the length."""
    step = max(MIN_BUCKET_STEP, (1 << (length.bit_length() - 1)) // BUCKETS_PER_OCTAVE)
    return -(-length // step) * step


class Block(nn.Module):
    """norm1 -> mixer (-> norm2 -> mlp); the caller owns the float32 residual stream."""

    def __init__(self, mixer: nn.Module, d_model: int, mlp_width: int | None, device=None, dtype=None):
        super().__init__()
        self.norm1 = RMSNorm(d_model, device=device, dtype=dtype)
        self.mixer = mixer
        if mlp_width is not None:
            self.norm2 = RMSNorm(d_model, device=device, dtype=dtype)
            self.mlp = SwiGLU(d_model, mlp_width, device=device, dtype=dtype)
        else:
            self.norm2 = self.mlp = None
        self.compiled = None  # see compile_bucketed
        self.compiled_inference = False  # whether forwards without gradients take the compiled path too

    def compile_bucketed(self, inference: bool = False) -> None:
        """Run training forwards (gradients on, no cache; with ``inference`` also forwards without gradients, as
        chunking runs) through torch.compile with static shapes, the length padded on the right to
        :func:`bucket_length`: every mixer is causal, so the padding changes no valid output. Calling it again keeps
        the compiled forward and only widens it to inference when asked."""
        self.compiled_inference = self.compiled_inference or inference
        if self.compiled is not None:
            return
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, COMPILE_CACHE_LIMIT)
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, COMPILE_CACHE_LIMIT)
        self.compiled = torch.compile(self.uncompiled_forward, dynamic=False)

    def forward(self, residual: torch.Tensor, segments: Segments, dtype: torch.dtype, cache=None) -> torch.Tensor:
        if self.compiled is None or cache is not None or not (torch.is_grad_enabled() or self.compiled_inference):
            return self.uncompiled_forward(residual, segments, dtype, cache)
        length = residual.shape[1]
        pad = bucket_length(length) - length
        if pad:
            residual = F.pad(residual, (0, 0, 0, pad))
            segments = Segments(*(None if t is None else F.pad(t, (0, pad)) for t in (segments.mask, segments.starts)))
        return self.compiled(residual, segments, dtype)[:, :length]

    def uncompiled_forward(
        self, residual: torch.Tensor, segments: Segments, dtype: torch.dtype, cache=None
    ) -> torch.Tensor:
        residual = residual + self.mixer(self.norm1(residual, dtype), segments, cache).to(residual.dtype)
        if self.mlp is not None:
            residual = residual + self.mlp(self.norm2(residual, dtype)).to(residual.dtype)
        return residual

    def step(self, residual: torch.Tensor, cache, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``forward`` for one new position of the batch rows ``rows``; residual is (k, D)."""
        residual = residual + self.mixer.step(self.norm1(residual, dtype), cache, rows).to(residual.dtype)
        if self.mlp is not None:
            residual = residual + self.mlp(self.norm2(residual, dtype)).to(residual.dtype)
        return residual


class Isotropic(nn.Module):
    """A stack of blocks at one width, ending with its own RMSNorm; the residual stream is float32."""

    def __init__(
        self,
        letters: list[str],
        d_model: int,
        mlp_width: int,
        ssm: dict,
        num_heads: int,
        rotary_dim: int,
        window_size: int,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        layers = []
        for letter in letters:
            if letter in "mM":
                mixer = Mamba2(d_model, **ssm, **factory)
            else:
                mixer = CausalSelfAttention(d_model, num_heads, rotary_dim, window_size, **factory)
            layers.append(Block(mixer, d_model, mlp_width if letter.isupper() else None, **factory))
        self.layers = nn.ModuleList(layers)
        self.rmsnorm = RMSNorm(d_model, **factory)
        self.letters = "".join(letters)
        # recompute each layer in the backward pass instead of keeping its activations (training memory)
        self.gradient_checkpointing = False

    @property
    def height(self) -> int:
        """Residual branches: one per mixer plus one per MLP (used to scale output-projection init)."""
        return sum(2 if c.isupper() else 1 for c in self.letters)

    def forward(self, x: torch.Tensor, segments: Segments, cache: list | None = None) -> torch.Tensor:
        """(B, L, D) -> (B, L, D). ``cache`` (from ``allocate_cache``) is filled for decoding when given."""
        residual = upcast(x)
        recompute = self.gradient_checkpointing and cache is None and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if recompute:
                residual = checkpoint(layer, residual, segments, x.dtype, use_reentrant=False)
            else:
                residual = layer(residual, segments, x.dtype, None if cache is None else cache[i])
        return self.rmsnorm(residual, x.dtype)

    def allocate_cache(self, batch_size: int, max_seqlen: int, dtype: torch.dtype, device: torch.device) -> list:
        """One cache per layer (see layers/cache.py)."""
        return [layer.mixer.allocate_cache(batch_size, max_seqlen, dtype, device) for layer in self.layers]

    def step(self, x: torch.Tensor, cache: list, rows: torch.Tensor) -> torch.Tensor:
        """One new position for the batch rows ``rows``: x (k, D) -> (k, D)."""
        residual = upcast(x)
        for layer, layer_cache in zip(self.layers, cache):
            residual = layer.step(residual, layer_cache, rows, x.dtype)
        return self.rmsnorm(residual, x.dtype)
