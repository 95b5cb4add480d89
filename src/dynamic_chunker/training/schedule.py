"""Warmup-stable-decay learning-rate schedule (paper section 3: 10% linear warmup, final 20% decay).

The decay is the "1 - sqrt" cooldown of Hägele et al. (2024), which the paper cites for its inverse-square-root
decay: the factor falls from 1 to 0 as 1 - sqrt(x) over the decay phase (x from 0 to 1).

The schedule runs on *progress* in [0, 1]: step / total steps, or elapsed / budget for a time-limited run
(whichever is further), so that a run with ``--max-minutes`` still warms up, and decays to zero when its time is up.
"""

from __future__ import annotations

import math

import torch


def wsd_factor(start: float, end: float, warmup: float, decay: float) -> float:
    """Learning-rate factor of the optimizer step that covers progress [start, end).

    Warmup uses the end of the step (so the first step already learns), decay uses its start (so the last step
    does too): with T steps, warmup gives (k + 1) / (warmup T) and decay 1 - sqrt((k - (1 - decay) T) / (decay T)).
    """
    factor = 1.0
    if warmup > 0:
        factor = min(factor, end / warmup)
    if decay > 0 and start > 1 - decay:
        factor = min(factor, 1 - math.sqrt(min(1.0, (start - (1 - decay)) / decay)))
    return max(factor, 0.0)


class WarmupStableDecay:
    """Sets ``lr = base_lr * factor`` on every parameter group; base_lr = peak lr times the group's multiplier.

    Like ``torch.optim.lr_scheduler.LambdaLR`` but driven by progress rather than a step count; its state
    (peak learning rates, phase fractions, last factor) goes into checkpoints.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: float, decay: float):
        self.optimizer = optimizer
        self.warmup = warmup
        self.decay = decay
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.last_factor = 0.0

    def update(self, start: float, end: float) -> float:
        """Set the learning rates for the step covering progress [start, end); returns the factor."""
        self.last_factor = wsd_factor(start, end, self.warmup, self.decay)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.last_factor
        return self.last_factor

    def state_dict(self) -> dict:
        return {
            "warmup": self.warmup,
            "decay": self.decay,
            "base_lrs": list(self.base_lrs),
            "last_factor": self.last_factor,
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["base_lrs"]) != len(self.base_lrs):
            raise ValueError(
                f"schedule state has {len(state['base_lrs'])} parameter groups, the optimizer {len(self.base_lrs)}"
            )
        self.warmup, self.decay = state["warmup"], state["decay"]
        self.base_lrs = list(state["base_lrs"])
        self.last_factor = state["last_factor"]
