"""Evaluation: bits per byte, compression, boundary scores, continuation log-likelihoods, zero-shot tasks,
robustness to character noise, reports, FLOPs accounting (paper App. B), FLOP-matched baselines, routing calibration,
and the retrieval benchmark for chunkers (``retrieval``, ``embeddings``, ``chunkers``, ``retrieval_benchmark``:
imported on use; embeddings need the ``rag`` extra)."""

from .bpb import BitsPerByte, bits_per_byte
from .compression import compression
from .flops import flops_breakdown, forward_flops_per_byte, training_flops_per_byte
from .lm import ByteLM, TokenLM, load_lm
from .loglik import Loglik, continuation_logliks

__all__ = [
    "BitsPerByte",
    "ByteLM",
    "Loglik",
    "TokenLM",
    "bits_per_byte",
    "compression",
    "continuation_logliks",
    "flops_breakdown",
    "forward_flops_per_byte",
    "load_lm",
    "training_flops_per_byte",
]
