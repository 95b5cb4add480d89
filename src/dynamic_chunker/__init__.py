"""dynamic_chunker: H-Net (dynamic chunking for hierarchical byte-level language models) in pure PyTorch."""

from .checkpoints import from_pretrained
from .chunking import RoutingOutput, ratio_loss
from .config import HNetConfig
from .inference import InferenceCache, StepOutput
from .model import BoundaryOutput, HNet, HNetForCausalLM, HNetOutput
from .segmentation import Chunk, HNetChunker, chunk_text
from .training.optim import parameter_groups

__all__ = [
    "BoundaryOutput",
    "Chunk",
    "HNet",
    "HNetChunker",
    "HNetConfig",
    "HNetForCausalLM",
    "HNetOutput",
    "InferenceCache",
    "RoutingOutput",
    "StepOutput",
    "chunk_text",
    "from_pretrained",
    "parameter_groups",
    "ratio_loss",
]
__version__ = "0.1.0"
