"""Compare this implementation with reference outputs computed by the official H-Net code.

A reference folder holds ``config.json``, ``model.pt`` (official state dict), ``expected.pt`` and ``grads.pt``
(the format is described in tests/fixtures/official/README.md). Used by the tests and by ``hnet verify``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import HNetConfig
from .model import HNetForCausalLM
from .training.objective import IGNORE, RATIO_LOSS_WEIGHT, score


@dataclass
class Check:
    name: str
    value: float  # measured error (or mismatch count)
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.value <= self.tolerance


@dataclass
class ReferenceReport:
    folder: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def add(self, name: str, value: float | torch.Tensor, tolerance: float) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().item()
        self.checks.append(Check(name, float(value), tolerance))

    def table(self) -> str:
        lines = [f"{self.folder}", f"  {'check':<40} {'error':>12} {'tolerance':>12}  result"]
        for c in self.checks:
            lines.append(f"  {c.name:<40} {c.value:>12.3g} {c.tolerance:>12.3g}  {'ok' if c.passed else 'FAIL'}")
        return "\n".join(lines)


def load_reference(folder: str | Path) -> tuple[HNetForCausalLM, dict, dict]:
    folder = Path(folder)
    for name in ("config.json", "model.pt", "expected.pt", "grads.pt"):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} is missing: a reference folder needs config.json, model.pt, expected.pt and grads.pt"
            )
    model = HNetForCausalLM(HNetConfig.from_json(folder / "config.json"))
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True, map_location="cpu"))
    expected = torch.load(folder / "expected.pt", weights_only=True, map_location="cpu")
    grads = torch.load(folder / "grads.pt", weights_only=True, map_location="cpu")
    return model, expected, grads


def verify_reference(folder: str | Path) -> ReferenceReport:
    model, exp, grads = load_reference(folder)
    report = ReferenceReport(str(folder))
    ids = exp["input_ids"]
    targets = exp["ratio_N"].tolist()
    full = torch.ones_like(ids, dtype=torch.bool)

    out = model(ids, mask=full)
    report.add("logits (mask mode), max abs", (out.logits - exp["logits"]).abs().max(), 1e-4)
    with torch.no_grad():
        packed = model(ids)
    report.add("logits (packed mode), max abs", (packed.logits - exp["logits_packed"]).abs().max(), 1e-4)
    for s, routing in enumerate(out.routing):
        mismatches = (routing.boundary_mask != exp[f"stage{s}.boundary_mask"]).sum()
        report.add(f"stage {s} boundary mask, mismatches", mismatches, 0)
        prob_err = (routing.boundary_prob - exp[f"stage{s}.boundary_prob"][..., 1]).abs().max()
        report.add(f"stage {s} boundary prob, max abs", prob_err, 1e-5)
        sel_err = (routing.selected_probs - exp[f"stage{s}.selected_probs"][..., 0]).abs().max()
        report.add(f"stage {s} selected probs, max abs", sel_err, 1e-5)
    losses = score(out, torch.nn.functional.pad(ids[:, 1:], (0, 1), value=IGNORE), targets)  # the last byte: no target
    for s, value in enumerate(losses.ratio):
        report.add(f"stage {s} ratio loss, abs", (value - exp[f"stage{s}.ratio_loss"]).abs(), 1e-5)

    lengths = exp["padded.lengths"]
    mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
    with torch.no_grad():
        padded = model(ids, mask=mask).logits
    report.add(
        "logits (right-padded batch), max abs", ((padded - exp["padded.logits"]) * mask[..., None]).abs().max(), 1e-4
    )

    ce, total = losses.ce_sum / losses.count, losses.total(RATIO_LOSS_WEIGHT)
    report.add("train CE, abs", (ce - exp["train.ce"]).abs(), 1e-5)
    report.add("train total loss, abs", (total - exp["train.loss"]).abs(), 1e-5)
    total.backward()
    worst = max(
        ((p.grad - grads[n]).norm() / grads[n].norm().clamp_min(1e-30)).item() for n, p in model.named_parameters()
    )
    report.add("gradients, worst relative error", worst, 1e-3)
    return report
