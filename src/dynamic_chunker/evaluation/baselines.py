"""Baseline models to compare an H-Net with, sized by FLOPs per byte (paper App. B counting, ``flops.py``)."""

from __future__ import annotations

import math

from ..config import HNetConfig
from .flops import forward_flops_per_byte


def isotropic_config(hnet: HNetConfig, target_flops: float, seq_len: int, window: int = 1023) -> HNetConfig:
    """A LlamaByte-style byte Transformer ``["T<depth>"]`` at the H-Net's outer width whose forward FLOPs per byte at
    ``seq_len`` are closest to ``target_flops``: sliding window ``window`` (+1 keys), 64-dim heads with half-head
    rotary. Searches depth and SwiGLU width (multiples of 128, 2 to 4 times the width); ties go to the SwiGLU width
    nearest the usual 8/3 ratio."""
    width = hnet.d_model[0]
    heads = max(1, width // 64)
    best = None
    for ffn in range(128 * math.ceil(2 * width / 128), 4 * width + 1, 128):
        for depth in range(1, 129):
            cfg = HNetConfig.from_dict(
                {
                    "arch_layout": [f"T{depth}"],
                    "d_model": [width],
                    "d_intermediate": [ffn],
                    "ssm_cfg": {"d_state": hnet.ssm_cfg.d_state},
                    "attn_cfg": {
                        "num_heads": [heads],
                        "rotary_emb_dim": [width // heads // 2],
                        "window_size": [window],
                    },
                }
            )
            flops = forward_flops_per_byte(cfg, seq_len, [])
            key = (abs(flops - target_flops), abs(ffn - 8 * width / 3))
            if best is None or key < best[0]:
                best = (key, cfg)
            if flops > target_flops:
                break
    return best[1]
