"""Bits per byte of a model over a corpus split, a file or a string.

The documents are packed into one stream (BOS id before each), cut into windows of ``window`` inputs that share one
id with the next window (as the trainer's validation windows), and run in batches with per-document resets
(``document_ids``). A target that is a BOS (the start of the next document) is not counted. Bits per byte =
summed NLL of the counted targets / ln 2 / their UTF-8 bytes: for a byte model one byte per target, for a token
model the byte length of each target token, so both measure the same text.

:func:`target_nll`, :func:`scored_bytes` and :func:`bits` are that computation in pieces, shared with the trainer
(training and validation rows) so that ``val_bpb`` and ``hnet eval bpb`` are one definition.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.corpus import CorpusSplit
from ..errors import InvalidArgument
from .lm import ByteLM, TokenLM


@dataclass
class BitsPerByte:
    bpb: float
    bytes: int  # UTF-8 bytes scored
    tokens: int  # targets scored (= bytes for a byte model)
    windows: int

    def to_dict(self) -> dict:
        return asdict(self)


def target_nll(logits: torch.Tensor, targets: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """(B, L) float64: -ln p(target) under (B, L, V) next-id logits (computed in at least float32), 0 where not
    ``counted`` (targets there may be any value, e.g. an ignore index)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    nll = F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    return torch.where(counted, nll.double(), 0.0)


def scored_bytes(targets: torch.Tensor, counted: torch.Tensor, token_bytes: torch.Tensor) -> torch.Tensor:
    """float64 scalar: UTF-8 bytes of the counted targets (``token_bytes[id]``: 1 per byte id; a token's length)."""
    return token_bytes.to(targets.device)[targets.clamp(min=0)][counted].sum().double()


def bits(nats: float, byte_count: float) -> float:
    """Bits per byte from summed NLL in nats over ``byte_count`` bytes (NaN when no byte was scored)."""
    return float(nats) / math.log(2) / float(byte_count) if byte_count else math.nan


def stream_of(lm: ByteLM, source: str | bytes | list | CorpusSplit) -> np.ndarray:
    """The ids the model reads for ``source``: a text (one document), a list of texts, or a corpus split."""
    if isinstance(source, CorpusSplit):
        if isinstance(lm, TokenLM):
            from ..data.tokens import encode_split

            return np.asarray(encode_split(source, lm.tokenizer).data, dtype=np.int64)
        return np.asarray(source.data, dtype=np.int64)
    texts = [source] if isinstance(source, str | bytes) else list(source)
    if not texts or not any(len(t) for t in texts):
        raise InvalidArgument("no text to score: the input is empty")
    return np.fromiter((i for t in texts for i in (lm.bos, *lm.encode(t))), dtype=np.int64)


@torch.inference_mode()
def bits_per_byte(
    lm: ByteLM,
    source: str | bytes | list | CorpusSplit | Path,
    window: int = 8192,
    batch_size: int = 8,
    max_windows: int | None = None,
    progress: bool = False,
) -> BitsPerByte:
    """Bits per byte of ``lm`` on ``source`` (a text, a list of texts, a corpus split, or a file Path)."""
    if window < 1 or batch_size < 1:
        raise InvalidArgument(f"window and batch_size must be >= 1, got {window} and {batch_size}")
    if isinstance(source, Path):
        source = source.read_bytes()
    stream = torch.from_numpy(stream_of(lm, source))
    count = max(math.ceil((len(stream) - 1) / window), 0)
    if max_windows is not None:  # spread evenly over the stream, like the trainer's validation windows
        count_all, count = count, min(count, max_windows)
        starts = [i * count_all // count * window for i in range(count)]
    else:
        starts = [i * window for i in range(count)]
    if not starts:
        raise InvalidArgument("the text is too short to score: it needs at least one byte after BOS")
    nats = byte_count = torch.zeros((), dtype=torch.float64)
    scored_tokens = 0
    bar = _bar(progress, len(starts), "windows")
    for first in range(0, len(starts), batch_size):
        rows = [stream[s : s + window + 1] for s in starts[first : first + batch_size]]
        length = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        valid = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)], valid[i, : len(row)] = row, True
        ids, valid = ids.to(lm.device), valid.to(lm.device)
        inputs, targets = ids[:, :-1], ids[:, 1:]
        documents = (inputs == lm.bos).cumsum(dim=1)
        logits = lm.logits(inputs, mask=valid[:, :-1], document_ids=documents)
        counted = valid[:, 1:] & (targets != lm.bos)
        nats = nats + target_nll(logits, targets, counted).sum().cpu()
        byte_count = byte_count + scored_bytes(targets, counted, lm.token_bytes).cpu()
        scored_tokens += int(counted.sum())
        bar.update(len(rows))
    bar.close()
    if byte_count == 0:
        raise InvalidArgument("no bytes were scored: the text holds only document starts")
    return BitsPerByte(bits(nats, byte_count), int(byte_count), scored_tokens, len(starts))


def _bar(enabled: bool, total: int, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, disable=not enabled, dynamic_ncols=True)
