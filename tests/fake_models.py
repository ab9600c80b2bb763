"""A scripted model server that speaks the OpenAI Chat Completions and the Anthropic Messages wire formats.

No model provider can be reached from the test machines, so tests talk to this server over real HTTP on
127.0.0.1 instead, through the official `openai` and `anthropic` SDKs (or through atlas, which uses them).
The answers are byte-for-byte what those providers send (SSE chunk and event shapes, usage, stop reasons,
error bodies), so a test exercises the real SDK parsers rather than a simplification of them.

A test queues `Reply`s (text pieces, tool calls, reasoning, usage, or an error status/body) in ONE queue that
both formats consume in order: the request's path decides the wire format and its `stream` flag whether the
reply is streamed. Afterwards the test inspects `requests` (path, lower-case headers, JSON body, format).
A request beyond the script gets a 500 whose message says "no scripted reply left", marked
`x-should-retry: false` so the SDKs fail at once instead of retrying it: an unexpected extra call fails loudly.

`hold=True` streams what there is and then keeps the connection open until the client goes away, recording
the disconnect in `client_gone`: that is how a test observes that cancelling a step really aborted the request.
`gate=threading.Event()` holds a reply mid-stream instead, until the test sets the event: the text pieces but the
last go out, then the rest once the gate opens (a reply not streamed waits for it whole). That is how a test
catches a reply in progress (a page reloaded during it, two chats at once) and then lets it finish.
"""

from __future__ import annotations

import json
import select
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

__all__ = ["FakeModels", "Recorded", "Reply", "ToolCall", "fake_models"]

Format = Literal["openai", "anthropic"]

NO_REPLY_LEFT = "fake_models: no scripted reply left"

# The error `type` each provider puts in its error body for a status (both use these names).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


@dataclass
class ToolCall:
    """One tool call the model makes. A str `args` is sent as is (to test a model that sends bad JSON)."""

    name: str
    args: dict[str, Any] | str
    id: str | None = None


@dataclass
class Reply:
    """One scripted model answer.

    With `status` other than 200 (or `body` set) the answer is that status with `body` (JSON-encoded unless a
    str; a provider-shaped error body when None). Otherwise it is a completion: `reasoning`, then the `text`
    pieces (one stream delta each), then the `tool_calls`, then `usage` as (input, output) tokens.
    """

    text: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    reasoning: str | None = None
    usage: tuple[int, int] | None = (10, 5)
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False
    delay: float = 0.0
    model: str = "fake-model"
    gate: threading.Event | None = None


@dataclass
class Recorded:
    """One request the server received; `headers` has lower-case keys."""

    path: str
    headers: dict[str, str]
    json: Any
    format: Format


class FakeModels:
    """The server's script and its record; all access goes through a lock, as handlers run in threads."""

    def __init__(self, root_url: str) -> None:
        self.openai_url = f"{root_url}/v1"
        self.anthropic_url = root_url
        self._lock = threading.Condition()
        self._script: deque[Reply] = deque()
        self._requests: list[Recorded] = []
        self._ids = 0
        self.client_gone = threading.Event()
        self.stopping = threading.Event()

    def enqueue(self, *replies: Reply) -> None:
        """Append replies to the one queue both wire formats consume, in order."""
        with self._lock:
            self._script.extend(replies)

    @property
    def requests(self) -> list[Recorded]:
        """A copy of the requests received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        """How many scripted replies have not been consumed yet (a test can assert the script was used up)."""
        with self._lock:
            return len(self._script)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[Recorded]:
        """Block until at least `count` requests arrived (a deadline, not a sleep); raises TimeoutError past it.

        From an async test call it through `asyncio.to_thread`, so the event loop keeps running meanwhile.
        """
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"fake_models: {len(self._requests)} requests, {count} expected")
            return list(self._requests)

    def _next(self, request: Recorded) -> Reply | None:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()
            return self._script.popleft() if self._script else None

    def _new_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by both formats


# Yielded by a stream generator where a gated reply waits (never written: the handler waits on the gate there).
_GATE_MARK = b"\x00fake-models-gate\x00"


def _text_pieces(reply: Reply) -> Iterator[str | bytes]:
    """The reply's text pieces, with the gate mark before the last one when the reply has a gate."""
    for index, piece in enumerate(reply.text):
        if reply.gate is not None and index == len(reply.text) - 1:
            yield _GATE_MARK
        yield piece


def _args_text(call: ToolCall) -> str:
    return call.args if isinstance(call.args, str) else json.dumps(call.args)


