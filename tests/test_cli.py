"""The ``rag`` command, run as a user runs it: a real subprocess with its own index folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def rag(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rag", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_ingest_ask_and_errors(tmp_path: Path, corpus_dir: Path) -> None:
    env = {
        **os.environ,
        "RAG_INDEX_DIR": str(tmp_path / "index"),
        "RAG_CORPUS_DIR": str(corpus_dir),
        "COLUMNS": "200",
    }
    first = rag("ingest", env=env)
    assert first.returncode == 0, first.stderr
    assert "added 5" in first.stdout
    again = rag("ingest", env=env)
    assert "added 0, updated 0, removed 0, unchanged 5" in again.stdout

    asked = rag("ask", "How far is the Belarusian border from Kyiv?", env=env)
    assert asked.returncode == 0, asked.stderr
    assert "200 kilometres" in asked.stdout and "[1]" in asked.stdout
    assert "Belarus Steps Up" in asked.stdout  # the cited article's title

    as_json = json.loads(rag("ask", "--json", "Who is Serbia's foreign minister?", env=env).stdout)
    assert as_json["found"] and as_json["citations"][0]["quote"]

    empty = rag("ask", "   ", env=env)
    assert empty.returncode == 1 and "Please ask a question" in empty.stdout
    assert "Traceback" not in empty.stderr


def test_flags_override_environment(tmp_path: Path, corpus_dir: Path) -> None:
    env = {**os.environ, "RAG_INDEX_DIR": str(tmp_path / "unused"), "COLUMNS": "200"}
    result = rag("--corpus-dir", str(corpus_dir), "--index-dir", str(tmp_path / "flagged"), "ingest", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "flagged" / "articles.db").exists()
    assert not (tmp_path / "unused").exists()


def test_mismatched_index_gives_a_clear_message(tmp_path: Path, corpus_dir: Path) -> None:
    env = {
        **os.environ,
        "RAG_INDEX_DIR": str(tmp_path / "index"),
        "RAG_CORPUS_DIR": str(corpus_dir),
        "COLUMNS": "200",
    }
    assert rag("ingest", env=env).returncode == 0
    result = rag("ask", "Who offered to host the talks?", env={**env, "RAG_CHUNK_SIZE": "400"})
    assert result.returncode == 1
    assert "rag ingest --rebuild" in result.stdout and "Traceback" not in result.stderr


def test_setup_errors_name_the_fix_without_a_traceback(tmp_path: Path, corpus_dir: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {
        **os.environ,
        "RAG_INDEX_DIR": str(tmp_path / "index"),
        "RAG_CORPUS_DIR": str(corpus_dir),
        "RAG_MODEL_CACHE_DIR": str(blocker / "models"),  # cannot be created: its parent is a file
        "COLUMNS": "200",
    }
    unwritable = rag("ingest", env=env)
    assert unwritable.returncode == 1
    assert "RAG_MODEL_CACHE_DIR to a writable folder" in unwritable.stdout
    assert "Traceback" not in unwritable.stdout + unwritable.stderr
    unknown = rag("ask", "Who offered to host the talks?", env={**env, "RAG_GENERATOR": "gpt-magic"})
    assert unknown.returncode == 1
    assert "Unknown generator 'gpt-magic'" in unknown.stdout and "Traceback" not in unknown.stderr


def test_check_finds_what_does_not_match_the_articles_and_repair_fixes_it(
    tmp_path: Path, corpus_dir: Path
) -> None:
    index = tmp_path / "index"
    env = {**os.environ, "RAG_INDEX_DIR": str(index), "RAG_CORPUS_DIR": str(corpus_dir), "COLUMNS": "200"}
    assert rag("ingest", env=env).returncode == 0
    healthy = rag("check", env=env)
    assert healthy.returncode == 0 and "consistent: 5 articles" in healthy.stdout
    victim = sorted((index / "vectors").glob("*.f32"))[0]
    victim.unlink()  # what a careless cleanup leaves
    broken = rag("check", env=env)
    assert broken.returncode == 1 and "1 article vector file(s) missing" in broken.stdout
    assert "rag check --repair" in broken.stdout and "Traceback" not in broken.stderr
    repaired = rag("check", "--repair", env=env)
    assert repaired.returncode == 0 and "consistent: 5 articles" in repaired.stdout
    assert victim.exists()
