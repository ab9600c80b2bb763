"""Following runs live (spec §11): `signal trigger --wait`, `sessions follow`, `follow --correlation-id`.

The source is the daemon's SSE streams of spec §9 — `GET /api/sessions/stream?correlationId=X` (the whole tree) and
`GET /api/sessions/{id}/stream` (one session) — resumed with `Last-Event-ID` after a dropped connection. Every
daemon serves them, so the CLI reads the durable events themselves and never reconstructs them from views (a second
description of the event shapes, which had drifted from the real ones).

They feed a `Tracker` (the session views, folded with the daemon's own pure reducer) and one of three renderers:
JSON lines (`--json`), plain lines (not a TTY, or NO_COLOR), or a live Rich tree with a spinner and progress bars.
Following never changes the run: Ctrl-C only detaches (exit 130) and prints how to resume.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from atlas.cli.client import (
    EXIT_DETACHED,
    EXIT_TIMEOUT,
    Api,
    CliError,
    DaemonError,
    exit_code_for_status,
    unreachable,
)
from atlas.cli.failures import details_lines
from atlas.cli.render import (
    Output,
    compact,
    elapsed_ms,
    fmt_duration,
    local_time,
    session_label,
    short_id,
    status_text,
    waiting_text,
)
from atlas.cli.sse import parse_sse
from atlas.sessions.events import now_iso
from atlas.sessions.reducer import apply_chunk, initial_view, is_terminal, reduce, summarize

MAX_RECONNECTS = 5


class FollowTimeout(Exception):
    """The caller's --timeout passed; the run continues."""


@dataclass
class Item:
    kind: str  # "event", "chunk" or "end"
    data: Any = None


# -------------------------------------------------------------------- state


class Tracker:
    """The views of every session seen so far, keyed by sessionId. Thread-safe (the live view renders from a
    refresh thread while the main thread applies events)."""

    def __init__(self) -> None:
        self._views: dict[str, dict[str, Any]] = {}
        self._live_tools: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def apply(self, event: dict[str, Any]) -> None:
        sid = event.get("sessionId")
        if not isinstance(sid, str) or not sid:
            return
        with self._lock:
            self._views[sid] = reduce(self._views.get(sid) or initial_view(), event)

    def apply_chunk(self, message: dict[str, Any]) -> None:
        sid = message.get("sessionId")
        with self._lock:
            if isinstance(sid, str) and sid in self._views:
                self._views[sid] = apply_chunk(self._views[sid], message)
                self._fold_tool_chunk(sid, message)

    def _fold_tool_chunk(self, sid: str, message: dict[str, Any]) -> None:
        """Tool chunks are kept here, apart from the view: the reducer keeps only `progress`/`log`/`text-delta`
        chunks, and only the last 50, so a chatty step would push its tool calls out of `ephemeral`."""
        chunk = message.get("chunk")
        if not isinstance(chunk, dict) or chunk.get("type") not in TOOL_CHUNK_TYPES:
            return
        view = self._views[sid]
        if is_terminal(view.get("status")):
            return
        step = message.get("stepNumber")
        if not isinstance(step, int) or isinstance(step, bool):
            step = next((b.get("stepNumber") for b in view.get("agentBlocks") or []
                         if isinstance(b, dict) and b.get("status") == "running"), None)
            if not isinstance(step, int):
                return
        key = (sid, step)
        self._live_tools[key] = fold_tool_chunk(self._live_tools.get(key, []), chunk)

    def tool_calls(self, sid: str, block: dict[str, Any]) -> list[dict[str, Any]]:
        """The calls to show for a block: the live ones while it runs, its recorded `toolCalls` once it ended (the
        live ones, if the record has none, e.g. a step the session's cancel ended without a `step:complete`)."""
        step = block.get("stepNumber")
        with self._lock:
            live = self._live_tools.get((sid, step), []) if isinstance(step, int) else []
        recorded = block.get("toolCalls")
        if block.get("status") == "running":
            return list(live)
        if isinstance(recorded, list) and recorded:
            return [call for call in recorded if isinstance(call, dict)]
        # A call still running when its step ended never got a result: say so rather than "running".
        return [{**{k: v for k, v in c.items() if k != "running"}, "unfinished": True} if c.get("running") else c
                for c in live]

    def view(self, sid: str) -> dict[str, Any] | None:
        with self._lock:
            return self._views.get(sid)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._views)

    def tree(self) -> list[tuple[int, dict[str, Any]]]:
        """(nesting level, view) pairs, parents before their children, siblings by queue time."""
        views = self.snapshot()
        ordered = sorted(views.values(), key=lambda v: (v.get("queuedAt") or "", v.get("sessionId") or ""))
        children: dict[str, list[dict[str, Any]]] = {}
        roots = []
        for view in ordered:
            parent = view.get("parentSessionId")
            if parent and parent in views:
                children.setdefault(parent, []).append(view)
            else:
                roots.append(view)
        out: list[tuple[int, dict[str, Any]]] = []

        def walk(view: dict[str, Any], level: int) -> None:
            out.append((level, view))
            for child in children.get(view.get("sessionId") or "", []):
                walk(child, level + 1)

        for root in roots:
            walk(root, 0)
        return out


