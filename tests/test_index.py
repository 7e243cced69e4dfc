"""Ingest against a real Chroma index in a temp folder, with the real embedding model."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from rag.errors import IndexBusyError, IndexMismatchError
from rag.index import chunk_ids
from rag.pipeline import Pipeline
from tests.conftest import make_settings


def chroma_ids(pipeline: Pipeline) -> set[str]:
    return set(pipeline.index.dense.collection.get(include=[])["ids"])


def stored_article_chunk_ids(pipeline: Pipeline) -> set[str]:
    return {cid for a in pipeline.index.articles.values() for cid in chunk_ids(a)}


def test_ingest_indexes_every_chunk_once_with_exact_offsets(fresh_pipeline: Pipeline) -> None:
    report = fresh_pipeline.ingest()
    assert len(report.added) == 5 and not report.skipped
    assert report.chunks_embedded == fresh_pipeline.index.chunk_count() > 50
    assert report.sentences_embedded == sum(len(a.sentences) for a in fresh_pipeline.index.articles.values())
    assert chroma_ids(fresh_pipeline) == stored_article_chunk_ids(fresh_pipeline)
    assert fresh_pipeline.index.is_consistent()
    stored = fresh_pipeline.index.dense.collection.get(include=["documents", "metadatas"])
    for document, meta in zip(stored["documents"], stored["metadatas"], strict=True):
        article = fresh_pipeline.index.articles[meta["article_id"]]
        assert article.text[meta["start"] : meta["end"]] == document
    for article in fresh_pipeline.index.articles.values():  # one stored vector per sentence, the right one
        n = len(article.sentences)
        stored_vectors = fresh_pipeline.index.sentence_vectors([(article.id, i) for i in range(n)])
        alone = fresh_pipeline.embedder.embed([article.text[s:e] for s, e in article.sentences])
        similarity = stored_vectors @ alone.T
        # Read in its passage, a sentence's vector leans towards its neighbours' topic (a cosine of ~0.8
        # with the sentence embedded alone), yet stays nearest to its own sentence, not a shifted one.
        assert np.diag(similarity).mean() > 0.7
        assert np.diag(similarity).mean() > np.diag(similarity, 1).mean() + 0.15
        assert np.diag(similarity).mean() > np.diag(similarity, -1).mean() + 0.15
    # Chunk vectors are read back from the article files for diversification: the very ones Chroma holds.
    chunks = [chunk for article in fresh_pipeline.index.articles.values() for chunk in article.iter_chunks()]
    stored_chunks = fresh_pipeline.index.dense.collection.get(
        ids=[c for article in fresh_pipeline.index.articles.values() for c in chunk_ids(article)],
        include=["embeddings"],
    )
    by_id = dict(zip(stored_chunks["ids"], stored_chunks["embeddings"], strict=True))
    in_chroma = np.array([by_id[cid] for a in fresh_pipeline.index.articles.values() for cid in chunk_ids(a)])
    assert np.allclose(fresh_pipeline.index.chunk_vectors(chunks), in_chroma, atol=1e-6)


def test_reingest_is_a_no_op(fresh_pipeline: Pipeline) -> None:
    fresh_pipeline.ingest()
    before = chroma_ids(fresh_pipeline)
    report = fresh_pipeline.ingest()
    assert not report.changed and len(report.unchanged) == 5
    assert report.chunks_embedded == 0 and report.sentences_embedded == 0
    assert chroma_ids(fresh_pipeline) == before


def test_changed_file_is_reindexed_and_deleted_file_removed(
    fresh_pipeline: Pipeline, corpus_dir: Path
) -> None:
    fresh_pipeline.ingest()
    files = sorted(corpus_dir.glob("*.txt"))
    files[0].write_text(files[0].read_text() + "\nA new closing sentence about a summit in Vienna.\n")
    files[1].unlink()
    report = fresh_pipeline.ingest()
    changed, gone = files[0].stem, files[1].stem
    assert report.updated == [changed] and report.removed == [gone] and not report.added
    assert report.chunks_embedded < fresh_pipeline.index.chunk_count()  # only the changed article's chunks
    assert gone not in fresh_pipeline.index.articles
    assert not any(i.startswith(gone) for i in chroma_ids(fresh_pipeline))
    assert fresh_pipeline.index.is_consistent()
    assert "summit in Vienna" in fresh_pipeline.index.articles[changed].text


def test_added_file_and_explicit_paths(fresh_pipeline: Pipeline, tmp_path: Path) -> None:
    fresh_pipeline.ingest()
    extra = tmp_path / "elsewhere" / "oslo.md"
    extra.parent.mkdir()
    extra.write_text("# Oslo offers a venue\n\nNorway said on Monday that Oslo could host the next round.\n")
    report = fresh_pipeline.ingest([extra])
    assert report.added == ["oslo"]
    assert len(fresh_pipeline.index.articles) == 6
    assert fresh_pipeline.index.articles["oslo"].title == "Oslo offers a venue"


def test_a_sentence_no_chunk_holds_whole_is_embedded_on_its_own(
    fresh_pipeline: Pipeline, tmp_path: Path
) -> None:
    """Sentence vectors are read from the chunk pass; one split across chunks must still get its own."""
    clauses = [f"the delegation from city number {n} asked for a later date" for n in range(30)]
    long_sentence = "Officials said that " + ", ".join(clauses) + "."
    assert len(long_sentence) > fresh_pipeline.settings.chunk_size
    article = tmp_path / "corpus" / "long-sentence.txt"
    article.write_text(f"A long sentence\n\nTalks resumed on Monday. {long_sentence} Nobody objected.\n")
    fresh_pipeline.ingest([article])
    indexed = fresh_pipeline.index.articles["long-sentence"]
    number = next(i for i, (s, e) in enumerate(indexed.sentences) if indexed.text[s:e] == long_sentence)
    stored = fresh_pipeline.index.sentence_vectors([("long-sentence", number)])[0]
    assert float(stored @ fresh_pipeline.embedder.embed([long_sentence])[0]) > 0.99


def test_duplicate_content_under_two_names_is_indexed_once(
    fresh_pipeline: Pipeline, corpus_dir: Path
) -> None:
    first = sorted(corpus_dir.glob("*.txt"))[0]
    (corpus_dir / "copy-of-first.txt").write_bytes(first.read_bytes())
    report = fresh_pipeline.ingest()
    assert len(report.added) == 5
    assert any("same text" in s.reason for s in report.skipped)


def test_other_chunking_settings_fail_with_a_rebuild_hint(fresh_pipeline: Pipeline, tmp_path: Path) -> None:
    fresh_pipeline.ingest()
    other = Pipeline(make_settings(tmp_path, chunk_size=400))
    with pytest.raises(IndexMismatchError, match="rag ingest --rebuild"):
        other.ensure_ready()
    report = other.ingest(rebuild=True)
    assert len(report.added) == 5
    assert chroma_ids(other) == stored_article_chunk_ids(other)


def test_other_embedding_model_is_refused(fresh_pipeline: Pipeline, tmp_path: Path) -> None:
    fresh_pipeline.ingest()
    model_dir = fresh_pipeline.embedder.model_name
    from rag.embeddings import resolve_model_path

    other = Pipeline(make_settings(tmp_path, embedding_model=str(resolve_model_path(model_dir))))
    with pytest.raises(IndexMismatchError, match="embedding_model"):
        other.query("Who offered to host the talks?")


def test_interrupted_ingest_is_completed_on_next_use(fresh_pipeline: Pipeline) -> None:
    fresh_pipeline.ingest()
    index = fresh_pipeline.index
    victim = next(iter(index.articles.values()))
    # What a crash mid-write leaves: some chunks gone from Chroma, the in-progress marker still there.
    index.dense.collection.delete(ids=chunk_ids(victim)[1:])
    index.vectors.path(victim).unlink()
    (index.root / "ingest-in-progress.json").write_text(json.dumps({"paths": []}))
    reopened = Pipeline(fresh_pipeline.settings)
    assert reopened.index.interrupted == []
    answer = reopened.query("Who offered to host the talks?")
    assert answer.passages
    assert reopened.index.interrupted is None
    assert reopened.index.is_consistent()


def test_a_second_ingest_waits_its_turn_then_says_the_index_is_busy(fresh_pipeline: Pipeline) -> None:
    impatient = Pipeline(fresh_pipeline.settings.model_copy(update={"ingest_wait_s": 0.5}))
    waited: list[bool] = []
    started = time.monotonic()
    with fresh_pipeline.index.writing(["x"]), pytest.raises(IndexBusyError, match="Another ingest"):
        impatient.ingest(on_wait=lambda: waited.append(True))
    assert waited == [True] and time.monotonic() - started >= 0.5


def test_query_on_a_fresh_checkout_builds_the_index(fresh_pipeline: Pipeline) -> None:
    assert not fresh_pipeline.index.exists
    answer = fresh_pipeline.query("Which city did Lukashenko offer as a venue?")
    assert fresh_pipeline.index.exists and answer.passages


def test_the_dense_graph_loads_early_on_an_empty_and_on_a_built_index(fresh_pipeline: Pipeline) -> None:
    fresh_pipeline.index.dense.warm()  # nothing to load yet, and no error
    fresh_pipeline.ingest()
    restarted = Pipeline(fresh_pipeline.settings)
    restarted.index.dense.warm()
    assert restarted.query("Which city did Lukashenko offer as a venue?").found
    assert restarted.index.is_consistent()


def test_chroma_never_runs_its_default_embedding_model(shipped: Pipeline) -> None:
    configuration = shipped.index.dense.collection.configuration
    assert configuration.get("embedding_function") is None
    assert not (Path.home() / ".cache" / "chroma" / "onnx_models").exists()


def bm25_state(pipeline: Pipeline, generation: int) -> Path:
    return Path(pipeline.settings.index_dir) / "bm25" / f"state-{generation:010d}.json"


def test_bm25_is_saved_at_ingest_and_only_loaded_at_start(fresh_pipeline: Pipeline, corpus_dir: Path) -> None:
    fresh_pipeline.ingest()
    generation = fresh_pipeline.index.generation
    saved = bm25_state(fresh_pipeline, generation)
    assert json.loads(saved.read_text())["generation"] == generation
    stamp = saved.stat().st_mtime_ns

    restarted = Pipeline(fresh_pipeline.settings)
    assert restarted.query("Which news agency reported the interview?").found
    assert restarted.index.sparse.generation == generation
    assert saved.stat().st_mtime_ns == stamp  # loaded, not rebuilt

    assert not restarted.ingest().changed
    assert saved.stat().st_mtime_ns == stamp  # a no-op ingest leaves it alone
    first = sorted(corpus_dir.glob("*.txt"))[0]
    first.write_text(first.read_text() + "\nThe Holmenkollen venue was mentioned once.\n")
    restarted.ingest()
    assert json.loads(bm25_state(restarted, generation + 1).read_text())["generation"] == generation + 1
    assert saved.exists()  # the previous generation's state stays for processes not caught up yet
    assert restarted.retriever.sparse_search("Holmenkollen venue", 3)[0][0].article_id == first.stem
    first.write_text(first.read_text() + "\nAnother line.\n")
    restarted.ingest()
    assert not saved.exists() and bm25_state(restarted, generation + 1).exists()


def test_bm25_tokens_are_those_bm25s_would_make() -> None:
    """Our tokeniser restates bm25s' analysis for speed; an index built by either must read alike."""
    import bm25s

    from rag.sparse import _stemmer, _stopwords, tokenize
    from tests.conftest import CORPUS

    texts = [p.read_text(encoding="utf-8") for p in sorted(CORPUS.glob("*.txt"))]
    texts += ["Who's hosting the talks in Minsk—or Abu Dhabi?", "", "a I 42 2,000 km U.S. naïve café"]
    expected = bm25s.tokenize(
        texts, stopwords=sorted(_stopwords()), stemmer=_stemmer(), return_ids=False, show_progress=False
    )
    assert tokenize(texts) == expected
    assert sum(map(len, expected)) > 1000


