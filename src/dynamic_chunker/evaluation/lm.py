"""One interface over byte models (H-Net, LlamaByte, MambaByte) and token models (the BPE Transformer) for evaluation.

Every text is scored as the model saw its training documents: a BOS id, then the text's ids. ``token_bytes[i]`` is
the UTF-8 length of id ``i`` (1 for every byte id), which turns summed token NLL into bits per byte.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from ..inference import BOS
from ..model import HNetForCausalLM

TOKENIZER_FILE = "tokenizer.json"


def token_byte_table(vocab_size: int, tokenizer=None) -> torch.Tensor:
    """(V,) UTF-8 bytes of every id: 1 per byte id (0 for BOS) for a byte model, each token's length (0 for special
    tokens) with a ``tokenizers`` tokenizer. Summed over targets it turns token NLL into bits per byte."""
    if tokenizer is not None:
        from ..data.tokens import token_byte_lengths

        return token_byte_lengths(tokenizer)
    table = torch.ones(vocab_size, dtype=torch.long)
    table[BOS] = 0
    return table


class ByteLM:
    """A byte-level model: ids are the UTF-8 bytes, BOS = 254."""

    bos = BOS

    def __init__(self, model: HNetForCausalLM):
        self.model = model.eval()
        self.token_bytes = token_byte_table(model.config.vocab_size)

    @property
    def device(self) -> torch.device:
        return self.model.embeddings.weight.device

    def encode(self, text: str | bytes) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else text)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Ids of a context and of its continuation; together they are the ids of context + continuation."""
        return self.encode(context), self.encode(continuation)

    @torch.inference_mode()
    def logits(self, ids: torch.Tensor, mask: torch.Tensor | None = None, document_ids=None) -> torch.Tensor:
        """(B, L) ids -> (B, L, V) next-id logits (float32, or float64 for a float64 model); mask: right padding;
        document_ids: packed documents."""
        logits = self.model(ids.to(self.device), mask=mask, document_ids=document_ids).logits
        return logits.to(torch.promote_types(logits.dtype, torch.float32))


class TokenLM(ByteLM):
    """A token model with a Hugging Face ``tokenizers`` tokenizer whose special token ``<bos>`` starts documents."""

    def __init__(self, model: HNetForCausalLM, tokenizer):
        from ..data.tokens import BOS_TOKEN

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.bos = tokenizer.token_to_id(BOS_TOKEN)
        if self.bos is None:
            raise ConfigError(f"the tokenizer has no {BOS_TOKEN} token; train it with dynamic_chunker.data.tokens")
        if tokenizer.get_vocab_size() != model.config.vocab_size:
            raise ConfigError(
                f"the tokenizer has {tokenizer.get_vocab_size()} ids but the model {model.config.vocab_size}"
            )
        self.token_bytes = token_byte_table(model.config.vocab_size, tokenizer)

    def encode(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """As the lm-evaluation-harness: the continuation is what encoding the whole text adds to the context's ids
        (trailing spaces of the context move to the continuation first, so they merge with its first word)."""
        stripped = context.rstrip(" ")
        continuation = context[len(stripped) :] + continuation
        whole, head = self.encode(stripped + continuation), self.encode(stripped)
        if whole[: len(head)] != head:  # a merge across the seam: score the pieces separately
            return head, self.encode(continuation)
        return head, whole[len(head) :]


def load_lm(path: str | Path, device: str | torch.device = "cpu", dtype=None) -> ByteLM:
    """A model folder (or anything ``from_pretrained`` takes) as a :class:`ByteLM`, or a :class:`TokenLM` when the
    folder holds ``tokenizer.json``."""
    from ..checkpoints import from_pretrained

    model = from_pretrained(path, dtype=dtype, device=device)
    tokenizer_file = Path(path) / TOKENIZER_FILE
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer

        return TokenLM(model, Tokenizer.from_file(str(tokenizer_file)))
    if model.config.vocab_size != 256:
        raise ConfigError(f"{path}: a model with {model.config.vocab_size} ids needs its {TOKENIZER_FILE} next to it")
    return ByteLM(model)
