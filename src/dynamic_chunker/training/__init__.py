"""Training: YAML configs, the trainer (single process or torchrun DDP), atomic checkpoints, schedule and logs."""

from .config import TrainConfig, load_config, paper_lr_multipliers
from .trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_config", "paper_lr_multipliers", "train"]
