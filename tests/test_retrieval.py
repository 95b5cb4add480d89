import bz2
import gzip
import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from dynamic_chunker.evaluation.chunkers import BASELINES, calibrate, fixed_size
from dynamic_chunker.evaluation.retrieval import (
    DEFAULT_DATA,
    Chunks,
    Corpus,
    Question,
    answers_cut,
    load_corpus,
    paired_difference,
    score_retrieval,
    spans_from_strings,
    summarise,
    to_spans,
    top_k,
)

from .conftest import BENCHMARKS


@pytest.mark.parametrize("variant", ["paragraphs", "flat"])
def test_answer_offsets_recover_every_answer(variant):
    corpus = load_corpus(variant=variant)
    raw = json.loads(bz2.open(DEFAULT_DATA).read())["data"]
    texts = {qa["id"]: [a["text"] for a in qa["answers"]] for art in raw for p in art["paragraphs"] for qa in p["qas"]}
    assert len(corpus.documents) == 24 and len(corpus.questions) == 4961
    for question in corpus.questions:
        document = corpus.documents[question.document]
        assert [document[s:e] for s, e in question.answers] == texts[question.id]
    joiner = {"paragraphs": "\n\n", "flat": " "}[variant]
    assert corpus.documents[0] == joiner.join(p["context"] for p in raw[0]["paragraphs"])


def write_squad(path, articles):
    """articles: [(title, [(context, [(question, [answer texts])])])]; answer_start = first occurrence."""
    data = [
        {"title": title, "paragraphs": [
            {"context": context, "qas": [
                {"id": f"{title}-{i}-{j}", "question": q,
                 "answers": [{"answer_start": context.index(a), "text": a} for a in answers]}
                for j, (q, answers) in enumerate(qas)]}
            for i, (context, qas) in enumerate(paragraphs)]}
        for title, paragraphs in articles
    ]  # fmt: skip
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def test_own_data_and_bad_answers(tmp_path):
    path = write_squad(tmp_path / "mine.json", [("A", [("One two.", [("q?", ["two"])]), ("Three.", [("r?", [])])])])
    corpus = load_corpus(path, "paragraphs")
    assert corpus.documents == ["One two.\n\nThree."]
    assert [q.answers for q in corpus.questions] == [((4, 7),)]  # the question without answers is left out
    broken = json.loads(path.read_text())
    broken["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 1
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="not at answer_start"):
        load_corpus(path)
    with pytest.raises(ValueError, match="unknown variant"):
        load_corpus(variant="lines")


def test_spans_from_strings():
    text = "abc abc. abc def"
    # stripped whitespace between chunks; a repeated string is placed after the previous chunk, not at its first match
    assert spans_from_strings(text, ["abc", "abc.", "abc def"]) == [(0, 3), (4, 8), (9, 16)]
    # overlapping chunks: found after the previous chunk's start
    assert spans_from_strings("abcdef", ["abcd", "cdef"]) == [(0, 4), (2, 6)]
    assert spans_from_strings(text, []) == []
    with pytest.raises(ValueError, match="exact, ordered substrings"):
        spans_from_strings(text, ["abc", "xyz"])
    assert to_spans("abcdef", [(0, 2), (2, 2), [2, 6]]) == [(0, 2), (2, 6)]  # empty spans dropped
    with pytest.raises(ValueError, match="outside the text"):
        to_spans("abc", [(0, 4)])


def exact(covered, evidence, retrieved):
    """Recall, precision, IoU as fractions (0 for a zero denominator)."""
    frac = lambda a, b: Fraction(a, b) if b else Fraction(0)  # noqa: E731
    return frac(covered, evidence), frac(covered, retrieved), frac(covered, evidence + retrieved - covered)


