"""Settings refuse what they do not know: a typo in a name or a value is an error that names it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import rag
from rag.errors import SettingsError
from rag.pipeline import Pipeline
from rag.settings import Settings


def test_an_unknown_keyword_is_refused_with_the_likely_name() -> None:
    with pytest.raises(SettingsError, match=r"unknown setting 'topk' \(did you mean top_k\?\)"):
        Settings(topk=3)


def test_an_unknown_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_TOPK", "3")
    with pytest.raises(SettingsError, match=r"RAG_TOPK \(did you mean RAG_TOP_K\?\)"):
        Settings()


def test_a_dotenv_file_holds_only_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("RAG_TOP_K=7\n")
    assert Settings().top_k == 7
    (tmp_path / ".env").write_text("RAG_TOP_K=7\nRAG_RRFK=3\n")
    with pytest.raises(SettingsError, match="rag_rrfk"):
        Settings()


def test_overrides_are_validated_like_any_value() -> None:
    with pytest.raises(SettingsError) as refused:
        rag.configure(top_k=0, rrf_k="five")
    assert "top_k=0" in str(refused.value) and "rrf_k='five'" in str(refused.value)
    with pytest.raises(SettingsError, match="unknown setting 'topk'"):
        rag.configure(topk=3)
    base = Settings(top_k=3)
    assert base.updated(rrf_k="7").rrf_k == 7 and base.updated(rrf_k="7").top_k == 3  # coerced, kept
    rag.configure()  # back to the settings from the environment


@pytest.mark.parametrize("value", ["useronly", "user:", ":password"])
def test_rag_auth_must_be_user_and_password(value: str) -> None:
    with pytest.raises(SettingsError, match="user:password"):
        Settings(auth=value)


def _rag(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rag", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **env},
        timeout=120,
        check=False,
    )


def test_the_cli_reports_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    index = str(tmp_path / "index")
    for result, expected in [
        (_rag("serve", RAG_AUTH="useronly", RAG_INDEX_DIR=index), "user:password"),
        (_rag("ask", "Who?", RAG_TOPK="3", RAG_INDEX_DIR=index), "RAG_TOP_K"),
        (_rag("--top-k", "0", "ask", "Who?", RAG_INDEX_DIR=index), "top_k=0"),
    ]:
        assert result.returncode == 1, result.stderr
        assert "Error:" in result.stdout and expected in result.stdout
        assert "Traceback" not in result.stdout + result.stderr
    assert not Path(index).exists()  # refused before anything was built


def test_the_draft_takes_its_passage_counts_from_settings(shipped: Pipeline) -> None:
    """`max(top_k, 5)` and `[:3]` were numbers in the code; now draft_passages and coverage_passages."""
    wide = Pipeline(shipped.settings.updated(top_k=1, draft_passages=8))
    assert len(wide.query("How far is the Belarusian border from Kyiv?").passages) == 8
    narrow = Pipeline(shipped.settings.updated(top_k=1, draft_passages=2))
    assert len(narrow.query("How far is the Belarusian border from Kyiv?").passages) == 2
