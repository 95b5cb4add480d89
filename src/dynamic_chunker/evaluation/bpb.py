"""Bits per byte of a model over a corpus split, a file or a string.

The documents are packed into one stream (BOS id before each), cut into windows of ``window`` inputs that share one
id with the next window (as the trainer's validation windows), and run in batches with per-document resets
(``document_ids``). A target that is a BOS (the start of the next document) is not counted. Bits per byte =
summed NLL of the counted targets / ln 2 / their UTF-8 bytes: for a byte model one byte per target, for a token
model the byte length of each target token, so both measure the same text.
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
    token_bytes = lm.token_bytes.to(lm.device)
    nats = torch.zeros((), dtype=torch.float64)
    scored_bytes = scored_tokens = 0
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
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        counted = valid[:, 1:] & (targets != lm.bos)
        nats += nll.double()[counted].sum().cpu()
        scored_bytes += int(token_bytes[targets][counted].sum())
        scored_tokens += int(counted.sum())
        bar.update(len(rows))
    bar.close()
    if scored_bytes == 0:
        raise InvalidArgument("no bytes were scored: the text holds only document starts")
    return BitsPerByte(float(nats) / math.log(2) / scored_bytes, scored_bytes, scored_tokens, len(starts))


def _bar(enabled: bool, total: int, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, disable=not enabled, dynamic_ncols=True)