def test_the_written_out_stop_words_are_bm25s_own() -> None:
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    from rag.sparse import _BM25S_STOPWORDS

    assert sorted(_BM25S_STOPWORDS) == sorted(STOPWORDS_EN_PLUS)


def bm25s_ranking(pipeline: Pipeline, question: str, k: int) -> list[tuple[tuple[str, int], float]]:
    """What bm25s, built from scratch over the index's current chunks, ranks first."""
    import bm25s

    from rag.sparse import tokenize

    keys = [(a.id, i) for a in pipeline.index.articles.values() for i in range(len(a.chunks))]
    model = bm25s.BM25()
    model.index(tokenize([pipeline.index.articles[a].chunk(i).text for a, i in keys]), show_progress=False)
    terms = [[t for t in tokenize([question])[0] if t in model.vocab_dict]]
    ids, scores = model.retrieve(terms, k=k, show_progress=False, n_threads=0)
    return [(keys[int(i)], float(s)) for i, s in zip(ids[0], scores[0], strict=True) if s > 0]


def assert_same_bm25(pipeline: Pipeline, questions: list[str]) -> None:
    for question in questions:
        ours = pipeline.index.sparse.search(question, 10)
        theirs = bm25s_ranking(pipeline, question, 10)
        assert [key for key, _ in ours][:5] == [key for key, _ in theirs][:5], question
        assert np.allclose([s for _, s in ours], [s for _, s in theirs], rtol=1e-4), question


