"""Evaluation: FLOPs accounting, boundary scores, and the retrieval benchmark for chunkers (``retrieval``,
``embeddings``, ``baselines``, ``retrieval_benchmark``; imported on use, they need the ``rag`` extra for embeddings)."""

from .flops import flops_breakdown, forward_flops_per_byte, training_flops_per_byte

__all__ = ["flops_breakdown", "forward_flops_per_byte", "training_flops_per_byte"]