# -------------------------------------------------------------------- sources


def _loads(data: str) -> Any:
    try:
        return json.loads(data) if data else {}
    except ValueError:
        return None


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise FollowTimeout


def stream_items(api: Api, path: str, params: dict[str, Any] | None, deadline: float | None) -> Iterator[Item]:
    """Items from an SSE session stream; reconnects with Last-Event-ID when the connection drops."""
    last_id: str | None = None
    failures = 0
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else None
        read_timeout = 60.0 if deadline is None else max(0.2, min(60.0, deadline - time.monotonic()))
        got_frames = False
        try:
            with api.stream("GET", path, params=params, headers=headers, read_timeout=read_timeout) as response:
                for frame in parse_sse(response.iter_lines()):
                    got_frames = True
                    if frame.id:
                        last_id = frame.id
                    payload = _loads(frame.data)
                    if frame.event == "end":
                        yield Item("end", payload or {})
                        return
                    if not isinstance(payload, dict):
                        continue
                    if frame.event == "ephemeral":
                        yield Item("chunk", payload)
                    elif frame.event == "message":
                        yield Item("event", payload)
        except DaemonError:
            raise  # an answer (404 session_not_found, 401...), not a dropped connection
        except CliError:
            failures += 1
            if failures > MAX_RECONNECTS:
                raise
        except httpx.TimeoutException:
            _check_deadline(deadline)
        except httpx.TransportError as exc:
            failures += 1
            if failures > MAX_RECONNECTS:
                raise unreachable(api.target, exc) from None
        else:
            failures = 0 if got_frames else failures + 1
            if failures > MAX_RECONNECTS:
                raise CliError(1, "stream_closed", "the daemon kept closing the session stream")
        _check_deadline(deadline)
        time.sleep(min(2.0, 0.1 * 2 ** failures))  # reconnect backoff


# -------------------------------------------------------------------- tool calls (issue #14)

TOOL_CHUNK_TYPES = ("tool-call", "tool-result")
ARGS_CHARS = 80
RESULT_CHARS = 80
LIVE_TREE_CALLS = 6  # the live tree shows a step's last few calls, so a long loop keeps the screen readable


