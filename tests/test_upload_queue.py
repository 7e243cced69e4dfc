"""An upload made in the real browser while a CLI ingest runs: the reader is told it is queued, and
nothing is lost (Debian's Chromium driven by Playwright, a real ``rag serve``, a real ``rag ingest``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evals.serving import running_app
from evals.synth import write_distractor_corpus
from rag.pipeline import Pipeline
from tests.conftest import CORPUS, make_settings
from tests.test_concurrency import NEW_ARTICLE, NEW_FACT, NEW_QUESTION, env_for

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (make test installs it)"
)


@pytest.fixture
def page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser.new_page(viewport={"width": 1400, "height": 1000})
        browser.close()


def test_an_upload_during_a_cli_ingest_is_queued_and_nothing_is_lost(page: Any, tmp_path: Path) -> None:
    corpus, index = tmp_path / "corpus", tmp_path / "index"
    shutil.copytree(CORPUS, corpus)
    batch = tmp_path / "batch"
    write_distractor_corpus(CORPUS, batch, 150)
    upload = tmp_path / "arctic-forum.txt"
    upload.write_text(NEW_ARTICLE, encoding="utf-8")

    with running_app(corpus, index) as url:
        page.goto(url)
        page.wait_for_selector("#question textarea")
        page.get_by_role("tab", name="Library").click()
        page.set_input_files("#upload input[type=file]", str(upload))
        page.wait_for_timeout(1000)

        cli = subprocess.Popen(
            [sys.executable, "-m", "rag", "ingest", str(batch)],
            env=env_for(corpus, index),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        marker = index / "ingest-in-progress.json"
        deadline = time.monotonic() + 60
        while not marker.exists():  # the CLI holds the index
            assert cli.poll() is None and time.monotonic() < deadline, "the CLI ingest ended too soon"
            time.sleep(0.05)
        page.click("#add-articles")
        page.wait_for_function(
            "() => document.body.innerText.includes('Queued behind another ingest')", timeout=30_000
        )
        assert cli.poll() is None  # told it was queued while the CLI ingest was still running
        page.wait_for_function(
            "() => (document.querySelector('#upload-status')?.innerText || '').match(/Indexed|❌|⚠️|⏳/)",
            timeout=300_000,
        )
        status = page.inner_text("#upload-status")
        assert "Indexed 1 article" in status, status
        assert cli.wait(timeout=300) == 0, cli.stdout.read() if cli.stdout else ""

    pipeline = Pipeline(make_settings(tmp_path))
    assert pipeline.index.check() == []
    catalog = pipeline.index.store.catalog()
    assert len(catalog) == 5 + 150 + 1 and "arctic-forum" in catalog  # every file indexed once
    assert NEW_FACT in pipeline.query(NEW_QUESTION).text
