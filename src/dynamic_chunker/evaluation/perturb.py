"""Character-level noise from the BLT paper (Pagnoni et al. 2024, sec. 6 / App.): five ways to perturb a text.

AntSpeak: upper case, and a space between every two characters. Drop: each character removed with probability 0.1.
RandomCase: each character upper case with probability 0.5, else lower case. Repeat: each character, with
probability 0.2, written 2 to 4 times (uniformly) instead of once. UpperCase: everything upper case.
Random choices come from ``random.Random(seed)``: the same seed gives the same noise on every machine.
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