def test_scores_known_exactly():
    # document 0: chunks A [0, 15) and B [12, 30) overlap; C [0, 50) is the whole of document 1
    chunks = Chunks(np.array([0, 0, 1]), np.array([0, 12, 0]), np.array([15, 30, 50]))
    questions = [
        Question("split", "?", 0, ((10, 20),)),  # the answer is split over A and B
        Question("alt", "?", 0, ((10, 20), (12, 18))),  # a second, shorter answer lies wholly in B
        Question("other", "?", 1, ((40, 45),)),  # its document's chunk C is ranked third
        Question("none", "?", 1, ((40, 45),)),  # nothing retrieved at all (an empty pool)
    ]
    ranked = np.array([[0, 1, 2], [0, 1, 2], [0, 1, 2], [-1, -1, -1]])
    scores = score_retrieval(questions, chunks, ranked, ks=(1, 2, 3))
    expected = {  # (covered, retrieved, hit) per question
        1: [(5, 15, False), (5, 15, False), (0, 15, False), (0, 0, False)],
        2: [(10, 33, False), (10, 33, True), (0, 33, False), (0, 0, False)],
        3: [(10, 83, False), (10, 83, True), (5, 83, True), (0, 0, False)],
    }
    for k, rows in expected.items():
        s = scores[k]
        assert s.covered.tolist() == [r[0] for r in rows]
        assert s.retrieved.tolist() == [r[1] for r in rows]
        assert s.hit.tolist() == [r[2] for r in rows]
        for i, (covered, retrieved, _) in enumerate(rows):
            recall, precision, iou = exact(covered, 10 if i < 2 else 5, retrieved)
            assert s.metric("recall")[i] == pytest.approx(float(recall), abs=1e-15)
            assert s.metric("precision")[i] == pytest.approx(float(precision), abs=1e-15)
            assert s.metric("iou")[i] == pytest.approx(float(iou), abs=1e-15)
    assert scores[2].metric("iou")[0] == pytest.approx(10 / 33)  # union 10, retrieved 33: 10 / (10 + 33 - 10)
    assert scores[1].metric("iou")[0] == pytest.approx(5 / 20)
    with pytest.raises(ValueError, match="ranked chunks per question"):
        score_retrieval(questions, chunks, ranked, ks=(5,))


