"""Starting the real web app for tests, benchmarks and load runs: ``rag serve`` on a loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def process_serving(
    command: list[str], url: str, log_path: Path, env: dict[str, str] | None = None, timeout_s: float = 180
) -> Iterator[str]:
    """Run a server process until ``url`` answers 200, yield the URL, stop the process afterwards."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, f"{command[0]} did not start:\n" + log_path.read_text()
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@contextmanager
def running_app(
    corpus_dir: Path, index_dir: Path, port: int | None = None, **env_extra: str
) -> Iterator[str]:
    """``rag serve`` as a user starts it, on a loopback port, over the given corpus and index."""
    port = port or free_loopback_port()
    env = {
        **os.environ,
        "RAG_INDEX_DIR": str(index_dir),
        "RAG_CORPUS_DIR": str(corpus_dir),
        "GRADIO_SERVER_PORT": str(port),
        **env_extra,
    }
    command = [sys.executable, "-m", "rag", "serve"]
    with process_serving(
        command, f"http://127.0.0.1:{port}/", index_dir.parent / f"serve-{port}.log", env
    ) as url:
        yield url
