"""A scriptable fake of an OpenAI-compatible `/chat/completions` endpoint, for tests of the `llm` agent.

The real providers live outside this machine, so tests talk to this server over real HTTP on 127.0.0.1 instead.
Each test queues the responses it wants (`FakeResponse`: a status, streamed text chunks, usage, or a raw body)
and afterwards inspects the requests the server received (headers and JSON body). Requests beyond the script get
a 500 so that an unexpected extra call shows up as a failure rather than a hang.

A response with `hold=True` streams its chunks and then keeps the connection open until the client goes away
(or the server stops), recording the disconnect in `client_gone`: that is how a test observes that cancelling the
step really aborted the request.
"""

from __future__ import annotations

import json
import select
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeOpenAI", "FakeResponse", "RecordedRequest", "fake_openai_server"]


@dataclass
class FakeResponse:
    """One scripted answer. With `body` set it is sent as is (JSON-encoded unless a str); else an SSE stream."""

    status: int = 200
    chunks: list[str] = field(default_factory=list)
    usage: dict[str, int] | None = None
    model: str = "fake-model"
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    json: Any


class FakeOpenAI:
    """The server's script and its record; all access goes through a lock, as handlers run in threads."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._lock = threading.Lock()
        self._script: deque[FakeResponse] = deque()
        self._requests: list[RecordedRequest] = []
        self.client_gone = threading.Event()
        self.stopping = threading.Event()

    def enqueue(self, *responses: FakeResponse) -> None:
        with self._lock:
            self._script.extend(responses)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def _next(self, request: RecordedRequest) -> FakeResponse:
        with self._lock:
            self._requests.append(request)
            if self._script:
                return self._script.popleft()
        return FakeResponse(status=500, body={"error": {"message": "fake_openai: no scripted response left"}})


def _sse_events(response: FakeResponse) -> Iterator[bytes]:
    """The events a real server sends: role first, one per content chunk, a finish, usage, then [DONE]."""

    def event(payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": response.model}
    yield event({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
    for text in response.chunks:
        yield event({**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
    if response.hold:
        return
    yield event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if response.usage is not None:
        yield event({**base, "choices": [], "usage": response.usage})
    yield b"data: [DONE]\n\n"


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: every response ends by closing the connection, so no chunked encoding is needed to stream
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", errors="replace")
            response = fake._next(RecordedRequest(self.path, dict(self.headers.items()), body))
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if response.body is not None:
                data = response.body.encode() if isinstance(response.body, str) else json.dumps(response.body).encode()
                if not isinstance(response.body, str):
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for data in _sse_events(response):
                self.wfile.write(data)
            if response.hold:
                self._hold()

        def _hold(self) -> None:
            """Keep the stream open until the client closes it (EOF on our socket) or the server stops."""
            while not fake.stopping.is_set():
                readable, _, _ = select.select([self.connection], [], [], 0.05)
                if readable and not self.connection.recv(1024):
                    fake.client_gone.set()
                    return

    return Handler


@contextmanager
def fake_openai_server() -> Iterator[FakeOpenAI]:
    """Run the fake on 127.0.0.1 on a free port in a background thread; yields it with `base_url` set."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    fake = FakeOpenAI(f"http://{host!s}:{port}/v1")
    server.RequestHandlerClass = _handler(fake)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-openai", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