def test_bm25_updated_in_place_scores_as_bm25s_rebuilt_from_scratch(
    fresh_pipeline: Pipeline, corpus_dir: Path
) -> None:
    questions = [
        "Who offered to host the talks in Belgrade?",
        "How far is the Belarusian border from Kyiv?",
        "Which news agency reported the interview with the minister?",
    ]
    fresh_pipeline.ingest()
    assert_same_bm25(fresh_pipeline, questions)
    sparse = fresh_pipeline.index.sparse
    files = sorted(corpus_dir.glob("*.txt"))
    # Each ingest adds a segment for the changed article and retires its old rows; past the limit the
    # small segments are merged. Scores must stay those of a full rebuild throughout.
    for n in range(12):
        files[n % 2].write_text(files[n % 2].read_text() + f"\nA talks venue note number {n} was added.\n")
        fresh_pipeline.ingest()
        assert_same_bm25(fresh_pipeline, [*questions, "talks venue note"])
    assert 1 < len(sparse.state.segments) <= 9
    files[2].unlink()
    fresh_pipeline.ingest()
    assert_same_bm25(fresh_pipeline, questions)
    assert all(key[0] != files[2].stem for key, _ in sparse.search("Belarus Kyiv border talks minister", 50))
    folders = {p.name for p in (Path(fresh_pipeline.settings.index_dir) / "bm25").iterdir() if p.is_dir()}
    assert folders == set(sparse.state.segments)  # replaced segments are deleted


