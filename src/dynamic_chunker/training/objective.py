"""The training objective: next-byte cross-entropy + alpha * ratio losses, plus the optional boundary warm start.
(The routing statistics the trainer reports are :mod:`dynamic_chunker.evaluation.boundaries`'.)

The one definition of the loss: the trainer, ``reference.verify_reference`` and every benchmark call it.

Targets: the model reads ``input_ids[:, :-1]`` (with ``document_ids[:, :-1]``) and predicts ``input_ids[:, 1:]``.
A target that *starts a new document* (its BOS byte) is ignored: with per-document resets the model cannot know
where the next document of a packed row begins, so that byte is noise in the loss and in bits-per-byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..chunking import ratio_loss
from ..layers.precision import upcast
from ..model import HNetOutput

IGNORE = -100
RATIO_LOSS_WEIGHT = 0.03  # alpha, the paper's weight of the ratio losses (the default of a config's ratio.alpha)
WARM_START_EPS = 1e-4  # the warm-start BCE sees p in [1e-4, 1 - 1e-4]


def split_batch(input_ids: torch.Tensor, document_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, L + 1) windows -> model inputs (B, L), their document ids (B, L), targets (B, L) with IGNORE at BOS."""
    targets = input_ids[:, 1:].masked_fill(document_ids[:, 1:] != document_ids[:, :-1], IGNORE)
    return input_ids[:, :-1], document_ids[:, :-1], targets


@dataclass
class Losses:
    ce_sum: torch.Tensor  # summed next-byte cross-entropy in nats over the counted targets (float32, has grad)
    ratio: list[torch.Tensor]  # one ratio loss per chunking stage, outermost first
    output: HNetOutput
    count: torch.Tensor  # number of counted targets (targets != IGNORE)

    def total(self, alpha: float = RATIO_LOSS_WEIGHT) -> torch.Tensor:
        """Mean cross-entropy over the counted targets + alpha * the sum of the ratio losses (a scalar to minimise)."""
        return self.ce_sum / self.count.clamp(min=1) + alpha * sum(self.ratio, self.ce_sum.new_zeros(()))


def score(output: HNetOutput, targets: torch.Tensor, ratio_targets: list[float]) -> Losses:
    """Losses of a forward's output against targets (B, L) (IGNORE = not counted); logits upcast to float32."""
    logits = output.logits.float()
    ce_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    ratio = [ratio_loss(r, n) for r, n in zip(output.routing, ratio_targets, strict=True)]
    return Losses(ce_sum, ratio, output, (targets != IGNORE).sum())


def compute_losses(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    documents: torch.Tensor,
    targets: torch.Tensor,
    ratio_targets: list[float],
) -> Losses:
    """Forward ``inputs`` (B, L) with their ``documents`` (B, L) and score against ``targets`` (from split_batch)."""
    return score(model(inputs, document_ids=documents), targets, ratio_targets)


def window_losses(
    model: torch.nn.Module, ids: torch.Tensor, ratio_targets: list[float], documents: torch.Tensor | None = None
) -> Losses:
    """Losses of (B, L + 1) windows (one document per row unless ``documents`` (B, L + 1) packs several)."""
    if documents is None:  # no document ids: the model takes its fastest path
        return score(model(ids[:, :-1]), ids[:, 1:], ratio_targets)
    return compute_losses(model, *split_batch(ids, documents), ratio_targets)


def warm_start_loss(prob: torch.Tensor, targets: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Boundary warm start: mean binary cross-entropy of boundary probabilities (B, L_s) against 0/1 ``targets`` over
    the ``counted`` positions (valid, not forced). p is squeezed into [eps, 1 - eps] so that the log stays finite and
    the gradient never vanishes at p = 0 or 1 (a cosine router reaches both)."""
    p = upcast(prob)
    squeeze = 1 - 2 * WARM_START_EPS
    # log(1 - q) from 1 - p (exact in floating point for p >= 1/2), not from 1 - q (cancellation near q = 1)
    log_q, log_not_q = (WARM_START_EPS + squeeze * p).log(), (WARM_START_EPS + squeeze * (1 - p)).log()
    bce = -torch.where(targets, log_q, log_not_q)
    return (bce * counted).sum() / counted.sum().clamp(min=1)


def warm_start_weight(weight: float, until: float, progress: float) -> float:
    """Linear decay from ``weight`` at progress 0 to exactly 0 at ``until`` (and after)."""
    return weight * max(0.0, 1.0 - progress / until)
