"""A local OpenAI-compatible server for tests and benchmarks: chat completions, embeddings, usage, faults.

What LLM mode's real provider client (``langchain-openai``) is pointed at
with ``llm.base_url``, as an operator points it at llama.cpp's server or
vLLM. It answers

- ``POST /v1/chat/completions``: with the structured reply as JSON content
  when the request asks for a ``json_schema`` (or ``json_object``) response
  format, as a tool call when it offers tools, else as plain text; every
  answer reports ``usage``;
- ``POST /v1/embeddings``: a deterministic bag-of-words vector per input
  text (similar texts are near), with usage;

after a real ``latency`` (seconds of wall time, per request, served
concurrently), and records how many chat calls were in flight at once.
Faults are queued per path: ``fail_next(path, status)`` (a 500, say),
``malformed_next()`` (content that is not JSON), ``hang_next()`` (no answer
until :meth:`release` or the stop, at most ``hang_limit`` seconds).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

from tests.fake_http import KeepAliveHandler, KeepAliveServer, ServedFake

DIMENSIONS = 64
PROMPT_TOKENS = 120
COMPLETION_TOKENS = 30

Answer = Callable[[dict[str, Any]], dict[str, Any]]


def default_answer(_request: dict[str, Any]) -> dict[str, Any]:
    """The structured reply a well-behaved model gives: a short reflection and nothing else."""
    return {
        "reflection": "It sounds like it took real effort, and you stayed with it.",
        "follow_up": None,
        "extraction": {},
        "risk": "none",
    }


@dataclass
class _Fault:
    kind: str  # status | malformed | hang
    status: int = 500


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


def embed(text: str) -> list[float]:
    """A unit vector from the text's words (hashed into ``DIMENSIONS`` buckets): same words, near vectors."""
    vector = [0.0] * DIMENSIONS
    for word in re.findall(r"\w+", text.casefold()):
        digest = hashlib.sha256(word.encode()).digest()
        vector[digest[0] % DIMENSIONS] += 1.0 if digest[1] % 2 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class _Handler(KeepAliveHandler):
    server: KeepAliveServer

    def _serve(self) -> None:
        fake: FakeOpenAI = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        path = self.path.split("?", 1)[0].removeprefix("/v1")
        status, payload = fake._dispatch(path, body if isinstance(body, dict) else {})
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self._mark_idle()


class FakeOpenAI(ServedFake):
    """The server; ``base_url`` (``…/v1``) is what ``llm.base_url`` is set to. Thread-safe."""

    _thread_name = "fake-openai"

    def __init__(self, *, latency: float = 0.0, answer: Answer = default_answer, hang_limit: float = 10.0) -> None:
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._release = threading.Event()
        self._server: KeepAliveServer | None = None
        self._thread: threading.Thread | None = None
        self.latency = latency
        self.embedding_latency = 0.0
        self.answer = answer
        self.hang_limit = hang_limit
        self.received: list[Received] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._in_flight = 0
        self.max_in_flight = 0

    def _new_server(self) -> ThreadingHTTPServer:
        return KeepAliveServer(self, self._stopped, _Handler)

    def _on_stop(self) -> None:
        self._release.set()

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    # --- faults ---------------------------------------------------------------------------

    def fail_next(self, path: str = "/chat/completions", status: int = 500, times: int = 1) -> None:
        with self._lock:
            self._faults.setdefault(path, []).extend(_Fault("status", status) for _ in range(times))

    def malformed_next(self, times: int = 1) -> None:
        """The next chat answers (HTTP 200, usage reported) carry content that is not JSON."""
        with self._lock:
            self._faults.setdefault("/chat/completions", []).extend(_Fault("malformed") for _ in range(times))

    def hang_next(self, path: str = "/chat/completions", times: int = 1) -> None:
        with self._lock:
            self._release.clear()
            self._faults.setdefault(path, []).extend(_Fault("hang") for _ in range(times))

    def release(self) -> None:
        """End every hang now (they answer 500)."""
        self._release.set()

    def chat_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.body for r in self.received if r.path == "/chat/completions"]

    def embedding_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.body for r in self.received if r.path == "/embeddings"]

    # --- serving --------------------------------------------------------------------------

    def _dispatch(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        with self._lock:
            self.received.append(Received(path, body))
            queue = self._faults.get(path) or []
            fault = queue.pop(0) if queue else None
            chat = path == "/chat/completions"
            if chat:
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if fault is not None and fault.kind == "hang":
                self._release.wait(self.hang_limit)
                return 500, {"error": {"message": "hung request released", "type": "server_error"}}
            delay = self.latency if chat else self.embedding_latency
            if delay:
                self._stopped.wait(delay)  # real time, served concurrently; a stop ends the wait
            if fault is not None and fault.kind == "status":
                return fault.status, {"error": {"message": "injected failure", "type": "server_error"}}
            if chat:
                return 200, self._completion(body, malformed=fault is not None and fault.kind == "malformed")
            if path == "/embeddings":
                return 200, self._embeddings(body)
            if path == "/models":
                return 200, {"object": "list", "data": [{"id": "local-model", "object": "model"}]}
            return 404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}}
        finally:
            if chat:
                with self._lock:
                    self._in_flight -= 1

    def _completion(self, body: dict[str, Any], *, malformed: bool) -> dict[str, Any]:
        answer = self.answer(body)
        message: dict[str, Any] = {"role": "assistant", "content": None}
        response_format = body.get("response_format") or {}
        tools = body.get("tools") or []
        if malformed:
            message["content"] = '{"reflection": "It sounds like'  # cut off mid-JSON
        elif response_format.get("type") in ("json_schema", "json_object"):
            message["content"] = json.dumps(answer)
        elif tools:
            name = tools[0].get("function", {}).get("name", "reply")
            message["tool_calls"] = [
                {"id": "call_1", "type": "function", "function": {"name": name, "arguments": json.dumps(answer)}}
            ]
        else:
            message["content"] = answer.get("text") or answer.get("reflection") or ""
        return {
            "id": "chatcmpl-local",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "local-model"),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            },
        }

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        data = [
            {"object": "embedding", "index": i, "embedding": embed(t if isinstance(t, str) else " ".join(map(str, t)))}
            for i, t in enumerate(texts)
        ]
        return {
            "object": "list",
            "data": data,
            "model": body.get("model", "local-embed"),
            "usage": {"prompt_tokens": 8 * len(texts), "total_tokens": 8 * len(texts)},
        }
