"""Forward and training FLOPs per byte of an H-Net, counted as in the paper's Appendix B.

Chinchilla-style counting: a matrix multiply of (m, k) by (k, n) is 2mkn FLOPs, the backward pass costs twice the
forward, so training FLOPs = 3 x forward. Per position at width D (V vocab, H heads of size d_h with H d_h = D,
E expand, N d_state, K conv width, F MLP width):

    attention   QKV 6 D (H d_h) + logits 2 K_s (H d_h) + softmax 3 H K_s + score x V 2 K_s (H d_h) + output 2 (H d_h) D
    Mamba-2     x/z 2 D (2 E D) + B/C/dt 2 D (2 N + H_m) + SSD 6 (E D) N + conv 2 D K + gating 5 D + output 2 (E D) D
    SwiGLU      6 D F + 5 D
    embedding and LM head 2 V D each, at stage 0

K_s is the number of keys every query is counted against. The paper's 2 L^2 (H d_h) counts each query against all L
positions of the sequence (no halving for causality); we keep that and use the stage's own length L^s. The paper does
not say how it counts sliding-window layers; we use min(L^s, w + 1), the number of keys a query near the end of a long
sequence sees. The Mamba output term uses the E D -> D projection the layers actually have (this reproduces Table 2).

Stage s runs on L^s = L^0 / (R^0 ... R^{s-1}) positions, R^i being the realised bytes per chunk of stage i, so its
per-byte cost is its per-position cost divided by R^0 ... R^{s-1}. Each chunking stage also pays for its routing
projections (q and k, 2 x 2 D^2) and its residual projection (2 D^2). Norms, rotary embeddings, the cosine similarity
and the dechunk EMA are not counted (as in the paper; together they are well under 1 % here).
"""

from __future__ import annotations

import math

from ..config import HNetConfig, SSMConfig

# Bytes per chunk that the paper's ratio loss aims for, by number of chunking stages (paper section 3 / App. C).
PAPER_RATIO_TARGETS: dict[int, tuple[float, ...]] = {1: (6.0,), 2: (3.0, 3.0)}


def mamba_flops(d_model: int, ssm: SSMConfig) -> float:
    """Forward FLOPs of one Mamba-2 mixer per position (no MLP)."""
    inner = ssm.expand * d_model
    heads = inner // ssm.headdim
    return (
        2 * d_model * (2 * inner)  # x and z projections
        + 2 * d_model * (2 * ssm.d_state + heads)  # B, C and dt projections
        + 2 * 3 * inner * ssm.d_state  # SSD scan
        + 2 * d_model * ssm.d_conv  # depthwise convolution
        + 5 * d_model  # gating
        + 2 * inner * d_model  # output projection
    )


def attention_flops(d_model: int, num_heads: int, keys: float) -> float:
    """Forward FLOPs of one attention mixer per query position attending to ``keys`` positions (no MLP)."""
    inner = d_model  # H * d_h
    return (
        2 * 3 * d_model * inner  # QKV projection
        + 2 * keys * inner  # logits
        + 3 * num_heads * keys  # softmax
        + 2 * keys * inner  # score x V
        + 2 * inner * d_model  # output projection
    )


def mlp_flops(d_model: int, width: int) -> float:
    """Forward FLOPs of one SwiGLU MLP of hidden width ``width`` per position."""
    return 2 * 3 * d_model * width + 5 * d_model


def default_compression(config: HNetConfig) -> list[float]:
    """The paper's ratio-loss targets for this many chunking stages: [6] for 1-stage, [3, 3] for 2-stage models."""
    stages = config.num_stages - 1
    if stages == 0:
        return []
    if stages not in PAPER_RATIO_TARGETS:
        raise ValueError(
            f"no default compression for {stages} chunking stages; pass compression= with one bytes-per-chunk "
            "ratio per chunking stage, e.g. [3.0] * stages"
        )
    return list(PAPER_RATIO_TARGETS[stages])


def stage_lengths(seq_len: float, compression: list[float]) -> list[float]:
    """L^s for every stage: L^0 = seq_len and L^{s+1} = L^s / R^s (fractional, as an average)."""
    lengths = [float(seq_len)]
    for ratio in compression:
        lengths.append(lengths[-1] / ratio)
    return lengths


def flops_breakdown(
    config: HNetConfig, seq_len: int = 8192, compression: list[float] | None = None
) -> dict[str, float]:
    """Forward FLOPs per byte of every part of the model, keyed like ``stage1.encoder`` or ``lm_head``.

    compression: realised bytes per chunk R^s of each chunking stage (outermost first); default
    :func:`default_compression`. seq_len: bytes per sequence (it sets the attention key counts).
    """
    if not isinstance(config, HNetConfig):
        raise TypeError(f"expected an HNetConfig, got {type(config).__name__}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(f"seq_len must be a positive number of bytes, got {seq_len!r}")
    if compression is None:
        compression = default_compression(config)
    compression = list(compression)
    if len(compression) != config.num_stages - 1:
        raise ValueError(f"compression needs one ratio per chunking stage ({config.num_stages - 1}), got {compression}")
    for ratio in compression:
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio) or ratio < 1:
            raise ValueError(f"compression ratios are bytes per chunk and must be >= 1, got {compression}")

    lengths = stage_lengths(seq_len, compression)
    d0, vocab = config.d_model[0], config.vocab_size
    parts = {"embedding": 2.0 * vocab * d0}
    for s, length in enumerate(lengths):
        d = config.d_model[s]
        window = config.attn_cfg.window_size[s]
        keys = length if window < 0 else min(length, window + 1)
        per_letter = {
            "m": mamba_flops(d, config.ssm_cfg),
            "t": attention_flops(d, config.attn_cfg.num_heads[s], keys),
        }
        mlp = mlp_flops(d, config.mlp_width(s))
        positions_per_byte = length / seq_len
        for name, letters in config.stacks(s).items():
            per_position = sum(per_letter[c.lower()] + (mlp if c.isupper() else 0.0) for c in letters)
            parts[f"stage{s}.{name}"] = per_position * positions_per_byte
        if s < config.num_stages - 1:
            parts[f"stage{s}.routing"] = (2 * 2 * d * d + 2 * d * d) * positions_per_byte  # q, k; residual_proj
    parts["lm_head"] = 2.0 * vocab * d0
    return parts


def forward_flops_per_byte(config: HNetConfig, seq_len: int = 8192, compression: list[float] | None = None) -> float:
    """Forward FLOPs per byte (the paper's Table 2 'GFLOPs/byte' column, times 1e9)."""
    return sum(flops_breakdown(config, seq_len, compression).values())


def training_flops_per_byte(config: HNetConfig, seq_len: int = 8192, compression: list[float] | None = None) -> float:
    """Forward + backward FLOPs per byte: 3 x forward (backward = 2 x forward)."""
    return 3.0 * forward_flops_per_byte(config, seq_len, compression)


def boundary_flops_per_byte(config: HNetConfig, seq_len: int = 8192, compression: list[float] | None = None) -> float:
    """Forward FLOPs per byte of ``model.boundaries``: the embedding, each chunking stage's encoder and its q/k
    routing projections (2/3 of the routing entry, which also counts the residual projection)."""
    parts = flops_breakdown(config, seq_len, compression)
    stages = range(config.num_stages - 1)
    return parts["embedding"] + sum(parts[f"stage{s}.encoder"] + parts[f"stage{s}.routing"] * 2 / 3 for s in stages)
