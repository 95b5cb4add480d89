"""Log-likelihoods of continuations given contexts, batched with right padding (the lm-evaluation-harness's
``loglikelihood`` request): the summed log-probability of the continuation's ids and whether greedy decoding would
have produced exactly them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidArgument
from .lm import ByteLM


@dataclass
class Loglik:
    logprob: float  # sum of log p(continuation id | everything before), natural log
    greedy: bool  # every continuation id is the argmax at its position
    ids: int  # number of continuation ids scored


@torch.inference_mode()
def continuation_logliks(
    lm: ByteLM,
    requests: list[tuple[str, str]],
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = False,
) -> list[Loglik]:
    """One :class:`Loglik` per (context, continuation) pair, in order. Each is read as BOS + context + continuation;
    beyond ``max_length`` ids the oldest context is dropped (the continuation is always kept whole)."""
    from tqdm.auto import tqdm

    encoded = []
    for context, continuation in requests:
        head, tail = lm.encode_pair(context, continuation)
        if not tail:
            raise InvalidArgument(f"empty continuation after context {context[-40:]!r}: nothing to score")
        ids = [lm.bos, *head, *tail]
        if max_length is not None and len(ids) - 1 > max_length:
            ids = ids[len(ids) - 1 - max_length :]
        encoded.append((ids, len(tail)))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))  # similar lengths share a batch
    results: list[Loglik | None] = [None] * len(encoded)
    with tqdm(total=len(order), unit="req", disable=not progress, dynamic_ncols=True) as bar:
        for first in range(0, len(order), batch_size):
            chosen = order[first : first + batch_size]
            rows = [encoded[i] for i in chosen]
            length = max(len(ids) for ids, _ in rows) - 1
            inputs = torch.zeros(len(rows), length, dtype=torch.long)
            targets = torch.zeros(len(rows), length, dtype=torch.long)
            valid = torch.zeros(len(rows), length, dtype=torch.bool)
            scored = torch.zeros(len(rows), length, dtype=torch.bool)
            for r, (ids, n) in enumerate(rows):
                t = torch.tensor(ids)
                inputs[r, : len(ids) - 1], targets[r, : len(ids) - 1] = t[:-1], t[1:]
                valid[r, : len(ids) - 1] = True
                scored[r, len(ids) - 1 - n : len(ids) - 1] = True
            logits = lm.logits(inputs.to(lm.device), mask=valid.to(lm.device)).cpu()
            logprobs = torch.log_softmax(logits.double(), dim=-1)
            picked = logprobs.gather(2, targets[..., None])[..., 0]
            hits = logits.argmax(dim=-1) == targets
            sums = (picked * scored).sum(dim=1)
            greedy = (hits | ~scored).all(dim=1)
            for r, i in enumerate(chosen):
                results[i] = Loglik(float(sums[r]), bool(greedy[r]), rows[r][1])
            bar.update(len(chosen))
    return results
