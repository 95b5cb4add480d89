"""What a chunker does to retrieval: chunk documents, embed the chunks, fetch the top-k for each question, and score
the fetched characters against the question's exact answer span.

The data are questions with character-exact answers (SQuAD form, see ``data/README.md``). Each article becomes one
document: its paragraphs joined by a blank line (variant ``paragraphs``) or by one space (``flat``: no layout cues).
All chunks of all documents form one pool; a question's top-k chunks are those with the highest cosine similarity
to the question (exact search). Per question, over the k retrieved chunks (metrics as in Chroma's technical report
"Evaluating Chunking Strategies for Retrieval", 2024, with characters in place of tokens):

- evidence E: the question's first answer span (the question writer's own; the other answers are other annotators'
  extents of the same fact or other mentions of it, which 16% of SQuAD questions place in disjoint places: asking
  for all of them would punish a chunk that holds one valid mention);
- covered = |E ∩ the characters of retrieved chunks from the question's document| (overlaps counted once);
- retrieved = the summed length of all k retrieved chunks, from any document (overlapping chunks count twice: the
  reader pays for both);
- recall = covered / |E|, precision = covered / retrieved, IoU = covered / (|E| + retrieved - covered);
- hit = 1 if any of the question's answers lies wholly inside one retrieved chunk of its document.

Scores are kept per question (:class:`Scores`), so two chunkers can be compared with paired standard errors.
Nothing here needs sentence-transformers: embeddings come from any object with ``embed(texts) -> (N, D)`` unit
vectors (``embeddings.CachedEmbedder`` for real models).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import InvalidArgument

DEFAULT_DATA = Path(__file__).resolve().parent / "data" / "squad-dev-v1.1.json.bz2"
VARIANTS = {"paragraphs": "\n\n", "flat": " "}  # how an article's paragraphs are joined into one document
METRICS = ("recall", "precision", "iou", "hit")

Spans = list[tuple[int, int]]
Chunker = Callable[[str], Sequence[str] | Sequence[tuple[int, int]]]


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    document: int  # index into Corpus.documents
    answers: tuple[tuple[int, int], ...]  # (start, end) character spans in the document; answers[0] is the evidence


@dataclass
class Corpus:
    titles: list[str]
    documents: list[str]
    questions: list[Question]
    variant: str
    source: str  # the data file
    sha256: str  # of the data file's decompressed JSON

    def head(self, articles: int) -> Corpus:
        """The first ``articles`` documents and their questions (a quick check on a subset)."""
        return replace(self, titles=self.titles[:articles], documents=self.documents[:articles],
                       questions=[q for q in self.questions if q.document < articles])  # fmt: skip


def load_corpus(path: str | Path | None = None, variant: str = "paragraphs") -> Corpus:
    """Questions and documents from a SQuAD-form JSON file (``.json``, ``.json.bz2`` or ``.json.gz``; default: the
    bundled SQuAD v1.1 dev subset). Questions without answers (SQuAD v2's unanswerable ones) are left out; an answer
    whose text is not at its ``answer_start`` is an error."""
    if variant not in VARIANTS:
        raise InvalidArgument(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    path = Path(path) if path is not None else DEFAULT_DATA
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
    with opener(path, "rb") as file:
        raw = file.read()
    try:
        articles = json.loads(raw)["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise InvalidArgument(f"{path} is not SQuAD-form JSON ({{'data': [{{'paragraphs': ...}}]}}): {err}") from err
    joiner = VARIANTS[variant]
    titles, documents, questions = [], [], []
    for article in articles:
        parts, offset = [], 0
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                answers = []
                for answer in qa["answers"]:
                    start = int(answer["answer_start"])
                    if context[start : start + len(answer["text"])] != answer["text"]:
                        raise InvalidArgument(
                            f"{path}: question {qa['id']}: answer {answer['text']!r} is not at answer_start {start} "
                            f"of its context"
                        )
                    answers.append((offset + start, offset + start + len(answer["text"])))
                if answers:
                    questions.append(Question(qa["id"], qa["question"], len(documents), tuple(answers)))
            parts.append(context)
            offset += len(context) + len(joiner)
        titles.append(article.get("title", f"document {len(documents)}"))
        documents.append(joiner.join(parts))
    if not questions:
        raise InvalidArgument(f"{path} holds no question with an answer")
    return Corpus(titles, documents, questions, variant, str(path), hashlib.sha256(raw).hexdigest())


def spans_from_strings(text: str, pieces: Sequence[str]) -> Spans:
    """Character spans of chunk strings in ``text``, found by a forward search.

    Each piece is placed at its first occurrence at or after the end of the previous piece (chunkers that drop the
    whitespace between chunks); if there is none, at its first occurrence after the previous piece's start
    (chunkers whose chunks overlap). A piece not found that way was changed by the chunker: an error.
    """
    spans, previous_start, previous_end = [], -1, 0
    for piece in pieces:
        if not piece:
            continue
        start = text.find(piece, previous_end)
        if start < 0:
            start = text.find(piece, previous_start + 1)
        if start < 0:
            raise InvalidArgument(
                f"chunk {len(spans)} ({piece[:40]!r}...) is not in the text after the previous chunk: a chunker "
                f"that returns strings must return exact, ordered substrings (or return (start, end) spans)"
            )
        spans.append((start, start + len(piece)))
        previous_start, previous_end = start, start + len(piece)
    return spans


def to_spans(text: str, output: Sequence[str] | Sequence[tuple[int, int]]) -> Spans:
    """A chunker's output (strings, or (start, end) spans) as validated spans; empty ones are dropped."""
    output = list(output)
    if all(isinstance(item, str) for item in output):
        return spans_from_strings(text, output)
    spans = []
    for item in output:
        try:
            start, end = (int(x) for x in item)
        except (TypeError, ValueError) as err:
            raise InvalidArgument(f"a chunker must return strings or (start, end) pairs, got {item!r}") from err
        if not 0 <= start <= end <= len(text):
            raise InvalidArgument(f"chunk span {(start, end)} is outside the text of {len(text)} characters")
        if end > start:
            spans.append((start, end))
    return spans


def answers_cut(questions: Sequence[Question], spans: Sequence[Spans]) -> float:
    """Share of ``questions`` whose evidence answer crosses a chunk boundary; ``spans``: each document's chunks. A
    cheap screen of where a chunker cuts, with no embeddings."""
    ends = [np.array([end for _, end in document]) for document in spans]
    start_end = [(ends[q.document], *q.answers[0]) for q in questions]
    return float(np.mean([bool(((e > start) & (e < end)).any()) for e, start, end in start_end]))


@dataclass
class Chunks:
    """The pool: every chunk of every document, as (N,) int64 arrays."""

    document: np.ndarray
    start: np.ndarray
    end: np.ndarray

    @classmethod
    def from_spans(cls, per_document: Sequence[Spans]) -> Chunks:
        doc = [i for i, spans in enumerate(per_document) for _ in spans]
        flat = [span for spans in per_document for span in spans]
        starts = np.array([s for s, _ in flat], dtype=np.int64)
        ends = np.array([e for _, e in flat], dtype=np.int64)
        return cls(np.array(doc, dtype=np.int64), starts, ends)

    @property
    def lengths(self) -> np.ndarray:
        return self.end - self.start

    def __len__(self) -> int:
        return len(self.start)

    def texts(self, documents: Sequence[str]) -> list[str]:
        return [documents[d][s:e] for d, s, e in zip(self.document, self.start, self.end)]

    def stats(self) -> dict[str, float]:
        lengths = self.lengths
        if not len(lengths):
            return {"count": 0, "mean": 0.0, "median": 0.0, "max": 0}
        return {
            "count": len(lengths),
            "mean": float(lengths.mean()),
            "median": float(np.median(lengths)),
            "max": int(lengths.max()),
        }


@dataclass
class Scores:
    """Per-question integers at one k, from which every metric follows exactly: (Q,) arrays."""

    evidence: np.ndarray  # |E|, characters of the evidence span
    covered: np.ndarray  # evidence characters inside retrieved chunks of the right document
    retrieved: np.ndarray  # summed length of the retrieved chunks
    hit: np.ndarray  # bool: an answer wholly inside one retrieved chunk

    def metric(self, name: str) -> np.ndarray:
        """(Q,) float64 values of one metric (0 where its denominator is 0)."""
        if name == "hit":
            return self.hit.astype(np.float64)
        denominator = {
            "recall": self.evidence,
            "precision": self.retrieved,
            "iou": self.evidence + self.retrieved - self.covered,
        }[name]
        return np.divide(self.covered, denominator, out=np.zeros(len(self.covered)), where=denominator > 0)

    def to_json(self) -> dict:
        return {"covered": self.covered.tolist(), "retrieved": self.retrieved.tolist(), "hit": self.hit.tolist()}

    @classmethod
    def from_json(cls, data: dict, evidence: np.ndarray) -> Scores:
        return cls(evidence, np.array(data["covered"]), np.array(data["retrieved"]), np.array(data["hit"], dtype=bool))


def score_retrieval(questions: Sequence[Question], chunks: Chunks, ranked: np.ndarray, ks: Sequence[int]) -> dict:
    """Scores at each k of ``ks`` for ranked retrievals ``ranked`` (Q, K >= max(ks)) of chunk indices, best first
    (-1 = nothing retrieved). Returns {k: Scores}."""
    ranked = np.asarray(ranked, dtype=np.int64).reshape(len(questions), -1)
    if ks and max(ks) > ranked.shape[1]:
        raise InvalidArgument(f"k = {max(ks)} needs {max(ks)} ranked chunks per question, got {ranked.shape[1]}")
    evidence = np.array([q.answers[0][1] - q.answers[0][0] for q in questions], dtype=np.int64)
    out = {k: Scores(evidence, np.zeros(len(questions), np.int64), np.zeros(len(questions), np.int64),
                     np.zeros(len(questions), bool)) for k in ks}  # fmt: skip
    lengths = chunks.lengths
    for i, question in enumerate(questions):
        ev_start, ev_end = question.answers[0]
        answers = np.array(question.answers)
        for k in ks:
            top = ranked[i, :k]
            top = top[top >= 0]
            out[k].retrieved[i] = lengths[top].sum()
            own = top[chunks.document[top] == question.document]
            if not len(own):
                continue
            starts, ends = chunks.start[own], chunks.end[own]
            inside = np.zeros(ev_end - ev_start, dtype=bool)  # evidence characters covered so far
            for s, e in zip(np.clip(starts, ev_start, ev_end), np.clip(ends, ev_start, ev_end)):
                inside[s - ev_start : e - ev_start] = True
            out[k].covered[i] = inside.sum()
            contained = (starts[:, None] <= answers[None, :, 0]) & (answers[None, :, 1] <= ends[:, None])
            out[k].hit[i] = contained.any()
    return out


def top_k(queries: np.ndarray, keys: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Indices (Q, k) of the k keys with the highest dot product with each query (exact; unit vectors make it cosine
    similarity), best first; -1 where there are fewer than k keys. Ties go to the lower index."""
    out = np.full((len(queries), k), -1, dtype=np.int64)
    take = min(k, len(keys))
    if take == 0:
        return out
    for b in range(0, len(queries), block):
        sims = queries[b : b + block] @ keys.T
        part = np.argpartition(-sims, take - 1, axis=1)[:, :take] if take < len(keys) else np.argsort(-sims, axis=1)
        part = np.sort(part, axis=1)  # stable order among ties
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        out[b : b + block, :take] = np.take_along_axis(part, order, axis=1)
    return out


def summarise(values: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation and standard error of the mean of (Q,) per-question values."""
    n = len(values)
    std = float(values.std(ddof=1)) if n > 1 else 0.0
    return {"mean": float(values.mean()) if n else 0.0, "std": std, "se": std / math.sqrt(n) if n else 0.0}


def paired_difference(a: Scores, b: Scores, metric: str) -> dict[str, float]:
    """Mean of a - b over the same questions and its paired standard error (std of the differences / sqrt(Q))."""
    if len(a.covered) != len(b.covered):
        raise InvalidArgument(f"paired scores need the same questions, got {len(a.covered)} and {len(b.covered)}")
    return summarise(a.metric(metric) - b.metric(metric))


class Embedder(Protocol):
    model_id: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32 unit vectors."""


@dataclass
class ChunkerResult:
    name: str
    chunk_stats: dict[str, float]
    mb_per_s: float  # UTF-8 megabytes of documents per second, the chunker alone, best of several runs
    scores: dict[int, Scores]  # per k
    info: dict = field(default_factory=dict)  # e.g. the baseline and its calibrated parameter

    def summary(self) -> dict:
        return {
            "name": self.name,
            "chunks": self.chunk_stats,
            "mb_per_s": self.mb_per_s,
            **self.info,
            "metrics": {str(k): {m: summarise(s.metric(m)) for m in METRICS} for k, s in self.scores.items()},
        }


def chunk_corpus(documents: Sequence[str], chunker: Chunker, runs: int = 3) -> tuple[Chunks, float]:
    """Chunk every document; returns the pool and the chunker's throughput (MB/s of UTF-8 text, best of ``runs``
    timed passes over all documents; the mapping of strings to spans is not timed)."""
    megabytes = sum(len(d.encode("utf-8")) for d in documents) / 1e6
    best = math.inf
    for _ in range(max(runs, 1)):
        begin = time.perf_counter()
        outputs = [chunker(document) for document in documents]
        best = min(best, time.perf_counter() - begin)
    chunks = Chunks.from_spans([to_spans(d, out) for d, out in zip(documents, outputs)])
    return chunks, megabytes / max(best, 1e-9)


def evaluate_chunkers(
    corpus: Corpus,
    chunkers: dict[str, Chunker],
    embedder: Embedder,
    ks: Sequence[int] = (1, 5, 10),
    throughput_runs: int = 3,
    info: dict[str, dict] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, ChunkerResult]:
    """Score each chunker (``text -> strings or (start, end) spans``) on ``corpus`` with one pool per chunker."""
    queries = embedder.embed([q.text for q in corpus.questions])
    results = {}
    for name, chunker in chunkers.items():
        if progress:
            progress(name)
        chunks, mb_per_s = chunk_corpus(corpus.documents, chunker, throughput_runs)
        # surrounding whitespace carries no meaning for an embedding; stripping it lets chunkers that differ only
        # there (trailing blank lines, say) share cached vectors
        texts = [text.strip() for text in chunks.texts(corpus.documents)]
        keys = embedder.embed(texts) if texts else np.zeros((0, queries.shape[1]), dtype=np.float32)
        ranked = top_k(queries, keys, max(ks))
        scores = score_retrieval(corpus.questions, chunks, ranked, ks)
        results[name] = ChunkerResult(name, chunks.stats(), mb_per_s, scores, (info or {}).get(name, {}))
    return results