def fold_tool_chunk(calls: list[dict[str, Any]], chunk: dict[str, Any]) -> list[dict[str, Any]]:
    """The live calls of one step after a `tool-call` or `tool-result` chunk (a new list; `calls` is kept).

    A `tool-call` adds a call marked `running`; its `tool-result` (matched by `toolCallId`, else by the oldest
    running call of that name) sets result, error and duration. A result whose call we never saw (we attached
    in between) is added on its own, without arguments.
    """
    kind = chunk.get("type")
    fields = {k: chunk[k] for k in ("toolCallId", "toolName", "args", "server") if k in chunk}
    if kind == "tool-call":
        return [*calls, {**fields, "running": True}]
    if kind != "tool-result":
        return list(calls)
    outcome = {k: chunk[k] for k in ("durationMs", "result", "error", "server") if k in chunk}
    call_id = chunk.get("toolCallId")
    for index, call in enumerate(calls):
        same = call.get("toolCallId") == call_id if call_id is not None else \
            call.get("toolName") == chunk.get("toolName")
        if same and call.get("running"):
            done = {k: v for k, v in call.items() if k != "running"}
            return [*calls[:index], {**done, **outcome}, *calls[index + 1:]]
    return [*calls, {**fields, **outcome}]


def _call_key(call: dict[str, Any]) -> str:
    """What identifies a call across its chunks and its record: its id, else its name (ids are always set by
    atlas's loop; the name is a fallback for a record without one)."""
    return str(call.get("toolCallId") or f"name:{call.get('toolName')}")


def tool_call_line(call: dict[str, Any]) -> str:
    """`→ tool add {"a":2,"b":3} (server t)`: a call as it starts."""
    server = f" (server {call['server']})" if call.get("server") else ""
    args = compact(call["args"], ARGS_CHARS, tight=True) if "args" in call else ""
    return f"→ tool {call.get('toolName', '?')} {args}".rstrip() + server


def tool_result_line(call: dict[str, Any]) -> str:
    """`← add 12ms: 5` or `← add failed: <error>`: a call as it ends (results cut to one short line)."""
    name = call.get("toolName", "?")
    if call.get("error") is not None:
        return f"← {name} failed: {compact(call['error'], RESULT_CHARS)}"
    result = compact(call["result"], RESULT_CHARS, tight=True) if call.get("result") is not None else "(no result)"
    return f"← {name} {fmt_duration(call.get('durationMs'))}: {result}"


# -------------------------------------------------------------------- renderers


class Renderer(Protocol):
    def start(self) -> None: ...

    def event(self, event: dict[str, Any]) -> None: ...

    def chunk(self, message: dict[str, Any]) -> None: ...

    def stop(self, done: bool) -> None: ...


class JsonLines:
    """One JSON line per durable event (chunks are live-only and left out)."""

    def __init__(self, out: Output) -> None:
        self.out = out

    def start(self) -> None:
        pass

    def event(self, event: dict[str, Any]) -> None:
        self.out.emit_json(event)

    def chunk(self, message: dict[str, Any]) -> None:
        pass

    def stop(self, done: bool) -> None:
        pass


def _block(view: dict[str, Any] | None, step: Any) -> dict[str, Any]:
    for block in (view or {}).get("agentBlocks") or []:
        if block.get("stepNumber") == step:
            return dict(block)
    return {}


