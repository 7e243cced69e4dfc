"""A small real LLM server for the tests: OpenAI's chat-completions protocol (streaming included) and
Ollama's ``/api/chat``, on a loopback port, returning scripted replies.

The product talks to it over HTTP through LangChain's own clients, exactly as it would to vLLM,
llama.cpp's server or Ollama; only the words of the reply are scripted.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Script = Callable[[list[dict[str, Any]]], str]
_PASSAGE = re.compile(
    r"^\[(\d+)\] \(.*?\) (.*?)(?=\n\n\[\d+\] \(|\n\nQuestion:|\Z)", re.MULTILINE | re.DOTALL
)


def passage_number(messages: list[dict[str, Any]], contains: str) -> int:
    """The number the prompt gave the passage containing ``contains`` (what a good model would cite)."""
    prompt = "\n".join(str(m.get("content", "")) for m in messages)
    for match in _PASSAGE.finditer(prompt):
        if contains in match.group(2):
            return int(match.group(1))
    raise AssertionError(f"no passage in the prompt contains {contains!r}")


@dataclass
class ScriptedLLM:
    script: Script
    token_delay_s: float = 0.0
    first_byte_delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def words(self, messages: list[dict[str, Any]]) -> list[str]:
        reply = self.script(messages)
        return re.findall(r"\S+\s*|\s+", reply)


def _handler(llm: ScriptedLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            llm.requests.append({"path": self.path, **body})
            time.sleep(llm.first_byte_delay_s)
            words = llm.words(body.get("messages", []))
            if self.path.endswith("/chat/completions"):
                self._openai(body, words)
            elif self.path == "/api/chat":
                self._ollama(body, words)
            else:
                self.send_error(404)

        def _send_headers(self, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

        def _chunk(self, data: str) -> None:
            raw = data.encode()
            self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
            self.wfile.flush()

        def _openai(self, body: dict[str, Any], words: list[str]) -> None:
            base = {"id": "chatcmpl-test", "created": int(time.time()), "model": body.get("model", "")}
            if not body.get("stream"):
                message = {"role": "assistant", "content": "".join(words)}
                reply = {
                    **base,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self._send_headers("text/event-stream")
            for word in words:
                delta = {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
                self._chunk(f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', **delta})}\n\n")
                time.sleep(llm.token_delay_s)
            done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self._chunk(f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', **done})}\n\n")
            self._chunk("data: [DONE]\n\n")
            self._chunk("")

        def _ollama(self, body: dict[str, Any], words: list[str]) -> None:
            self._send_headers("application/x-ndjson")
            model, created = body.get("model", ""), "2026-01-01T00:00:00Z"
            for word in words:
                message = {"role": "assistant", "content": word}
                line = {"model": model, "created_at": created, "message": message, "done": False}
                self._chunk(json.dumps(line) + "\n")
                time.sleep(llm.token_delay_s)
            end = {"role": "assistant", "content": ""}
            final = {
                "model": model,
                "created_at": created,
                "message": end,
                "done": True,
                "done_reason": "stop",
            }
            self._chunk(json.dumps(final) + "\n")
            self._chunk("")

    return Handler


@contextmanager
def scripted_llm(script: Script, **options: float) -> Iterator[ScriptedLLM]:
    """A running server on 127.0.0.1; ``llm.url`` is the server root (OpenAI clients add ``/v1``)."""
    llm = ScriptedLLM(script, **options)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(llm))
    server.daemon_threads = True
    llm.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield llm
    finally:
        server.shutdown()
        server.server_close()