def _pieces(text: str, count: int = 3) -> list[str]:
    """Split `text` into up to `count` non-empty pieces, as providers split argument JSON across deltas."""
    if len(text) <= 1:
        return [text]
    size = max(1, -(-len(text) // count))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _error_body(fmt: Format, status: int, message: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if fmt == "anthropic":
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\n".encode() + _data(payload)


# ---------------------------------------------------------------------------------------------------------------
# OpenAI Chat Completions


def _openai_usage(reply: Reply) -> dict[str, int] | None:
    if reply.usage is None:
        return None
    prompt, completion = reply.usage
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _openai_call_ids(reply: Reply, serial: int) -> list[str]:
    return [call.id or f"call_fake_{serial}_{i}" for i, call in enumerate(reply.tool_calls)]


def _openai_completion(reply: Reply, serial: int) -> dict[str, Any]:
    """The non-streamed `chat.completion` object (content is null when the model only calls tools)."""
    message: dict[str, Any] = {"role": "assistant", "content": "".join(reply.text) if reply.text else None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": call.name, "arguments": _args_text(call)}}
            for call_id, call in zip(_openai_call_ids(reply, serial), reply.tool_calls, strict=True)
        ]
    if reply.reasoning is not None:
        message["reasoning_content"] = reply.reasoning
    body: dict[str, Any] = {
        "id": f"chatcmpl-fake-{serial}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if reply.tool_calls else "stop",
            }
        ],
    }
    usage = _openai_usage(reply)
    if usage is not None:
        body["usage"] = usage
    return body


