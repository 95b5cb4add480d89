"""Evaluation: FLOPs accounting, FLOP-matched baselines, routing calibration, boundary scores."""

from .flops import flops_breakdown, forward_flops_per_byte, training_flops_per_byte

__all__ = ["flops_breakdown", "forward_flops_per_byte", "training_flops_per_byte"]