def test_a_damaged_bm25_index_is_rebuilt_from_the_article_store_at_start(fresh_pipeline: Pipeline) -> None:
    fresh_pipeline.ingest()
    folder = Path(fresh_pipeline.settings.index_dir) / "bm25"
    segments = [path for path in folder.iterdir() if path.is_dir()]
    assert segments
    for segment in segments:
        shutil.rmtree(segment)  # what a lost disk block or a careless cleanup leaves
    restarted = Pipeline(fresh_pipeline.settings)
    assert restarted.query("Which news agency reported the interview?").found
    assert_same_bm25(restarted, ["Which news agency reported the interview?"])
    assert all((folder / name).is_dir() for name in restarted.index.sparse.state.segments)
    assert restarted.index.is_consistent()


def test_a_start_takes_in_new_changed_and_deleted_corpus_files(
    fresh_pipeline: Pipeline, corpus_dir: Path
) -> None:
    fresh_pipeline.ingest()
    assert not Pipeline(fresh_pipeline.settings).corpus_changed()
    files = sorted(corpus_dir.glob("*.txt"))
    files[0].write_text(files[0].read_text() + "\nThe Holmenkollen venue was mentioned once.\n")
    files[1].unlink()
    (corpus_dir / "oslo.txt").write_text(
        "Oslo offers a venue\n\nNorway said Oslo could host the next round.\n"
    )

    restarted = Pipeline(fresh_pipeline.settings)
    assert restarted.corpus_changed()
    assert restarted.query("Which city could host the next round, according to Norway?").found
    catalog = restarted.index.store.catalog()
    assert "oslo" in catalog and files[1].stem not in catalog and len(catalog) == 5
    assert "Holmenkollen" in restarted.index.articles[files[0].stem].text
    assert restarted.index.is_consistent()
    assert not Pipeline(fresh_pipeline.settings).corpus_changed()


@pytest.mark.parametrize(
    ("fault", "becomes_index_error"), [(OSError(28, "No space left"), True), (TypeError("bug"), False)]
)
def test_only_storage_failures_become_index_errors(
    fresh_pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, fault: Exception, becomes_index_error: bool
) -> None:
    """A full disk is the user's to fix (RagIndexError, with the fix); a bug keeps its own type and
    traceback instead of being reported as "Free disk space". The fault is raised by the article-vector
    store that sync calls, not by sync itself."""
    from rag.errors import RagIndexError

    def failing(*args: object, **kwargs: object) -> None:
        raise fault

    monkeypatch.setattr(fresh_pipeline.index.vectors, "remove_stale", failing)
    with pytest.raises(RagIndexError if becomes_index_error else type(fault)) as raised:
        fresh_pipeline.ingest()
    assert isinstance(raised.value, RagIndexError) == becomes_index_error