def describe(event: dict[str, Any], view: dict[str, Any] | None) -> str | None:
    """One human line for a durable event."""
    kind = event.get("type")
    if kind == "session:queued":
        text = "queued"
        if event.get("parentSessionId"):
            text += f" (child of {short_id(event['parentSessionId'])}, depth {event.get('depth', '?')})"
        if event.get("payload"):
            text += f" payload {compact(event['payload'], 80)}"
        return text
    if kind == "session:waiting":
        return waiting_text(event.get("waitingFor"), short=True)
    if kind == "session:start":
        return "started"
    if kind == "step:start":
        return f"step {event.get('stepNumber')} {event.get('agentName')} ({event.get('actionType', 'agent')}) started"
    if kind == "step:complete":
        block = _block(view, event.get("stepNumber"))
        text = (f"step {event.get('stepNumber')} {block.get('agentName', '?')} {event.get('status')} "
                f"in {fmt_duration(event.get('durationMs'))}")
        calls = event.get("toolCalls")
        if isinstance(calls, list) and calls:
            text += f", {len(calls)} tool call{'s' if len(calls) != 1 else ''}"
        if event.get("status") == "failed":
            text += f": {event.get('errorCode') or 'error'}: {event.get('error') or ''}".rstrip()
        if event.get("childSessionId"):
            output = event.get("output")
            child_status = output.get("status") if isinstance(output, dict) else None
            text += f" → child {short_id(event['childSessionId'])}" + (f" {child_status}" if child_status else "")
        elif event.get("output") is not None and event.get("status") != "failed":
            text += f" → {compact(event['output'], 100)}"
        return text
    if kind == "step:skipped":
        return f"step {event.get('agentName') or event.get('stateId')} skipped"
    if kind == "session:summary":
        return f"summary: {compact(event.get('summary', ''), 120)}"
    if kind == "session:complete":
        text = f"{event.get('status')} in {fmt_duration(event.get('durationMs'))}"
        if event.get("errorCode") or event.get("error"):
            text += f": {event.get('errorCode') or 'error'}: {event.get('error') or ''}".rstrip()
        return text
    return None


def describe_chunk(message: dict[str, Any]) -> str | None:
    chunk = message.get("chunk") or {}
    step = message.get("stepNumber")
    where = f"step {step} " if step is not None else ""
    if chunk.get("type") == "progress":
        amount = f"{chunk['current']}/{chunk['total']}" if chunk.get("total") is not None and \
            chunk.get("current") is not None else ""
        note = str(chunk.get("message") or "")
        return f"{where}progress {amount if note in ('', amount) else f'{amount} {note}'}".rstrip()
    if chunk.get("type") == "log":
        return f"{where}{chunk.get('stream', 'stdout')}: {chunk.get('line', '')}"
    if chunk.get("type") == "tool-call":
        return f"{where}{tool_call_line(chunk)}"
    if chunk.get("type") == "tool-result":
        return f"{where}{tool_result_line(chunk)}"
    return None


class Lines:
    """Plain output: one timestamped line per event, indented by tree depth."""

    def __init__(self, out: Output, tracker: Tracker) -> None:
        self.out = out
        self.tracker = tracker
        self.base_depth: int | None = None  # the depth of the first session seen (the root of what we follow)
        self.printed_calls: set[tuple[str, str]] = set()  # (sessionId, call key) whose result was printed live

    def start(self) -> None:
        pass

    def _line(self, sid: str, timestamp: Any, text: str) -> None:
        view = self.tracker.view(sid) or {}
        raw_depth = view.get("depth")
        depth = raw_depth if isinstance(raw_depth, int) else 0
        if self.base_depth is None:
            self.base_depth = depth
        level = max(0, depth - self.base_depth)
        self.out.print(f"{local_time(timestamp or now_iso())}  {short_id(sid)}  "
                       f"{'  ' * level}{session_label(view)}  {text}")

    def event(self, event: dict[str, Any]) -> None:
        sid = event.get("sessionId") or ""
        if event.get("type") == "step:complete":
            self._recorded_calls(sid, event)
        text = describe(event, self.tracker.view(sid))
        if text:
            self._line(sid, event.get("timestamp"), text)
        details = event.get("errorDetails")
        if event.get("type") == "step:complete" and isinstance(details, dict):
            # Why the step failed, under its line (issue #16): what `atlas sessions show` prints in its Failure part.
            for line, _ in details_lines(details, "  "):
                self._line(sid, event.get("timestamp"), line)

    def _recorded_calls(self, sid: str, event: dict[str, Any]) -> None:
        """The step's recorded calls that were not printed live (chunks are best effort and never replayed, so
        following a finished run, or attaching mid-step, still shows every call), before the step's own line."""
        calls = event.get("toolCalls")
        where = f"step {event.get('stepNumber')} "
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict) and (sid, _call_key(call)) not in self.printed_calls:
                self._line(sid, event.get("timestamp"), where + tool_call_line(call))
                self._line(sid, event.get("timestamp"), where + tool_result_line(call))

    def chunk(self, message: dict[str, Any]) -> None:
        text = describe_chunk(message)
        if text:
            self._line(message.get("sessionId") or "", None, text)
        chunk = message.get("chunk")
        if isinstance(chunk, dict) and chunk.get("type") == "tool-result":
            self.printed_calls.add((message.get("sessionId") or "", _call_key(chunk)))

    def stop(self, done: bool) -> None:
        pass


