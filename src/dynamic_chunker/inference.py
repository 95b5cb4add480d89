"""Byte-by-byte generation with the cached decoding path (``model.step``), batched over prompts.

Byte conventions (as the official tokenizer): a prompt is its UTF-8 bytes preceded by BOS = 254; the model
stops a sequence when it produces EOS = 255. Neither byte occurs in valid UTF-8, so neither appears in text.
Generation stops at the first byte in ``stop_bytes`` (EOS by default); that byte is not part of the output.
"""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .chunking import RoutingState
from .config import BOS, EOS
from .errors import InvalidArgument

CACHE_STEP = 1024  # bytes per row that the decoding cache holds beyond the prompt at first; it doubles when full


@dataclass
class StageCache:
    """Decoding state of one stage, mirroring :class:`HNet`. Parts a stage does not have are None."""

    main: StageCache | list | None = None  # the next stage's cache, or the innermost stack's layer caches
    encoder: list | None = None
    decoder: list | None = None
    routing: RoutingState | None = None
    dechunk: torch.Tensor | None = None  # (B, D) last smoothed chunk vector


@dataclass
class InferenceCache:
    """Decoding state of a whole model: ``batch_size`` rows of at most ``max_seqlen`` bytes each (prompt + new)."""

    batch_size: int
    max_seqlen: int
    stages: StageCache
    seqlen_offset: int = 0  # bytes processed by the longest row: padded prefill length + steps

    def check_prefill(self, shape: torch.Size, document_ids: torch.Tensor | None) -> None:
        """A prefill of ``shape`` (B, L) fits this fresh cache."""
        if document_ids is not None:
            raise ValueError(
                "a prefill takes one sequence per row: use mask=, not document_ids=, with inference_params"
            )
        if self.seqlen_offset:
            raise ValueError(
                "this cache has already been used: a prefill needs a fresh one from allocate_inference_cache"
            )
        if shape[0] != self.batch_size:
            raise ValueError(f"got {shape[0]} rows but the cache was allocated for {self.batch_size}")
        if shape[1] > self.max_seqlen:
            raise ValueError(f"the prompt has {shape[1]} positions but the cache holds max_seqlen={self.max_seqlen}")


@dataclass
class StepOutput:
    logits: torch.Tensor  # (B, 256) next-byte logits after the new byte
    boundary_mask: torch.Tensor  # (B, chunking stages) long: 1 / 0 = chunk starts here or not; -1 = stage did not run


