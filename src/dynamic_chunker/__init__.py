"""dynamic_chunker: H-Net (dynamic chunking for hierarchical byte-level language models) in pure PyTorch."""

from .checkpoints import from_pretrained
from .chunking import RoutingOutput, ratio_loss
from .config import HNetConfig
from .inference import InferenceCache, StepOutput
from .model import BoundaryOutput, HNet, HNetForCausalLM, HNetOutput
from .training.optim import parameter_groups

__all__ = [
    "BoundaryOutput",
    "HNet",
    "HNetConfig",
    "HNetForCausalLM",
    "HNetOutput",
    "InferenceCache",
    "RoutingOutput",
    "StepOutput",
    "from_pretrained",
    "parameter_groups",
    "ratio_loss",
]
__version__ = "0.1.0"
