"""Look at learned chunk boundaries: find them in a text, mark them, and score them against word starts.

The paper reports that a trained 1-stage H-Net puts its boundaries mostly at word starts, i.e. on the byte that
follows a space. :func:`score_boundaries` measures exactly that (precision and recall against the positions that
follow whitespace) plus neighbouring references that show *how* boundaries miss: on the whitespace byte itself
(one byte early), at word starts and, with a tokenizer, at BPE token starts (definitions in :mod:`.targets`).

One implementation for every caller: ``hnet boundaries`` scores a text with :func:`score_boundaries`; the trainer
adds up :func:`routing_sums` over batches and processes and turns them into its columns with
:func:`routing_summary`; both count with :func:`boundary_counts` and divide with :func:`precision_recall`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model import HNetOutput, routing_positions
from .targets import TARGETS, stage_targets, target_bytes


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


def reference_sets(ids: torch.Tensor, tokenizer=None, names=None) -> dict[str, torch.Tensor]:
    """(B, L) bool masks over byte ids (B, L) of the reference sets ``names`` (default: every set of
    :mod:`.targets`, ``bpe`` only with a tokenizer) that boundaries are scored against."""
    names = names or [n for n in TARGETS if n != "bpe" or tokenizer is not None]
    return {name: target_bytes(name, ids, tokenizer) for name in names}


def reference_positions(data: bytes, tokenizer=None) -> dict[str, torch.Tensor]:
    """The masks of :func:`reference_sets` over the bytes of ``data``, each (len(data),)."""
    ids = torch.frombuffer(bytearray(data), dtype=torch.uint8)[None]
    return {name: mask[0] for name, mask in reference_sets(ids, tokenizer).items()}


def boundary_counts(starts: torch.Tensor, reference: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(hits, boundaries, references) as float64: the counts behind precision and recall, summed over any shape.

    ``starts``: chunk starts; ``reference``: reference positions; ``candidates``: where a boundary of this stage could
    be (the previous stage's chunk starts; every byte for stage 0), minus forced positions. Precision = hits /
    boundaries, recall = hits / references."""
    chosen, reference = starts & candidates, reference & candidates
    return torch.stack([(chosen & reference).sum(), chosen.sum(), reference.sum()]).double()


def precision_recall(hits: float, chosen: float, references: float) -> tuple[float, float]:
    """(hits / chosen, hits / references) from the counts of :func:`boundary_counts`; NaN where nothing was counted."""
    return (hits / chosen if chosen else math.nan), (hits / references if references else math.nan)


@dataclass
class BoundaryScore:
    reference: str
    precision: float  # share of (unforced) boundaries that fall on a reference position (NaN: no boundaries)
    recall: float  # share of reference positions (among the stage's candidate positions) that get a boundary
    base_rate: float  # share of candidate positions that are reference positions (the precision of random boundaries)

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall (0 when both are 0, NaN when either is undefined)."""
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
        precision, recall = precision_recall(hits, chosen, total)
        scores.append(BoundaryScore(name, precision, recall, base_rate=total / max(int(keep.sum()), 1)))
    return scores


def free_positions(output: HNetOutput, documents: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per stage: positions[s] (B, L_s), the byte each position starts at, and the positions whose boundary the
    router decides (valid, and neither a row start nor a document start, where a boundary is forced)."""
    positions = routing_positions(output.routing)
    free = []
    for r, where in zip(output.routing, positions, strict=True):
        docs = documents.gather(1, where)
        forced = F.pad(docs[:, 1:] != docs[:, :-1], (1, 0), value=True)
        free.append(~forced if r.mask is None else r.mask & ~forced)
    return positions, free


@torch.no_grad()
def routing_sums(
    output: HNetOutput,
    documents: torch.Tensor,
    references: dict[str, torch.Tensor],
    surprisal: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Counts of a forward's routing to add up over batches and processes, then :func:`routing_summary`.

    Per stage s: valid positions, boundaries, summed boundary probability; per reference set (B, L) over the bytes
    (``at_whitespace`` only at stage 0) the counts of :func:`boundary_counts` on the stage's free positions; with
    ``surprisal`` (B, L, -log p of each input byte, NaN where unknown) its sums at chunk starts and elsewhere.
    """
    positions, free = free_positions(output, documents)
    sums = {}
    for s, r in enumerate(output.routing):
        sums[f"positions_{s}"] = r.boundary_mask.numel() if r.mask is None else r.mask.sum()
        sums[f"boundaries_{s}"] = r.boundary_mask.sum()
        sums[f"prob_{s}"] = (r.boundary_prob if r.mask is None else r.boundary_prob * r.mask).float().sum()
        for name, reference in references.items():
            if s == 0 or name != "at_whitespace":
                counts = boundary_counts(r.boundary_mask, stage_targets(reference, positions[s]), free[s])
                sums.update(zip((f"hits_{name}_{s}", f"chosen_{name}_{s}", f"refs_{name}_{s}"), counts))
        if surprisal is not None:
            value = surprisal.gather(1, positions[s])
            known = free[s] & ~value.isnan()
            value = value.nan_to_num()
            for where, mask in (("starts", known & r.boundary_mask), ("other", known & ~r.boundary_mask)):
                sums[f"surprisal_{where}_{s}"] = (value * mask).sum()
                sums[f"count_{where}_{s}"] = mask.sum()
    return {k: torch.as_tensor(v, dtype=torch.float64, device=documents.device) for k, v in sums.items()}


def routing_summary(sums: dict[str, float], stages: int, prefix: str = "") -> dict[str, float]:
    """Per stage s from the totals of :func:`routing_sums`: ``compression_s`` (positions per chunk = N realised,
    :func:`.compression.positions_per_chunk`), ``bytes_per_chunk_s`` (bytes per chunk of stage s, cumulative),
    ``boundary_prob_s`` (mean p), ``precision_REF_s`` / ``recall_REF_s`` of the unforced boundaries against each
    reference set, and ``enrichment_s`` (mean surprisal of the bytes that start a chunk over the mean at the
    stage's other positions)."""
    from .compression import positions_per_chunk

    out = {}
    for s in range(stages):
        positions, boundaries = sums[f"positions_{s}"], sums[f"boundaries_{s}"]
        out[f"{prefix}compression_{s}"] = positions_per_chunk(positions, [boundaries])[0]
        out[f"{prefix}bytes_per_chunk_{s}"] = positions_per_chunk(sums["positions_0"], [boundaries])[0]
        out[f"{prefix}boundary_prob_{s}"] = sums[f"prob_{s}"] / max(positions, 1)
        for key in sums:
            if key.startswith("hits_") and key.endswith(f"_{s}"):
                name = key[len("hits_") : -len(f"_{s}")]
                precision, recall = precision_recall(*(sums[f"{k}_{name}_{s}"] for k in ("hits", "chosen", "refs")))
                out[f"{prefix}precision_{name}_{s}"], out[f"{prefix}recall_{name}_{s}"] = precision, recall
        if f"count_starts_{s}" in sums:
            starts = sums[f"surprisal_starts_{s}"] / max(sums[f"count_starts_{s}"], 1)
            other = sums[f"surprisal_other_{s}"] / max(sums[f"count_other_{s}"], 1)
            out[f"{prefix}enrichment_{s}"] = starts / other if other else math.nan
    return out


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
