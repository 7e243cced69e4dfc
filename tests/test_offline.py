"""No connection leaves the machine, seen by the kernel: ``rag ask`` and a question served by ``rag serve``
run under ``strace -f -e trace=connect,sendto``, and every socket address they use must be loopback or
local (a Unix socket, netlink). pytest-socket cannot see this: native code (ONNX Runtime's telemetry,
say) opens its own sockets.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from evals.serving import free_loopback_port

STRACE = shutil.which("strace")
if STRACE is None and os.environ.get("CI"):
    pytest.fail("strace is missing in CI: `make test` installs it with apt-get", pytrace=False)
pytestmark = pytest.mark.skipif(STRACE is None, reason="needs Debian's strace (make test installs it)")

QUESTION = "How far is the Belarusian border from Kyiv?"
# ONNX Runtime's telemetry looked its host up about 7 s after the first answer, then every 5-9 s:
# a served process is watched this long after its question.
WATCH_AFTER_QUESTION_S = 20
_SOCKADDR = re.compile(r"\{sa_family=(AF_\w+)(.*?)\}")
_PORT = re.compile(r"sin6?_port=htons\((\d+)\)")
_IPV4 = re.compile(r'inet_addr\("([^"]+)"\)')
_IPV6 = re.compile(r'inet_pton\(AF_INET6, "([^"]+)"')
_LOCAL_FAMILIES = {"AF_UNIX", "AF_LOCAL", "AF_NETLINK", "AF_UNSPEC"}  # AF_UNSPEC: disconnect a socket


def outbound(trace: str) -> list[str]:
    """The traced ``connect``/``sendto`` calls whose address is not loopback or local; any DNS query
    (port 53) counts, even to a loopback resolver, which would forward it."""
    found = []
    for line in trace.splitlines():
        if "connect(" not in line and "sendto(" not in line:
            continue
        for family, rest in _SOCKADDR.findall(line):
            if family in _LOCAL_FAMILIES:
                continue
            host = (_IPV4 if family == "AF_INET" else _IPV6).search(rest)
            port = _PORT.search(rest)
            if host is None or not _is_loopback(host.group(1)) or (port and port.group(1) == "53"):
                found.append(line.strip())
    return found


def _is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def test_the_trace_parser_sees_what_leaves_the_machine() -> None:
    trace = "\n".join(
        [
            '12 connect(3, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT',
            '12 connect(5, {sa_family=AF_INET, sin_port=htons(7860), sin_addr=inet_addr("127.0.0.1")}, 16)',
            "12 connect(6, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), "
            'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
            '13 connect(25, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.0.0.53")}, 16)',
            '14 sendto(7, "x", 1, 0, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), '
            'inet_pton(AF_INET6, "2001:db8::1", &sin6_addr), sin6_scope_id=0}, 28) = 1',
            '15 connect(8, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.53")}, 16)',
            '16 sendto(9, "\\0", 20, 0, {sa_family=AF_NETLINK, nl_pid=0, nl_groups=00000000}, 12) = 20',
        ]
    )
    assert [line.split()[0] for line in outbound(trace)] == ["13", "14", "15"]


def traced(trace_file: Path, *command: str) -> list[str]:
    return [STRACE or "strace", "-f", "-qq", "-e", "trace=connect,sendto", "-o", str(trace_file), *command]


def _env(tmp_path: Path, corpus_dir: Path) -> dict[str, str]:
    # Only what a user's shell would hold: the test process's own settings (loopback guard aside).
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    return {**env, "RAG_INDEX_DIR": str(tmp_path / "index"), "RAG_CORPUS_DIR": str(corpus_dir)}


def test_rag_ask_connects_to_nothing_but_loopback(tmp_path: Path, corpus_dir: Path) -> None:
    trace_file = tmp_path / "ask.strace"
    done = subprocess.run(
        traced(trace_file, sys.executable, "-m", "rag", "ask", QUESTION),
        env=_env(tmp_path, corpus_dir),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "200 kilometres" in done.stdout  # it built the index and answered, all under the trace
    assert outbound(trace_file.read_text(errors="replace")) == []


def test_a_served_question_connects_to_nothing_but_loopback(tmp_path: Path, corpus_dir: Path) -> None:
    trace_file = tmp_path / "serve.strace"
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**_env(tmp_path, corpus_dir), "GRADIO_SERVER_PORT": str(port)}
    with open(tmp_path / "serve.log", "w") as log:
        tracer = subprocess.Popen(
            traced(trace_file, sys.executable, "-m", "rag", "serve"),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert tracer.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "rag serve did not start"
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        answer = Client(url, verbose=False).predict(QUESTION, None, api_name="/ask")
        assert "200 kilometres" in answer["text"]
        time.sleep(WATCH_AFTER_QUESTION_S)  # a delayed background call (telemetry) must be seen too
    finally:
        _stop_traced(tracer)
    assert outbound(trace_file.read_text(errors="replace")) == []


def _stop_traced(tracer: subprocess.Popen[bytes]) -> None:
    """Stop the traced server (strace's child) first, then strace, which ends with it."""
    children = Path(f"/proc/{tracer.pid}/task/{tracer.pid}/children")
    for pid in children.read_text().split() if children.exists() else []:
        os.kill(int(pid), signal.SIGTERM)
    try:
        tracer.wait(timeout=30)
    except subprocess.TimeoutExpired:
        tracer.kill()
        tracer.wait(timeout=30)