class LiveTree:
    """The rich view: a spinner headline and the tree of sessions with their steps, redrawn live."""

    def __init__(self, out: Output, tracker: Tracker, title: str) -> None:
        self.out = out
        self.tracker = tracker
        self.title = title
        self.done = False
        self.started = time.monotonic()
        self.spinner = Spinner("dots", style="cyan")
        self.live = Live(self, console=out.console, refresh_per_second=10, transient=False,
                         redirect_stdout=False, redirect_stderr=False)

    def start(self) -> None:
        self.live.start()

    def event(self, event: dict[str, Any]) -> None:
        self.live.refresh()

    def chunk(self, message: dict[str, Any]) -> None:
        pass  # the next auto refresh shows it

    def stop(self, done: bool) -> None:
        self.done = True  # the last frame stays on screen, without the spinner
        self.live.refresh()
        self.live.stop()

    def __rich__(self) -> RenderableType:
        tree = self.tracker.tree()
        active = sum(1 for _, v in tree if not is_terminal(v.get("status")))
        headline = Text.assemble((self.title, "bold"), (f"  {len(tree)} session{'s' if len(tree) != 1 else ''}"
                                                         f", {active} in progress  ", "dim"),
                                 (fmt_duration((time.monotonic() - self.started) * 1000), "dim"))
        if self.done:
            top: RenderableType = headline
        else:
            spin = Table.grid(padding=(0, 1))
            spin.add_row(self.spinner, headline)
            top = spin
        root = Tree("", hide_root=True, guide_style="dim")
        nodes: dict[str, Tree] = {}
        for _, view in tree:
            parent = nodes.get(view.get("parentSessionId") or "", root)
            node = parent.add(self._session_label(view))
            for block in view.get("agentBlocks") or []:
                block_node = node.add(self._block_label(block))
                self._add_calls(block_node, self.tracker.tool_calls(view.get("sessionId") or "", block))
            nodes[view.get("sessionId") or ""] = node
        return Group(top, root)

    @staticmethod
    def _add_calls(node: Tree, calls: list[dict[str, Any]]) -> None:
        """A step's tool calls under it: the last few, one line each (`add {"a":2,"b":3} · t  12ms: 5`)."""
        if len(calls) > LIVE_TREE_CALLS:
            node.add(Text(f"… {len(calls) - LIVE_TREE_CALLS} earlier tool calls", style="dim"))
        for call in calls[-LIVE_TREE_CALLS:]:
            text = Text.assemble(("tool ", "dim"), (str(call.get("toolName", "?")), "bold"))
            if "args" in call:
                text.append(f" {compact(call['args'], ARGS_CHARS, tight=True)}")
            if call.get("server"):
                text.append(f" · {call['server']}", style="dim")
            if call.get("running"):
                text.append("  running…", style="bold blue")
            elif call.get("unfinished"):
                text.append("  no result (the step ended first)", style="yellow")
            elif call.get("error") is not None:
                text.append(f"  failed: {compact(call['error'], RESULT_CHARS)}", style="red")
            else:
                text.append(f"  {fmt_duration(call.get('durationMs'))}", style="dim")
                if call.get("result") is not None:
                    text.append(f": {compact(call['result'], RESULT_CHARS, tight=True)}")
            node.add(text)

    def _session_label(self, view: dict[str, Any]) -> RenderableType:
        status = view.get("status") or "queued"
        text = Text.assemble(status_text(status), "  ", (session_label(view), "bold"), "  ",
                             (short_id(view.get("sessionId")), "dim"), "  ",
                             (fmt_duration(elapsed_ms(view)), "dim"))
        if view.get("error"):
            text.append(f"  {view.get('errorCode') or 'error'}: {compact(view['error'], 100)}", style="red")
        return text

    def _block_label(self, block: dict[str, Any]) -> RenderableType:
        status = block.get("status") or "pending"
        step = block.get("stepNumber")
        text = Text.assemble(status_text(status), "  ", f"{step}. " if step is not None else "",
                             block.get("agentName") or "?", (f" ({block.get('actionType', 'agent')})", "dim"))
        if block.get("durationMs") is not None:
            text.append(f"  {fmt_duration(block['durationMs'])}", style="dim")
        elif status == "running" and block.get("startedAt"):
            text.append(f"  {fmt_duration(elapsed_ms({'startedAt': block['startedAt']}))}", style="dim")
        if status == "failed" and (block.get("error") or block.get("errorCode")):
            text.append(f"  {block.get('errorCode') or 'error'}: {compact(block.get('error') or '', 100)}",
                        style="red")
        if block.get("childSessionId"):
            text.append(f"  → child {short_id(block['childSessionId'])}", style="dim")
        elif status == "completed" and block.get("output") is not None:
            text.append(f"  → {compact(block['output'], 60)}", style="dim")
        if status == "failed" and isinstance(block.get("errorDetails"), dict):
            # The stderr tail, or the traceback's innermost frame and exception, under the step, as `atlas sessions
            # show` prints them (the plain view and `sessions show` print the whole traceback).
            return Group(text, *(Text(line, style=style) for line, style in
                                 details_lines(block["errorDetails"], "", innermost=True)))
        if status != "running":
            return text
        progress = [c for c in block.get("ephemeral") or [] if c.get("type") == "progress"]
        logs = [c for c in block.get("ephemeral") or [] if c.get("type") == "log"]
        extra: list[RenderableType] = []
        if progress:
            last = progress[-1]
            if isinstance(last.get("total"), int | float) and isinstance(last.get("current"), int | float) \
                    and last["total"] > 0:
                row = Table.grid(padding=(0, 1))
                amount = f"{last['current']}/{last['total']}"
                message = str(last.get("message") or "")
                row.add_row(ProgressBar(total=float(last["total"]), completed=float(last["current"]), width=30),
                            Text(amount if message in ("", amount) else f"{amount} {message}"))
                extra.append(row)
            elif last.get("message"):
                extra.append(Text(str(last["message"]), style="cyan"))
        if logs:
            last_line = str(logs[-1].get("line", "")).rsplit("\n", 1)[-1]  # a chunk may carry many lines
            extra.append(Text(f"{logs[-1].get('stream', 'stdout')}: {last_line}", style="dim"))
        return Group(text, *extra) if extra else text


