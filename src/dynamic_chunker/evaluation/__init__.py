"""Evaluation: FLOPs accounting (and, later, metrics, tasks and baselines)."""

from .flops import flops_breakdown, forward_flops_per_byte, training_flops_per_byte

__all__ = ["flops_breakdown", "forward_flops_per_byte", "training_flops_per_byte"]
