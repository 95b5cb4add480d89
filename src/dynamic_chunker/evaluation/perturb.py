"""Character-level noise from the BLT paper (Pagnoni et al. 2024, "Byte Latent Transformer: Patches Scale Better
Than Tokens", sec. 6.1 "noisy data", the noised HellaSwag of its Table 3, which the H-Net paper also reports).

What the paper says of each (its one-line definitions), and what we do:

- AntSpeak: the text in upper case, space-separated characters. We upper-case and put one space between every
  two characters, so an existing space becomes three ("Hi you" -> "H I   Y O U").
- Drop: 10% of the characters removed at random. Each character is dropped independently with p = 0.1.
- RandomCase: characters converted to upper or lower case at random (50% each). Each character independently.
- Repeat: 20% of the characters repeated, up to four times. Each character is, with p = 0.2, written 2 to 4 times
  in all (the count uniform over 2, 3, 4) instead of once; "up to a maximum of four times" is read as at most
  four copies.
- UpperCase: all characters upper case.

Source and its limits: those definitions are the paper's prose; BLT's released code (facebookresearch/blt) has no
noising code, and the search corpora available to us held neither the paper's full text nor any implementation,
so the unspecified details (independent per-character draws, the distribution of Repeat's count, spaces under
AntSpeak, which fields are noised) are our reading, not checked against theirs. :mod:`.robustness` noises the
context and each choice (not the harness's delimiter between them). Random choices come from
``random.Random(seed)``: the same seed gives the same noise on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..errors import InvalidArgument


def antspeak(text: str, rng: random.Random) -> str:
    return " ".join(text.upper())


def drop(text: str, rng: random.Random, p: float = 0.1) -> str:
    return "".join(c for c in text if rng.random() >= p)


def random_case(text: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)


def repeat(text: str, rng: random.Random, p: float = 0.2, most: int = 4) -> str:
    return "".join(c * rng.randint(2, most) if rng.random() < p else c for c in text)


def uppercase(text: str, rng: random.Random) -> str:
    return text.upper()


PERTURBATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "antspeak": antspeak,
    "drop": drop,
    "random_case": random_case,
    "repeat": repeat,
    "uppercase": uppercase,
}


def perturb(name: str, text: str, seed: int | str) -> str:
    """``text`` under perturbation ``name``, with noise drawn from ``random.Random(seed)``."""
    if name not in PERTURBATIONS:
        raise InvalidArgument(f"unknown perturbation {name!r}; choose from {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[name](text, random.Random(seed))
