"""Run logs: train.csv and eval.csv (a row per step / per validation), TensorBoard, and a PNG of the curves."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..files import atomic_write

TRAIN_CSV, EVAL_CSV, PLOT = "train.csv", "eval.csv", "curves.png"


class RunLog:
    """Appends rows to the CSV files and TensorBoard. On resume, rows after the checkpoint's step are dropped
    first (they belong to steps that will be recomputed), so the logs read like one uninterrupted run."""

    def __init__(self, out_dir: Path, resume_step: int | None, tensorboard: bool = True):
        self.out_dir = out_dir
        self.files = {}
        for name in (TRAIN_CSV, EVAL_CSV):
            path = out_dir / name
            if resume_step is None:
                path.unlink(missing_ok=True)
            else:
                _truncate(path, resume_step)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the tensorboard package is missing: the CSV files hold the same numbers
                print('note: `pip install -e ".[train]"` for TensorBoard logs; writing CSV logs only')
            else:
                purge = None if resume_step is None else resume_step + 1
                self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge)

    def log(self, kind: str, row: dict[str, float]) -> None:
        """kind 'train' or 'eval'; row holds 'step' and the metrics."""
        path = self.out_dir / (TRAIN_CSV if kind == "train" else EVAL_CSV)
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{key}", value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_csv(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _truncate(path: Path, step: int) -> None:
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= step]
    text = io.StringIO(newline="")
    csv.writer(text).writerows(kept)
    atomic_write(path, text.getvalue())


def plot_curves(out_dir: Path) -> Path | None:
    """Loss / bits-per-byte, compression per stage, validation routing statistics and learning rate against steps,
    saved as curves.png."""
    train, evals = read_csv(out_dir / TRAIN_CSV), read_csv(out_dir / EVAL_CSV)
    if not train:
        return None
    try:
        import matplotlib
    except ImportError:  # an optional dependency (the train extra): the CSV files hold the same numbers
        print(f'note: `pip install -e ".[train]"` to plot {PLOT}')
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_comp, ax_route, ax_lr) = plt.subplots(1, 4, figsize=(20, 4.2))
    steps = [r["step"] for r in train]
    ax_loss.plot(steps, [r["bpb"] for r in train], lw=0.8, alpha=0.6, label="train BPB")
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["val_bpb"] for r in evals], "o-", label="validation BPB")
    ax_loss.set(xlabel="step", ylabel="bits per byte", title="next-byte loss")
    stages = sorted(int(k.rsplit("_", 1)[1]) for k in train[0] if k.startswith("compression_"))
    for s in stages:
        ax_comp.plot(steps, [r[f"compression_{s}"] for r in train], lw=0.8, alpha=0.6, label=f"train stage {s}")
        if evals:
            ax_comp.plot(
                [r["step"] for r in evals], [r[f"val_compression_{s}"] for r in evals], "o-", label=f"val stage {s}"
            )
    ax_comp.set(xlabel="step", ylabel="positions per chunk", title="compression per stage")
    # validation routing: precision against each reference set, and boundary enrichment (dashed, right axis)
    ax_enrich = ax_route.twinx()
    for key in (evals[0] if evals else {}):
        values = [r[key] for r in evals]
        if key.startswith("val_precision_"):
            ax_route.plot([r["step"] for r in evals], values, "o-", ms=3, label=key[len("val_precision_") :])
        elif key.startswith("val_enrichment_"):
            ax_enrich.plot([r["step"] for r in evals], values, "--", label=f"enrichment {key.rsplit('_', 1)[1]}")
    ax_route.set(xlabel="step", ylabel="precision of chunk starts", title="validation routing (stage suffix)")
    ax_enrich.set_ylabel("surprisal at starts / elsewhere")
    if ax_enrich.get_legend_handles_labels()[0]:  # no routing columns for an isotropic model
        ax_enrich.legend(fontsize=7, loc="lower right")
    ax_lr.plot(steps, [r["lr"] for r in train])
    ax_lr.set(xlabel="step", ylabel="learning rate (multiplier 1)", title="schedule")
    for ax in (ax_loss, ax_comp, ax_route):
        if ax.get_legend_handles_labels()[0]:  # an isotropic model has no compression or routing curves
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / PLOT
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)
    return path