def _openai_stream(reply: Reply, serial: int, include_usage: bool) -> Iterator[bytes]:
    """The `chat.completion.chunk` events: role, reasoning, content, tool calls, finish, usage, [DONE].

    Each tool call's first delta carries its id, type and name with empty arguments; the argument JSON
    follows in several deltas that carry only the call's index, as OpenAI sends them. With `hold` the
    stream stops before the finish chunk (the caller then keeps the connection open).
    """
    base = {"id": f"chatcmpl-fake-{serial}", "object": "chat.completion.chunk", "created": int(time.time())}
    base["model"] = reply.model

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _data({**base, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    if reply.reasoning is not None:
        for piece in _pieces(reply.reasoning):
            yield chunk({"reasoning_content": piece})
    for text in _text_pieces(reply):
        yield text if isinstance(text, bytes) else chunk({"content": text})
    for index, (call_id, call) in enumerate(zip(_openai_call_ids(reply, serial), reply.tool_calls, strict=True)):
        first = {"index": index, "id": call_id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        yield chunk({"tool_calls": [first]})
        for piece in _pieces(_args_text(call)):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    if reply.hold:
        return
    yield chunk({}, "tool_calls" if reply.tool_calls else "stop")
    usage = _openai_usage(reply)
    if include_usage and usage is not None:
        yield _data({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


# ---------------------------------------------------------------------------------------------------------------
# Anthropic Messages


def _anthropic_usage(reply: Reply) -> tuple[int, int]:
    return reply.usage if reply.usage is not None else (0, 0)


def _anthropic_tool_input(call: ToolCall) -> Any:
    """A non-streamed tool_use block's `input`: the dict, or bad JSON sent as the raw string it is."""
    if not isinstance(call.args, str):
        return call.args
    try:
        return json.loads(call.args)
    except ValueError:
        return call.args


def _anthropic_blocks(reply: Reply, serial: int) -> list[dict[str, Any]]:
    """The content blocks of the answer, complete: thinking, text, then one tool_use per call."""
    blocks: list[dict[str, Any]] = []
    if reply.reasoning is not None:
        blocks.append({"type": "thinking", "thinking": reply.reasoning, "signature": f"fake-signature-{serial}"})
    if reply.text:
        blocks.append({"type": "text", "text": "".join(reply.text)})
    for i, call in enumerate(reply.tool_calls):
        call_id = call.id or f"toolu_fake_{serial}_{i}"
        blocks.append({"type": "tool_use", "id": call_id, "name": call.name, "input": _anthropic_tool_input(call)})
    return blocks


def _anthropic_message(reply: Reply, serial: int) -> dict[str, Any]:
    """The non-streamed `message` object."""
    input_tokens, output_tokens = _anthropic_usage(reply)
    return {
        "id": f"msg_fake_{serial}",
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": _anthropic_blocks(reply, serial),
        "stop_reason": "tool_use" if reply.tool_calls else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def _anthropic_block_events(index: int, block: dict[str, Any], reply: Reply) -> Iterator[bytes]:
    """content_block_start / _delta / _stop for one block, its content sent as deltas as the API does."""
    kind = block["type"]
    if kind == "thinking":
        start: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
        deltas: list[Any] = [{"type": "thinking_delta", "thinking": piece} for piece in _pieces(block["thinking"])]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif kind == "text":
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} if isinstance(piece, str) else piece
                  for piece in _text_pieces(reply)]
    else:
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        raw = block["input"] if isinstance(block["input"], str) else json.dumps(block["input"])
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in _pieces(raw)]
    yield _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
    for delta in deltas:
        if isinstance(delta, bytes):  # the gate mark
            yield delta
            continue
        yield _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
    yield _event("content_block_stop", {"type": "content_block_stop", "index": index})


def _anthropic_stream(reply: Reply, serial: int) -> Iterator[bytes]:
    """message_start (input tokens), ping, the blocks, message_delta (stop reason, output tokens), message_stop.

    With `hold` the stream stops after the blocks (the caller then keeps the connection open).
    """
    input_tokens, output_tokens = _anthropic_usage(reply)
    start = {
        **_anthropic_message(reply, serial),
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    yield _event("message_start", {"type": "message_start", "message": start})
    yield _event("ping", {"type": "ping"})
    blocks = _anthropic_blocks(reply, serial)
    # a str tool input must go out raw (bad JSON); _anthropic_blocks decoded it when it could
    for block, call in zip(blocks[len(blocks) - len(reply.tool_calls) :], reply.tool_calls, strict=True):
        if isinstance(call.args, str):
            block["input"] = call.args
    for index, block in enumerate(blocks):
        yield from _anthropic_block_events(index, block, reply)
    if reply.hold:
        return
    delta = {"stop_reason": "tool_use" if reply.tool_calls else "end_turn", "stop_sequence": None}
    yield _event("message_delta", {"type": "message_delta", "delta": delta, "usage": {"output_tokens": output_tokens}})
    yield _event("message_stop", {"type": "message_stop"})


# ---------------------------------------------------------------------------------------------------------------
# The HTTP server


def _format_of(path: str) -> Format | None:
    route = path.split("?", 1)[0].rstrip("/")
    if route.endswith("/chat/completions"):
        return "openai"
    if route.endswith("/messages"):
        return "anthropic"
    return None


def _handler(fake: FakeModels) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 with keep-alive, as real providers: an answer has a Content-Length, except a held stream, which
        # is sent without one and ends the connection (`Connection: close`), so no chunked encoding is needed
        protocol_version = "HTTP/1.1"
        # headers and body are separate writes: without TCP_NODELAY a kept-alive connection waits ~40 ms for the
        # client's delayed ACK between them (Nagle)
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", errors="replace")
            fmt = _format_of(self.path)
            if fmt is None:
                self._json(404, _error_body("openai", 404, f"fake_models: no route {self.path}"), {})
                return
            headers = {name.lower(): value for name, value in self.headers.items()}
            reply = fake._next(Recorded(self.path, headers, body, fmt))
            if reply is None:
                self._json(500, _error_body(fmt, 500, NO_REPLY_LEFT), {"x-should-retry": "false"})
                return
            if reply.delay > 0 and fake.stopping.wait(reply.delay):
                return
            if reply.status != 200 or reply.body is not None:
                error = reply.body
                if error is None:
                    error = _error_body(fmt, reply.status, f"fake_models: scripted status {reply.status}")
                self._json(reply.status, error, reply.headers)
                return
            serial = fake._new_id()
            streamed = isinstance(body, dict) and bool(body.get("stream"))
            if not streamed:
                if reply.gate is not None and not self._wait_gate(reply.gate):
                    return
                if reply.hold:  # never answer: the client is left waiting until it gives up
                    self.close_connection = True
                    self._hold()
                    return
                answer = _openai_completion(reply, serial) if fmt == "openai" else _anthropic_message(reply, serial)
                self._json(200, answer, reply.headers)
                return
            if fmt == "openai":
                options = body.get("stream_options") or {}
                events = _openai_stream(reply, serial, bool(options.get("include_usage")))
            else:
                events = _anthropic_stream(reply, serial)
            self.send_response(200)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            if not reply.hold and reply.gate is None:  # the whole stream at once, with its length: kept alive
                data = b"".join(events)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_header("Connection", "close")
            self.close_connection = True
            self.end_headers()
            try:
                for data in events:
                    if data == _GATE_MARK:
                        if not self._wait_gate(reply.gate):
                            return
                        continue
                    self.wfile.write(data)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                fake.client_gone.set()
                return
            if reply.hold:
                self._hold()

        def _json(self, status: int, payload: Any, headers: dict[str, str]) -> None:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if not isinstance(payload, str):
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _wait_gate(self, gate: threading.Event | None) -> bool:
            """Wait until the test opens the gate (True) or the server stops (False)."""
            while gate is not None and not gate.wait(0.05):
                if fake.stopping.is_set():
                    return False
            return True

        def _hold(self) -> None:
            """Keep the connection open until the client closes it (EOF on our socket) or the server stops."""
            while not fake.stopping.is_set():
                readable, _, _ = select.select([self.connection], [], [], 0.05)
                if not readable:
                    continue
                try:
                    data = self.connection.recv(1024)
                except OSError:
                    data = b""
                if not data:
                    fake.client_gone.set()
                    return

    return Handler


@contextmanager
def fake_models() -> Iterator[FakeModels]:
    """Run the fake on 127.0.0.1 on a free port in a background thread; yields it with its URLs set."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    fake = FakeModels(f"http://{host!s}:{port}")
    server.RequestHandlerClass = _handler(fake)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-models", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
