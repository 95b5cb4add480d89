"""Look at learned chunk boundaries: find them in a text, mark them, and score them against word starts.

The paper reports that a trained 1-stage H-Net puts its boundaries mostly at word starts, i.e. on the byte that
follows a space. :func:`score_boundaries` measures exactly that (precision and recall against the positions that
follow whitespace) plus neighbouring references that show *how* boundaries miss: on the whitespace byte itself
(one byte early), at word starts and, with a tokenizer, at BPE token starts (definitions in :mod:`.targets`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .targets import TARGETS, target_bytes


@torch.no_grad()
def find_boundaries(model, data: bytes, window: int = 8192, batch_size: int = 8) -> list[torch.Tensor]:
    """Chunk starts of every stage over ``data``, as (len(data),) bool tensors (outermost stage first).

    The text is cut into windows of ``window`` bytes that run independently (batched; the last, shorter window on
    its own); each window's first byte is a forced boundary, as at any sequence start.
    """
    if not data:
        raise ValueError("no bytes to chunk: the text is empty")
    if window < 1 or batch_size < 1:
        raise ValueError(f"window and batch_size must be >= 1, got {window} and {batch_size}")
    device = next(model.parameters()).device
    ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    full = len(data) // window
    pieces: list[list[torch.Tensor]] = []
    batches = [ids[: full * window].view(full, window)[i : i + batch_size] for i in range(0, full, batch_size)]
    if len(data) % window:
        batches.append(ids[full * window :].unsqueeze(0))
    for batch in batches:
        found = model.boundaries(batch.to(device))
        pieces.append([found.chunk_starts(s).reshape(-1).cpu() for s in range(len(found.routing))])
    return [torch.cat(stage) for stage in zip(*pieces, strict=True)]


def forced_starts(length: int, window: int) -> torch.Tensor:
    """Positions where :func:`find_boundaries` forces a boundary (window starts): left out of the scores."""
    forced = torch.zeros(length, dtype=torch.bool)
    forced[::window] = True
    return forced


def reference_positions(data: bytes, tokenizer=None) -> dict[str, torch.Tensor]:
    """Boolean masks over ``data`` of the reference sets that boundaries are scored against (``bpe`` only with a
    tokenizer); the definitions are :mod:`dynamic_chunker.evaluation.targets`, shared with the trainer."""
    ids = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    names = [n for n in TARGETS if n != "bpe" or tokenizer is not None]
    return {name: target_bytes(name, ids, tokenizer)[0] for name in names}


def boundary_counts(starts: torch.Tensor, reference: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(hits, boundaries, references) as float64: the counts behind precision and recall, summed over any shape.

    ``starts``: chunk starts; ``reference``: reference positions; ``candidates``: where a boundary of this stage could
    be (the previous stage's chunk starts; every byte for stage 0), minus forced positions. Precision = hits /
    boundaries, recall = hits / references."""
    chosen, reference = starts & candidates, reference & candidates
    return torch.stack([(chosen & reference).sum(), chosen.sum(), reference.sum()]).double()


@dataclass
class BoundaryScore:
    reference: str
    precision: float  # share of (unforced) boundaries that fall on a reference position
    recall: float  # share of reference positions (among the stage's candidate positions) that get a boundary
    base_rate: float  # share of candidate positions that are reference positions (the precision of random boundaries)

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall (0 when both are 0)."""
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


def score_boundaries(
    data: bytes,
    starts: torch.Tensor,
    exclude: torch.Tensor | None = None,
    candidates: torch.Tensor | None = None,
    tokenizer=None,
) -> list[BoundaryScore]:
    """Precision and recall of ``starts`` (bool over ``data``) against each reference of :func:`reference_positions`;
    positions in ``exclude`` (forced boundaries) are left out of both sides, and only ``candidates`` (for an inner
    stage: the outer stage's chunk starts) count as reference positions."""
    if starts.shape != (len(data),):
        raise ValueError(f"starts must be one flag per byte ({len(data)}), got shape {tuple(starts.shape)}")
    keep = torch.ones_like(starts) if candidates is None else candidates.clone()
    if exclude is not None:
        keep &= ~exclude
    scores = []
    for name, reference in reference_positions(data, tokenizer).items():
        hits, chosen, total = boundary_counts(starts, reference, keep).tolist()
        scores.append(
            BoundaryScore(
                name,
                precision=hits / max(chosen, 1),
                recall=hits / max(total, 1),
                base_rate=total / max(int(keep.sum()), 1),
            )
        )
    return scores


def mark_boundaries(data: bytes, starts: torch.Tensor, marker: str = "|") -> str:
    """The text with ``marker`` before every chunk start (except the first byte); a boundary inside a multi-byte
    UTF-8 character is moved to the start of that character so the text stays readable."""
    if starts.shape != (len(data),):
        raise ValueError(f"starts must be one flag per byte ({len(data)}), got shape {tuple(starts.shape)}")
    cuts = set()
    for i in torch.nonzero(starts).flatten().tolist():
        while i > 0 and (data[i] & 0xC0) == 0x80:  # step back to the first byte of the character
            i -= 1
        if i > 0:
            cuts.add(i)
    edges = [0, *sorted(cuts), len(data)]
    return marker.join(data[a:b].decode("utf-8", errors="replace") for a, b in zip(edges, edges[1:]))


def score_table(scores: list[BoundaryScore]) -> str:
    lines = ["| reference | precision | recall | base rate |", "|---|---:|---:|---:|"]
    lines += [f"| {s.reference} | {s.precision:.3f} | {s.recall:.3f} | {s.base_rate:.3f} |" for s in scores]
    return "\n".join(lines)