def encode(prompt: str | bytes) -> list[int]:
    """Byte ids of a prompt as the model sees it: BOS, then its UTF-8 bytes."""
    if isinstance(prompt, str):
        prompt = prompt.encode("utf-8")
    if not isinstance(prompt, (bytes, bytearray)):
        raise TypeError(f"a prompt must be str or bytes, got {type(prompt).__name__}")
    return [BOS, *prompt]


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One byte per row from next-byte logits (B, 256).

    greedy (or temperature 0) takes the most likely byte. Otherwise logits / temperature, keep the top_k most
    likely bytes, then the smallest set of most likely bytes whose probability reaches top_p (nucleus), and draw.
    """
    if greedy or temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely bytes; 0 for the first, which always stays
        sorted_logits = sorted_logits.masked_fill(before >= top_p, -torch.inf)
        logits = torch.full_like(logits, -torch.inf).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]


def _check_sampling(max_new_bytes, temperature, top_k, top_p, stop_bytes) -> None:
    if not isinstance(max_new_bytes, int) or max_new_bytes < 0:
        raise InvalidArgument(f"max_new_bytes must be a non-negative integer, got {max_new_bytes!r}")
    if not temperature >= 0:
        raise InvalidArgument(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise InvalidArgument(f"top_k must be a positive integer or None, got {top_k!r}")
    if not 0 < top_p <= 1:
        raise InvalidArgument(f"top_p must be in (0, 1], got {top_p}")
    if any(not isinstance(b, int) or not 0 <= b <= 255 for b in stop_bytes):
        raise InvalidArgument(f"stop_bytes must be byte values 0..255, got {list(stop_bytes)!r}")


@torch.inference_mode()
def generate_ids(
    model,
    prompts: Sequence[str | bytes],
    max_new_bytes: int = 256,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int | None = None,
    stop_bytes: Sequence[int] = (EOS,),
) -> Iterator[list[int | None]]:
    """Decode all prompts together; yield, per step, the new byte of every row (None once a row has stopped).

    The prompts are prefilled as one right-padded batch; every row then steps from its own last byte, so a row's
    output does not depend on the others (exactly so under greedy decoding).
    """
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise TypeError("prompts must be a non-empty list of str or bytes")
    _check_sampling(max_new_bytes, temperature, top_k, top_p, stop_bytes)
    encoded = [encode(p) for p in prompts]
    device = model.embeddings.weight.device
    lengths = torch.tensor([len(ids) for ids in encoded], device=device)
    width = int(lengths.max())
    ids = torch.tensor([ids + [0] * (width - len(ids)) for ids in encoded], device=device)
    mask = torch.arange(width, device=device) < lengths[:, None]
    # memory follows what is generated: a large max_new_bytes costs nothing until the bytes are produced
    cache = model.allocate_inference_cache(len(encoded), width + min(max_new_bytes, CACHE_STEP))
    logits = model(ids, mask=mask, inference_params=cache).logits
    logits = logits[torch.arange(len(encoded), device=device), lengths - 1]
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    stop = torch.tensor(sorted(set(stop_bytes)), dtype=torch.long, device=device)
    done = torch.zeros(len(encoded), dtype=torch.bool, device=device)
    for i in range(max_new_bytes):
        new = sample(logits, temperature, top_k, top_p, greedy, generator)
        done |= torch.isin(new, stop)
        yield [None if d else b for b, d in zip(new.tolist(), done.tolist())]
        if bool(done.all()) or i == max_new_bytes - 1:
            return
        if cache.seqlen_offset == cache.max_seqlen:
            cache = grow_cache(model, cache, min(2 * cache.max_seqlen, width + max_new_bytes))
        logits = model.step(new, cache, check=False).logits  # sampled bytes are in range: no device read


def grow_cache(model, cache, max_seqlen: int):
    """A cache of ``max_seqlen`` bytes per row holding the decoding state of ``cache``.

    Only buffers sized by the old maximum grow (global attention keys/values, and sliding windows longer than it);
    position p of those sits in slot p, since no position reached the old size, so copying them into the leading
    slots of the larger buffers keeps every row's state exact. Everything else is carried over as it is.
    """
    bigger = model.allocate_inference_cache(cache.batch_size, max_seqlen)
    bigger.stages = _carry_over(cache.stages, bigger.stages)
    bigger.seqlen_offset = cache.seqlen_offset
    return bigger


def _carry_over(old, new):
    """``old``'s values in ``new``'s buffers: equal-shaped tensors are kept, smaller ones copied into the start."""
    if isinstance(old, torch.Tensor):
        if old.shape == new.shape:
            return old
        new[tuple(slice(0, n) for n in old.shape)] = old
        return new
    if isinstance(old, list):
        return [_carry_over(o, n) for o, n in zip(old, new)]
    if dataclasses.is_dataclass(old):
        for f in dataclasses.fields(old):
            setattr(new, f.name, _carry_over(getattr(old, f.name), getattr(new, f.name)))
        return new
    return old


def generate(
    model, prompts: str | bytes | Sequence[str | bytes], max_new_bytes: int = 256, **sampling
) -> list[bytes]:
    """The generated bytes for each prompt (without the prompt and without the stop byte), decoded as one batch.

    A single str/bytes prompt is treated as a list of one. Use ``bytes.decode("utf-8", errors="replace")`` for text.
    ``sampling``: temperature, top_k, top_p, greedy, seed, stop_bytes, as :func:`generate_ids` takes them.
    """
    if isinstance(prompts, (str, bytes)):
        prompts = [prompts]
    out = [bytearray() for _ in prompts]
    for step in generate_ids(model, prompts, max_new_bytes, **sampling):
        for row, byte in zip(out, step):
            if byte is not None:
                row.append(byte)
    return [bytes(row) for row in out]


def utf8_pieces(byte_values: Iterator[int]) -> Iterator[str]:
    """Text as bytes arrive, never splitting a multi-byte character; invalid bytes become U+FFFD."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for byte in byte_values:
        text = decoder.decode(bytes([byte]))
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def stream(model, prompt: str | bytes, max_new_bytes: int = 256, **sampling) -> Iterator[str]:
    """Generate from one prompt and yield the text as it is produced (same bytes as :func:`generate`; same
    ``sampling`` options)."""
    if not isinstance(prompt, (str, bytes)):
        raise TypeError(f"stream takes one prompt (str or bytes), got {type(prompt).__name__}")
    steps = generate_ids(model, [prompt], max_new_bytes, **sampling)

    def new_bytes() -> Iterator[int]:
        for (byte,) in steps:
            if byte is None:
                return
            yield byte

    yield from utf8_pieces(new_bytes())