def test_top_k_matches_brute_force():
    rng = np.random.default_rng(0)
    queries, keys = rng.normal(size=(7, 4)), rng.normal(size=(30, 4))
    expected = np.argsort(-(queries @ keys.T), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(top_k(queries, keys, 5, block=3), expected)
    small = top_k(queries, keys[:2], 4)  # fewer keys than k: -1 after them
    assert (small[:, 2:] == -1).all() and set(small[0, :2]) == {0, 1}
    ties = top_k(np.ones((1, 2)), np.ones((4, 2)), 3)
    assert ties.tolist() == [[0, 1, 2]]
    assert (top_k(queries, keys[:0], 3) == -1).all()


def test_summaries_and_paired_errors():
    s = summarise(np.array([1.0, 2.0, 3.0, 4.0]))
    assert s["mean"] == 2.5 and s["std"] == pytest.approx(np.sqrt(5 / 3)) and s["se"] == pytest.approx(s["std"] / 2)
    chunks = Chunks(np.array([0, 0]), np.array([0, 10]), np.array([10, 20]))
    questions = [Question(str(i), "?", 0, ((i, i + 1),)) for i in (0, 5, 12, 15)]
    a = score_retrieval(questions, chunks, np.array([[0]] * 4), ks=(1,))[1]  # recall 1, 1, 0, 0
    b = score_retrieval(questions, chunks, np.array([[1]] * 4), ks=(1,))[1]  # recall 0, 0, 1, 1
    d = paired_difference(a, a, "recall")
    assert d["mean"] == 0 and d["se"] == 0  # identical chunkers: no noise at all when paired
    d = paired_difference(a, b, "recall")
    assert d["mean"] == 0 and d["se"] == pytest.approx(np.std([1, 1, -1, -1], ddof=1) / 2)


class WordEmbedder:
    """Bag of hashed words: enough to make retrieval depend on the chunks, with no model."""

    model_id = "test/words"

    def embed(self, texts):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().replace(".", " ").replace("?", " ").split():
                out[i, sum(map(ord, word)) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def small_corpus():
    documents = ["The cat sat on the mat. Dogs bark loudly.", "Stocks fell sharply today. Markets were calm later."]
    answers = [(0, "mat", "Where did the cat sit?"), (1, "sharply", "How did stocks fall today?")]
    questions = [
        Question(str(i), q, d, ((documents[d].index(a), documents[d].index(a) + len(a)),))
        for i, (d, a, q) in enumerate(answers)
    ]
    return Corpus(["a", "b"], documents, questions, "paragraphs", "test", "0")


def test_evaluate_chunkers_end_to_end():
    from dynamic_chunker.evaluation.retrieval import evaluate_chunkers

    corpus = small_corpus()
    chunkers = {
        "whole": lambda text: [text],  # strings
        "sentences": lambda text: [(0, text.index(".") + 1), (text.index(".") + 2, len(text))],  # spans
        "nothing": lambda text: [],
    }
    results = evaluate_chunkers(corpus, chunkers, WordEmbedder(), ks=(1, 2), throughput_runs=2)
    whole, sentences, nothing = results["whole"], results["sentences"], results["nothing"]
    assert whole.chunk_stats["count"] == 2 and whole.mb_per_s > 0
    assert whole.scores[2].metric("recall").tolist() == [1.0, 1.0]  # k = the number of chunks: everything retrieved
    assert sentences.scores[1].hit.all()  # each question's words are in its answer's sentence
    assert sentences.scores[1].metric("precision").tolist() == pytest.approx([3 / 23, 7 / 26])
    assert nothing.chunk_stats["count"] == 0 and nothing.scores[2].metric("recall").tolist() == [0.0, 0.0]
    assert set(whole.summary()["metrics"]["2"]) == {"recall", "precision", "iou", "hit"}


def test_head_keeps_the_first_articles_and_their_questions():
    corpus = small_corpus()
    head = corpus.head(1)
    assert head.documents == corpus.documents[:1] and head.titles == ["a"]
    assert [q.id for q in head.questions] == ["0"] and len(corpus.questions) == 2  # the original is left as it was


def test_answers_cut_counts_answers_that_cross_a_chunk_end():
    corpus = small_corpus()  # answers: "mat" at 19..22 of document 0, "sharply" at 12..19 of document 1
    whole = [[(0, len(d))] for d in corpus.documents]
    assert answers_cut(corpus.questions, whole) == 0.0
    inside_mat = [[(0, 20), (20, 41)], [(0, 12), (12, 51)]]  # cuts "mat"; ends exactly where "sharply" starts
    assert answers_cut(corpus.questions, inside_mat) == 0.5
    at_ends = [[(0, 22), (22, 41)], [(0, 19), (19, 51)]]  # a chunk ending where the answer ends does not cut it
    assert answers_cut(corpus.questions, at_ends) == 0.0


def test_paired_table_against_the_best_baseline_and_the_ablation():
    from dynamic_chunker.evaluation.retrieval import evaluate_chunkers
    from dynamic_chunker.evaluation.retrieval_benchmark import cell, paired_table, scores_of, variant_record

    corpus = small_corpus()
    whole = lambda text: [text]  # noqa: E731
    sentences = lambda text: [(0, text.index(".") + 1), (text.index(".") + 2, len(text))]  # noqa: E731
    nothing = lambda text: []  # noqa: E731
    chunkers = {"mine@10": sentences, "semchunk@10": whole, "chonkie-sentence@10": nothing,
                "fixed-size@10": sentences, "mine-ablation@10": nothing}  # fmt: skip
    info = {name: {"chunker": name.split("@")[0], "target": 10} for name in chunkers}
    results = evaluate_chunkers(corpus, chunkers, WordEmbedder(), ks=(1,), throughput_runs=1, info=info)
    record = variant_record(corpus, results, {})
    lines = paired_table({"variants": {"flat": record}}, "mine", "mine-ablation", k=1).splitlines()
    assert lines[0].startswith("| variant | target | mine vs |") and len(lines) == 4
    # semchunk has the higher IoU of the two baselines; fixed-size (the same chunks as mine) is never the rival
    assert [line.split(" | ")[2] for line in lines[2:]] == ["semchunk@10", "mine-ablation@10"]
    ours, theirs = scores_of(record, "mine@10", 1), scores_of(record, "semchunk@10", 1)
    expected = [cell(paired_difference(ours, theirs, m), m, "+") for m in ("recall", "iou", "hit")]
    assert lines[2].endswith(" | ".join(expected) + " |") and expected[0].startswith(("+", "-"))


def test_calibrate_hits_the_target_mean():
    documents = ["x" * n for n in range(200, 2200, 70)]
    param, mean = calibrate(fixed_size, documents, target=100)
    lengths = [e - s for d in documents for s, e in fixed_size(param)(d)]
    assert mean == pytest.approx(np.mean(lengths))
    achievable = [np.mean([e - s for d in documents for s, e in fixed_size(p)(d)]) for p in range(50, 200)]
    assert abs(mean - 100) <= min(abs(m - 100) for m in achievable) + 1  # near the best any parameter gives
    assert fixed_size(4)("abcdefghij") == [(0, 4), (4, 8), (8, 10)]


@pytest.mark.parametrize("name", list(BASELINES))
def test_baselines_return_valid_spans(name):
    factory, _ = BASELINES[name]
    corpus = load_corpus(variant="paragraphs")
    text = corpus.documents[0][:3000]
    spans = to_spans(text, factory(200)(text))
    assert spans and all(0 <= s < e <= len(text) for s, e in spans)
    assert all(e - s <= 200 for s, e in spans) or name == "chonkie-sentence"  # a sentence chunk may hold a long one
    covered = np.zeros(len(text), bool)
    for s, e in spans:
        covered[s:e] = True
    assert covered[[i for i, c in enumerate(text) if not c.isspace()]].all()  # no text is lost


def test_cached_embedder(tmp_path):
    from dynamic_chunker.evaluation.embeddings import CachedEmbedder

    texts = ["A cat sat on the mat.", "Stock markets fell sharply.", "A cat sat on the mat."]
    first = CachedEmbedder(cache_dir=tmp_path, progress=False, threads=1)
    vectors = first.embed(texts)
    assert vectors.shape == (3, 384) and first.embedded == 2  # the duplicate is embedded once
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    query = first.embed(["Where did the cat sit?"])
    assert (query @ vectors.T)[0, 0] > (query @ vectors.T)[0, 1] + 0.2
    again = CachedEmbedder(cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(again.embed(texts), vectors)
    assert again.embedded == 0 and again._model is None  # served from the cache without loading the model


def test_cli_runs_on_own_data_and_compares(tmp_path, monkeypatch, capsys):
    from dynamic_chunker.cli import main

    data = write_squad(tmp_path / "squad.json", [
        ("Cats", [("The cat sat on the mat. It was warm.", [("Where did the cat sit?", ["the mat"])])]),
        ("Stocks", [("Stocks fell sharply today. Markets were calm.", [("How did stocks fall?", ["sharply"])])]),
    ])  # fmt: skip
    (tmp_path / "mychunks.py").write_text("def split(text):\n    return text.split('. ')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    common = ["eval", "retrieval", "--data", str(data), "--k", "1,2", "--cache-dir", str(tmp_path / "cache")]
    first = tmp_path / "out" / "base"
    assert main([*common, "--baselines", "fixed-size", "--sizes", "12", "--out", str(first)]) == 0
    report = json.loads(gzip.open(f"{first}.json.gz").read())
    assert set(report["variants"]) == {"paragraphs", "flat"}
    assert (tmp_path / "out" / "base.png").stat().st_size > 0
    second = tmp_path / "out" / "mine"
    args = [*common, "--baselines", "none", "--chunker", "mine=mychunks:split", "--compare", f"{first}.json.gz"]
    assert main([*args, "--variants", "flat", "--out", str(second)]) == 0
    text = (tmp_path / "out" / "mine.md").read_text()
    assert "| mine | - |" in text and "| fixed-size | 12 |" in text and "fixed-size@12 |" in text  # paired against it
    merged = json.loads(gzip.open(f"{second}.json.gz").read())["variants"]["flat"]["chunkers"]
    assert set(merged) == {"mine", "fixed-size@12"}  # one self-contained file for the next comparison
    capsys.readouterr()
    assert main([*common, "--variants", "lines"]) == 2
    assert "unknown variant" in capsys.readouterr().err
    assert main([*common, "--chunker", "nosuchmodule:f"]) == 2
    assert "cannot load" in capsys.readouterr().err


def test_chunk_retrieval_runs_needs_its_own_output():
    # --runs scores a few rows; written over the default prefix it would replace the committed full results
    command = [sys.executable, "-m", "benchmarks.chunk_retrieval", "--runs", "chunk_text"]
    done = subprocess.run(command, cwd=BENCHMARKS.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "give it its own --output prefix" in done.stderr
    assert (BENCHMARKS / "results" / "chunk_retrieval.json.gz").is_file()
