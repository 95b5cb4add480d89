"""Reference boundary sets over bytes: what learned chunk starts are scored against, and what a warm start aims at.

Every set is a (B, L) bool over byte ids (UTF-8 text, possibly cut mid-character at a window's edges):

- ``after_whitespace``: the byte follows a whitespace byte (the paper's word starts);
- ``at_whitespace``: the byte is whitespace (the same boundary one byte early);
- ``words``: the first byte of every ``\\w+`` run and of every single character that is neither a word character nor
  whitespace (``Hello, world`` -> ``H``, ``,``, ``w``); whitespace belongs to the chunk before it, as in the paper's
  learned chunks. Defined on the decoded text (Unicode ``\\w`` and ``\\s`` as Python's ``re``); a Chinese run without
  spaces is one word, which is what ``bpe`` is for;
- ``bpe``: the first byte of every token of a BPE tokenizer (:func:`train_bpe`) whose pieces are ``\\w+\\s*``,
  ``[^\\w\\s]\\s*`` and ``\\s+``, so tokens also start after whitespace and split words into subwords.

Continuation bytes of a multi-byte character are never in a set (only a character's first byte can start a unit).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..files import atomic_write

WHITESPACE = b" \t\n\r\x0b\x0c"  # the whitespace *bytes* of after_whitespace / at_whitespace
TARGETS = ("after_whitespace", "at_whitespace", "words", "bpe")
BPE_FILE = "bpe_tokenizer.json"  # where a run folder keeps its tokenizer
BPE_PIECES = r"\w+\s*|[^\w\s]\s*|\s+"
WORD, SPACE, OTHER = 0, 1, 2


@functools.cache
def _unicode_classes() -> torch.Tensor:
    """(0x110000,) int8: WORD, SPACE or OTHER for every code point (Python's ``re`` definitions of \\w and \\s)."""
    chars = [chr(c) for c in range(0x110000)]
    word = np.fromiter((c.isalnum() for c in chars), dtype=bool, count=len(chars))
    space = np.fromiter((c.isspace() for c in chars), dtype=bool, count=len(chars))
    word[ord("_")] = True
    classes = np.full(len(chars), OTHER, dtype=np.int8)
    classes[space] = SPACE
    classes[word] = WORD
    return torch.from_numpy(classes)


def _as_rows(ids: torch.Tensor) -> torch.Tensor:
    if ids.dim() not in (1, 2):
        raise ValueError(f"byte ids must be (L,) or (B, L), got shape {tuple(ids.shape)}")
    return (ids if ids.dim() == 2 else ids[None]).long()


def character_starts(ids: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: bytes that are not UTF-8 continuation bytes."""
    return (_as_rows(ids) & 0xC0) != 0x80


def word_starts(ids: torch.Tensor) -> torch.Tensor:
    """The ``words`` set of (B, L) byte ids, vectorised: decode each character's code point from its lead byte and the
    bytes after it, classify it, give continuation bytes their character's class, then mark class changes."""
    b = _as_rows(ids)
    nxt = [F.pad(b[:, k:], (0, k)) & 0x3F for k in (1, 2, 3)]
    code = torch.where(
        b < 0x80,
        b,
        torch.where(
            b < 0xE0,
            ((b & 0x1F) << 6) | nxt[0],
            torch.where(
                b < 0xF0,
                ((b & 0x0F) << 12) | (nxt[0] << 6) | nxt[1],
                ((b & 0x07) << 18) | (nxt[0] << 12) | (nxt[1] << 6) | nxt[2],
            ),
        ),
    ).clamp(max=0x10FFFF)
    classes = _unicode_classes().to(b.device)[code].long()
    classes = classes.masked_fill(b >= 0xF8, OTHER)  # not UTF-8 (e.g. the BOS byte 254): a unit of its own
    starts = character_starts(b)
    for _ in range(3):  # a character has at most 3 continuation bytes
        classes = torch.where(starts, classes, F.pad(classes[:, :-1], (1, 0), value=OTHER))
    before = F.pad(classes[:, :-1], (1, 0), value=-1)
    return starts & ((classes == OTHER) | ((classes == WORD) & (before != WORD)))


def whitespace_bytes(ids: torch.Tensor) -> torch.Tensor:
    b = _as_rows(ids)
    return torch.isin(b, torch.tensor(list(WHITESPACE), device=b.device))


def train_bpe(texts: Iterable[str], vocab_size: int):
    """The tokenizer of the ``bpe`` set, trained on ``texts``: byte-level BPE with the pieces of the module doc."""
    from ..data.tokens import train_bpe as train_byte_level_bpe

    return train_byte_level_bpe(texts, vocab_size, pieces=BPE_PIECES, special_tokens=())


def bpe_for_corpus(path: Path, data: np.ndarray, vocab_size: int, max_bytes: int):
    """The BPE tokenizer cached at ``path``, or one trained on the first ``max_bytes`` of a split's ``data`` (uint8,
    documents after BOS bytes 254) and saved there."""
    from tokenizers import Tokenizer

    if path.exists():
        return Tokenizer.from_file(str(path))
    documents = bytes(data[:max_bytes]).split(b"\xfe")
    tokenizer = train_bpe((d.decode("utf-8", "replace") for d in documents if d), vocab_size)
    atomic_write(path, tokenizer.to_str().encode())
    return tokenizer


def bpe_starts(ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """The ``bpe`` set of (B, L) byte ids. Each row is decoded (bytes that are not valid UTF-8 become one U+FFFD
    each), tokenized in one batch, and token start offsets (characters) are mapped to byte offsets."""
    b = _as_rows(ids)
    texts, byte_offsets = [], []
    for row in b.to(torch.uint8).cpu().numpy():
        text = row.tobytes().decode("utf-8", "surrogateescape")
        code = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        escaped = (code >= 0xDC80) & (code <= 0xDCFF)  # one undecodable byte each
        length = np.where(escaped | (code < 0x80), 1, np.where(code < 0x800, 2, np.where(code < 0x10000, 3, 4)))
        byte_offsets.append(np.cumsum(length) - length)
        texts.append(text.translate(_ESCAPES))
    out = torch.zeros(b.shape, dtype=torch.bool)
    for row, (encoding, offsets) in enumerate(zip(tokenizer.encode_batch(texts), byte_offsets, strict=True)):
        chars = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2)[:, 0]
        out[row, torch.from_numpy(offsets[chars])] = True
    return out.to(b.device)


_ESCAPES = {c: 0xFFFD for c in range(0xDC80, 0xDD00)}


def target_bytes(name: str, ids: torch.Tensor, tokenizer=None) -> torch.Tensor:
    """The reference set ``name`` (one of :data:`TARGETS`) over (B, L) byte ids as a (B, L) bool."""
    if name == "after_whitespace":
        return F.pad(whitespace_bytes(ids)[:, :-1], (1, 0), value=False)
    if name == "at_whitespace":
        return whitespace_bytes(ids)
    if name == "words":
        return word_starts(ids)
    if name == "bpe":
        if tokenizer is None:
            raise ValueError("the bpe reference needs a tokenizer (train_bpe / bpe_for_corpus)")
        return bpe_starts(ids, tokenizer)
    raise ValueError(f"unknown boundary target {name!r}; choose one of {', '.join(TARGETS)}")


def stage_targets(targets: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Targets on a stage's positions: a position is a target when the byte it starts at is. (B, L), (B, L_s)."""
    return targets.gather(1, positions)
