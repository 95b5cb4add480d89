"""Evaluation results to files: ``NAME.json`` (everything) and ``NAME.md`` (a table per section)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
from pathlib import Path

from ..files import atomic_write


def machine(device: str = "cpu") -> str:
    """The machine in one line, for reports: CPUs and their model, the GPU of a CUDA device, torch and its threads."""
    import torch

    cpu = platform.processor() or platform.machine() or "unknown CPU"
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    if str(device).startswith("cuda"):
        cpu += f", GPU {torch.cuda.get_device_name(device)}"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpus} CPUs, {cpu}, torch {torch.__version__}, {torch.get_num_threads()} torch threads"


def load_average() -> str:
    """The machine's 1, 5 and 15 minute load averages, e.g. ``"1.20 0.90 0.75"``: how busy a shared machine was."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def markdown_table(rows: dict[str, dict], first: str = "name") -> str:
    """{row name: {column: value}} -> a markdown table; numbers with 4 decimals, missing cells empty."""
    columns = list(dict.fromkeys(k for row in rows.values() for k in row))
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def write_report(out_dir: str | Path, name: str, title: str, sections: dict[str, dict[str, dict]], meta: dict) -> Path:
    """Write ``out_dir/NAME.json`` ({"meta", "results"}) and ``out_dir/NAME.md``; returns the markdown path."""
    out_dir = Path(out_dir)
    atomic_write(out_dir / f"{name}.json", json.dumps({"meta": meta, "results": sections}, indent=2) + "\n")
    parts = [f"# {title}", "", *(f"- {k}: {v}" for k, v in meta.items()), ""]
    for section, rows in sections.items():
        parts += [f"## {section}", "", markdown_table(rows), ""]
    return atomic_write(out_dir / f"{name}.md", "\n".join(parts))
