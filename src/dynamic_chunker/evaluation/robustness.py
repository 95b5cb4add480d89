"""Robustness to character noise (the BLT paper's noised HellaSwag, also reported by H-Net): accuracy on HellaSwag
with every context and ending perturbed, and the robustness score 100 * (perturbed - 0.25) / (clean - 0.25)
(0.25 = chance with four endings): 100 = no loss, 0 = down to chance. The score is only defined when the clean
accuracy is clearly above chance: otherwise its denominator is sampling noise (a clean 0.255 on 200 items turns a
perturbed 0.23 into -400), so it is reported as missing and the raw accuracies speak instead."""

from __future__ import annotations

import dataclasses
import math

from .lm import ByteLM
from .perturb import PERTURBATIONS, perturb
from .tasks import Item, Task, evaluate, load_task

CHANCE = 0.25
METRIC = "acc_norm"  # HellaSwag's usual metric


def perturbed_task(task: Task, name: str, seed: int = 0) -> Task:
    """``task`` with every context and every choice perturbed (the delimiter before a choice stays as it is, so
    acc_norm divides by the noised choice's length); item i, text j uses seed ``f"{seed}:{i}:{j}"`` so an item's
    noise does not depend on which other items are evaluated."""
    items = []
    for i, item in enumerate(task.items):
        contexts = list(dict.fromkeys(item.contexts))
        choices = [task.choice(c) for c in item.continuations]
        noisy = [perturb(name, t, f"{seed}:{i}:{j}") for j, t in enumerate([*contexts, *choices])]
        context_of = dict(zip(contexts, noisy[: len(contexts)], strict=True))
        continuations = [task.delimiter + c for c in noisy[len(contexts) :]]
        items.append(Item([context_of[c] for c in item.contexts], continuations, item.gold))
    return dataclasses.replace(task, name=f"{task.name}_{name}", items=items)


def above_chance(accuracy: float, items: int) -> bool:
    """Whether ``accuracy`` over ``items`` questions is above chance by more than two binomial standard errors."""
    return items > 0 and accuracy - CHANCE > 2 * math.sqrt(CHANCE * (1 - CHANCE) / items)


def robustness_score(perturbed: float, clean: float, items: int | None = None) -> float | None:
    """100 * (perturbed - chance) / (clean - chance); None when ``clean`` is not above chance (beyond two standard
    errors of ``items`` questions when given, else at all)."""
    if clean <= CHANCE or (items is not None and not above_chance(clean, items)):
        return None
    return 100 * (perturbed - CHANCE) / (clean - CHANCE)


def evaluate_robustness(
    lm: ByteLM,
    limit: int | None = None,
    seed: int = 0,
    perturbations: list[str] | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """HellaSwag clean and under each perturbation: acc, acc_norm and (perturbed rows) the robustness score, None
    where the clean accuracy is not clearly above chance."""
    clean_task = load_task("hellaswag", limit)
    results = {"clean": evaluate(lm, clean_task, batch_size, max_length, progress)}
    for name in perturbations or list(PERTURBATIONS):
        row = evaluate(lm, perturbed_task(clean_task, name, seed), batch_size, max_length, progress)
        row["robustness"] = robustness_score(row[METRIC], results["clean"][METRIC], results["clean"]["items"])
        results[name] = row
    return results