# -------------------------------------------------------------------- the follow loop


def make_renderer(out: Output, tracker: Tracker, title: str) -> Renderer:
    if out.json:
        return JsonLines(out)
    if out.rich:
        return LiveTree(out, tracker, title)
    return Lines(out, tracker)


def final_line(out: Output, summary: dict[str, Any], tracker: Tracker) -> None:
    """The last human line: status, job, id, duration, error, and the tree's tally when it has several sessions."""
    status = summary.get("status") or "?"
    parts: list[str | Text] = [status_text(status, out.rich), "  ",
                               f"{session_label(summary)} ({short_id(summary.get('sessionId'))})",
                               f" in {fmt_duration(summary.get('durationMs'))}"]
    if summary.get("error") or summary.get("errorCode"):
        parts.append(f": {summary.get('errorCode') or 'error'}: {summary.get('error') or ''}".rstrip())
    views = [v for _, v in tracker.tree()]
    if len(views) > 1:
        tally: dict[str, int] = {}
        for view in views:
            tally[view.get("status") or "?"] = tally.get(view.get("status") or "?", 0) + 1
        parts.append(f"; tree: {len(views)} sessions (" + ", ".join(f"{n} {s}" for s, n in sorted(tally.items()))
                     + ")")
    out.print(*parts)


