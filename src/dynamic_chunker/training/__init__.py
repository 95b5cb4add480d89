"""Training: YAML configs, the trainer (single process or torchrun DDP), atomic checkpoints, schedule and logs."""

from .config import TrainConfig, load_config
from .optim import build_optimizer, paper_lr_multipliers, parameter_groups
from .trainer import TrainResult, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "load_config",
    "paper_lr_multipliers",
    "parameter_groups",
    "train",
]
