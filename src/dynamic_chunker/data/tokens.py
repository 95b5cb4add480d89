"""Byte-level BPE for the token baseline: train a Hugging Face ``tokenizers`` BPE on a corpus split and encode a
split into token ids packed like the byte splits (every document starts with the ``<bos>`` token).

Byte-level BPE is lossless: every token is a byte string, so bits per byte of a token model are its summed token
NLL over the UTF-8 length of the same text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidArgument
from .corpus import BOS, CorpusSplit

BOS_TOKEN = "<bos>"
# Longest pre-token in characters of the byte-level alphabet (= bytes). Text without whitespace or punctuation (DNA)
# would otherwise be one pre-token per document, and BPE training on megabyte-long words does not finish; English
# pre-tokens are far shorter, so the cap does not change how prose is split.
MAX_PIECE = 256


def documents(split: CorpusSplit, max_bytes: int | None = None) -> Iterator[str]:
    """The split's documents as text (without their BOS byte), at most ``max_bytes`` bytes of them."""
    ends = [*split.doc_starts[1:].tolist(), len(split)]
    seen = 0
    for start, end in zip(split.doc_starts.tolist(), ends, strict=True):
        if max_bytes is not None and seen >= max_bytes:
            return
        seen += end - start
        yield bytes(split.data[start + 1 : end]).decode("utf-8", errors="replace")


def train_bpe(
    texts: Iterable[str], vocab_size: int, *, pieces: str | None = None, special_tokens: Sequence[str] = (BOS_TOKEN,)
):
    """A byte-level BPE tokenizer (Hugging Face ``tokenizers``) of ``vocab_size`` ids trained on ``texts``: the
    ``special_tokens`` first (``<bos>`` = id 0 by default), then the 256 byte tokens and the merges. ``pieces``: a regex
    whose matches are the pre-tokens that merges never cross (default: GPT-2's byte-level split); either way a
    pre-token is cut every MAX_PIECE bytes."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(special_tokens):
        raise InvalidArgument(
            f"a byte-level BPE needs at least {256 + len(special_tokens)} ids (256 bytes + special tokens), "
            f"got {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    if pieces is None:
        split = [pre_tokenizers.ByteLevel(add_prefix_space=False)]
    else:
        split = [
            pre_tokenizers.Split(Regex(pieces), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    # after ByteLevel every byte is one character, so this caps pre-tokens at MAX_PIECE bytes
    split.append(pre_tokenizers.Split(Regex(rf"[\s\S]{{1,{MAX_PIECE}}}"), behavior="isolated"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(split)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def token_byte_lengths(tokenizer) -> torch.Tensor:
    """(V,) UTF-8 byte length of every id (0 for special tokens): byte-level tokens spell one byte per character."""
    lengths = torch.zeros(tokenizer.get_vocab_size(), dtype=torch.long)
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    for token, index in tokenizer.get_vocab().items():
        lengths[index] = 0 if token in specials else len(token)
    return lengths


def encode_split(split: CorpusSplit, tokenizer, cache: Path | None = None) -> CorpusSplit:
    """The split as token ids (int32) with ``<bos>`` before every document; ``doc_starts`` are the ``<bos>``
    offsets, so :class:`~dynamic_chunker.data.ByteWindows` cuts it into token windows. Cached in ``cache`` (.npy)."""
    if cache is not None and cache.is_file():
        data = np.load(cache, mmap_mode="r")
    else:
        bos = tokenizer.token_to_id(BOS_TOKEN)
        texts = list(documents(split))
        encoded = [[bos, *e.ids] for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
        data = np.fromiter((i for ids in encoded for i in ids), dtype=np.int32)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.stem + ".tmp.npy")
            np.save(tmp, data)
            tmp.replace(cache)
    doc_starts = np.flatnonzero(np.asarray(data) == tokenizer.token_to_id(BOS_TOKEN)).astype(np.int64)
    return CorpusSplit(f"{split.name} (tokens)", data, doc_starts)


__all__ = ["BOS", "BOS_TOKEN", "documents", "encode_split", "token_byte_lengths", "train_bpe"]
