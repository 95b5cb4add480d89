"""An HTML page that shows how a text was chunked: every stage's learned boundaries over the text (a coloured bar
before each unit, one colour per stage, the probability on hover) and the chunks chosen by ``chunk_text`` (alternating
backgrounds, each with a numbered badge that tells which stage opened it and how strongly)."""

from __future__ import annotations

import html

import numpy as np

from .segmentation import Chunk, HNetChunker, char_edges

STAGE_COLOURS = ["#2b8a3e", "#1c7ed6", "#c2255c", "#e67700"]  # stage 0, 1, 2, 3
CHUNK_BACKGROUNDS = ["#fff3bf", "#e7f5ff"]

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #212529; }
.legend span { display: inline-block; margin-right: 1.2em; }
.swatch { display: inline-block; width: 0.8em; height: 1em; vertical-align: middle; margin-right: 0.3em; }
.text { font-family: monospace; font-size: 15px; line-height: 1.9; white-space: pre-wrap; word-break: break-all; }
.chunk { border-radius: 3px; }
.badge { font-family: sans-serif; font-size: 10px; color: white; background: #495057; border-radius: 3px;
         padding: 0 3px; margin: 0 2px; vertical-align: super; }
.u { border-left: 2px solid transparent; }
"""


def render_html(text: str | bytes, chunks: list[Chunk], probs: np.ndarray, title: str = "chunk_text") -> str:
    """The page for ``text``, its ``chunks`` and the per-byte boundary probabilities ``probs`` (stages, bytes) of
    :meth:`HNetChunker.signals`. Bytes input is shown decoded with U+FFFD for invalid bytes."""
    is_text = isinstance(text, str)
    data = text.encode("utf-8", "surrogatepass") if is_text else bytes(text)
    stages = probs.shape[0]
    edges = np.flatnonzero(char_edges(data, strict=not is_text))
    per_unit = np.maximum.reduceat(probs, edges, axis=1) if len(edges) else probs[:, :0]
    reached = np.logical_and.accumulate(per_unit > 0.5, axis=0)
    level = reached.sum(axis=0) - 1  # deepest stage whose boundary is at this unit (-1: none)
    offsets = np.arange(len(edges)) if is_text else edges
    unit_at = {int(o): i for i, o in enumerate(offsets)}
    chunk_starts = {c.start_index: (k, c) for k, c in enumerate(chunks)}
    # pieces start at every stage-0 boundary and every chunk start
    cuts = sorted({*(int(offsets[i]) for i in np.flatnonzero(level >= 0)), *chunk_starts, len(text)} - {len(text)})
    out = []
    for a, b in zip(cuts, [*cuts[1:], len(text)]):
        if a in chunk_starts:
            k, c = chunk_starts[a]
            if k:
                out.append("</span>")
            opened = "the text's start" if k == 0 else ("no boundary" if c.level is None else f"stage {c.level}")
            tip = f"chunk {k}: {len(c.text)} {'chars' if is_text else 'bytes'}, opened by {opened}, score {c.score:.3f}"
            out.append(f'<span class="chunk" style="background:{CHUNK_BACKGROUNDS[k % 2]}" title="{html.escape(tip)}">')
            out.append(f'<span class="badge">{k}</span>')
        i = unit_at[a]
        piece = text[a:b] if is_text else data[a:b].decode("utf-8", "replace")
        if level[i] >= 0:
            s = int(level[i])
            tip = ", ".join(f"stage {t}: p={per_unit[t, i]:.3f}" for t in range(s + 1))
            colour = STAGE_COLOURS[s % len(STAGE_COLOURS)]
            out.append(f'<span class="u s{s}" style="border-left-color:{colour}" title="{tip}">')
        else:
            out.append(f'<span class="u" title="stage 0: p={per_unit[0, i]:.3f}">')
        out.append(html.escape(piece) + "</span>")
    if chunks:
        out.append("</span>")
    legend = "".join(
        f'<span><i class="swatch" style="background:{STAGE_COLOURS[s % len(STAGE_COLOURS)]}"></i>'
        f"stage {s} boundary</span>"
        for s in range(stages)
    )
    legend += "".join(
        f'<span><i class="swatch" style="background:{c}"></i>chunk</span>' for c in CHUNK_BACKGROUNDS[:1]
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>\n<h2>{html.escape(title)}</h2>\n"
        f"<p class='legend'>{legend} &mdash; {len(chunks)} chunks; hover for probabilities and scores</p>\n"
        f"<div class='text'>{''.join(out)}</div>\n</body></html>\n"
    )


def chunk_html(text: str | bytes, chunker: HNetChunker | None = None, title: str = "chunk_text") -> str:
    """Chunk ``text`` (with ``chunker``, default the bundled model at its default size) and render the page."""
    chunker = chunker or HNetChunker()
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    return render_html(text, chunker.chunk(text), chunker.signals(data), title)
