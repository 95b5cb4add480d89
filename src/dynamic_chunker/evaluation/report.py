"""Evaluation results to files: ``NAME.json`` (everything) and ``NAME.md`` (a table per section)."""

from __future__ import annotations

import json
import math
from pathlib import Path


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
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps({"meta": meta, "results": sections}, indent=2) + "\n")
    parts = [f"# {title}", "", *(f"- {k}: {v}" for k, v in meta.items()), ""]
    for section, rows in sections.items():
        parts += [f"## {section}", "", markdown_table(rows), ""]
    path = out_dir / f"{name}.md"
    path.write_text("\n".join(parts))
    return path
