"""The training objective (next-byte cross-entropy + alpha * ratio losses) and the routing statistics we report.

The one definition of the loss: the trainer, ``reference.verify_reference`` and every benchmark call it.

Targets: the model reads ``input_ids[:, :-1]`` (with ``document_ids[:, :-1]``) and predicts ``input_ids[:, 1:]``.
A target that *starts a new document* (its BOS byte) is ignored: with per-document resets the model cannot know
where the next document of a packed row begins, so that byte is noise in the loss and in bits-per-byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..chunking import ratio_loss
from ..evaluation.boundaries import WHITESPACE as WHITESPACE_BYTES
from ..model import HNetOutput

IGNORE = -100
RATIO_LOSS_WEIGHT = 0.03  # alpha, the paper's weight of the ratio losses (the default of a config's ratio.alpha)
WHITESPACE = torch.tensor(sorted(WHITESPACE_BYTES))  # one definition of "follows whitespace" with hnet boundaries


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


@torch.no_grad()
def routing_sums(output: HNetOutput, inputs: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
    """Counts to add up over batches and processes, then :func:`summarize`.

    Per stage: valid positions, boundaries, sum of boundary probabilities. Then for stage 0: positions that follow
    whitespace ("word starts"), boundaries that are not forced (row or document starts), and boundaries at word starts.
    """
    values = []
    for r in output.routing:
        positions = r.boundary_mask.numel() if r.mask is None else r.mask.sum()
        prob = r.boundary_prob if r.mask is None else r.boundary_prob * r.mask
        values += [positions, r.boundary_mask.sum(), prob.float().sum()]
    if not output.routing:  # isotropic model: no boundaries to score
        return torch.tensor([*values, 0.0, 0.0, 0.0], dtype=torch.float64, device=inputs.device)
    forced = F.pad(documents[:, 1:] != documents[:, :-1], (1, 0), value=True)
    after_space = F.pad(torch.isin(inputs[:, :-1], WHITESPACE.to(inputs.device)), (1, 0), value=False) & ~forced
    free = output.routing[0].boundary_mask & ~forced
    values += [after_space.sum(), free.sum(), (free & after_space).sum()]
    return torch.stack([torch.as_tensor(v, dtype=torch.float64, device=inputs.device) for v in values])


def summarize(sums: torch.Tensor, stages: int, prefix: str = "") -> dict[str, float]:
    """Per stage: ``compression_s`` (positions per chunk = N realised), ``bytes_per_chunk_s`` (bytes per chunk of
    stage s, cumulative), ``boundary_prob_s`` (mean p); stage-0 ``space_precision`` / ``space_recall`` of the
    unforced boundaries against positions that follow whitespace."""
    s = sums.tolist()
    out = {}
    total_bytes = s[0]
    for k in range(stages):
        positions, boundaries, prob = s[3 * k : 3 * k + 3]
        out[f"{prefix}compression_{k}"] = positions / max(boundaries, 1)
        out[f"{prefix}bytes_per_chunk_{k}"] = total_bytes / max(boundaries, 1)
        out[f"{prefix}boundary_prob_{k}"] = prob / max(positions, 1)
    word_starts, free, hits = s[3 * stages :]
    out[f"{prefix}space_precision"] = hits / free if free else math.nan
    out[f"{prefix}space_recall"] = hits / word_starts if word_starts else math.nan
    return out