def final_summary(api: Api, tracker: Tracker, session_id: str, correlation_id: str | None) -> dict[str, Any]:
    """The session's SessionSummary as the API lists it; the tracker's fold when the list cannot be read."""
    if correlation_id:
        try:
            for summary in api.list_sessions(correlationId=correlation_id):
                if summary["sessionId"] == session_id and is_terminal(summary.get("status")):
                    return dict(summary)
        except CliError:
            pass
    view = tracker.view(session_id)
    if view is None:
        view = api.get(f"/api/sessions/{session_id}")
    return summarize(view)


@contextlib.contextmanager
def _watchdog(timeout_s: float | None) -> Iterator[None]:
    """Raise FollowTimeout in the main thread after `timeout_s`, even in the middle of a blocking read (a stream's
    keep-alives would otherwise keep resetting any read timeout)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not timeout_s or not usable:
        yield
        return

    def fire(_signum: int, _frame: Any) -> None:
        raise FollowTimeout

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def follow_run(api: Api, out: Output, *, session_id: str, correlation_id: str, tree: bool,
               header: dict[str, Any] | None, resume_hint: str, timeout_s: float | None = None) -> int:
    """Follow one session (tree=False) or its whole correlation tree until it ends; returns the exit code of
    `session_id`'s final status. Ctrl-C detaches (exit 130) and prints `resume_hint`."""
    tracker = Tracker()
    title = f"correlation {short_id(correlation_id)}" if tree else f"session {short_id(session_id)}"
    renderer = make_renderer(out, tracker, f"Following {title}")
    deadline = time.monotonic() + timeout_s if timeout_s else None
    if out.json and header is not None:
        out.emit_json(header)

    def handle(item: Item) -> bool:
        if item.kind == "event":
            tracker.apply(item.data)
            renderer.event(item.data)
        elif item.kind == "chunk":
            tracker.apply_chunk(item.data)
            renderer.chunk(item.data)
        elif item.kind == "end":
            return True
        _check_deadline(deadline)
        return False

    renderer.start()
    try:
        with _watchdog(timeout_s):
            if tree:
                source = stream_items(api, "/api/sessions/stream", {"correlationId": correlation_id}, deadline)
            else:
                source = stream_items(api, f"/api/sessions/{session_id}/stream", None, deadline)
            for item in source:
                if handle(item):
                    break
    except KeyboardInterrupt:
        renderer.stop(False)
        out.note(f"Detached: the run keeps going (nothing was cancelled). Resume with: {resume_hint}",
                 style="yellow")
        raise typer.Exit(EXIT_DETACHED) from None
    except FollowTimeout:
        renderer.stop(False)
        raise CliError(EXIT_TIMEOUT, "wait_timeout",
                       f"still running after {fmt_duration((timeout_s or 0) * 1000)}; the run continues",
                       hint=f"resume with: {resume_hint}") from None
    except CliError as err:
        renderer.stop(False)
        if err.code == "daemon_unreachable":
            err.hint = f"the daemon went away while following; once it is back, resume with: {resume_hint}"
        raise
    except BaseException:
        renderer.stop(False)
        raise
    renderer.stop(True)
    summary = final_summary(api, tracker, session_id, correlation_id)
    if out.json:
        out.emit_json(summary)
    else:
        final_line(out, summary, tracker)
    return exit_code_for_status(summary.get("status") or "")
