"""`POST /api/workspaces/{ws}/signals/{sig}` in its four modes (spec §5): nowait, sync, SSE and webhook.

Every check of §5.3 runs before anything is created, in the documented order; the Idempotency-Key is reserved
last, so a rejected request never burns it. Sync and SSE callers that go away cancel their session (§5.4).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from atlas.api.body import parse_trigger_body
from atlas.api.errors import error_body
from atlas.api.responses import json_response, read_body
from atlas.api.state import daemon_of, streams_of
from atlas.api.streams import Feed, LogCursor
from atlas.config.durations import parse_duration
from atlas.config.model import HttpSignal
from atlas.errors import AtlasError
from atlas.jsoncodec import dumps, loads
from atlas.runtime.accept import Accepted, TriggerRequest
from atlas.runtime.idempotency import Reservation
from atlas.runtime.workspaces import Workspace
from atlas.sessions.reducer import is_terminal

if TYPE_CHECKING:
    from atlas.runtime.daemon import Daemon

TRIGGER_PATH = "/api/workspaces/{workspace_id}/signals/{signal_id}"
TRUE_VALUES = {"true", "1", "yes"}
FALSE_VALUES = {"false", "0", "no"}
FINAL_VIEW_WAIT_S = 30.0


def _nowait(raw: str | None) -> bool:
    if raw is None or raw.lower() in FALSE_VALUES:
        return False
    if raw.lower() in TRUE_VALUES:
        return True
    raise AtlasError("invalid_query", f"Invalid value for nowait: {raw!r}",
                     [{"path": "nowait", "message": "expected true, false, 1, 0, yes or no"}])


def _nowait_param(request: Request) -> str | None:
    """`?nowait=…` without building Starlette's QueryParams for the common one-plain-parameter query (a few percent
    of a trigger's CPU); anything with several parameters or escapes takes the general parser."""
    raw: bytes = request.scope.get("query_string", b"")
    if not raw:
        return None
    if b"&" in raw or b"%" in raw or b"+" in raw or b";" in raw:
        return request.query_params.get("nowait")
    key, _, value = raw.partition(b"=")
    return value.decode("latin-1") if key == b"nowait" else None


CLIENT_HEADER = "x-atlas-client"
CLIENT_TRIGGERS = frozenset({"ui", "cli"})
"""The only `X-Atlas-Client` values a trigger records as its source; any other (or none) stays `http`, so a caller
cannot label its run with a source that means something else (`schedule`, `cascade`, `rerun`)."""


def client_trigger(request: Request) -> str:
    """`ui` or `cli` when the web UI or the CLI says so in `X-Atlas-Client`, else `http` (issue #16): a run started
    from the UI is then told apart from any curl call, in the view, the runs list and its filter."""
    client = request.headers.get(CLIENT_HEADER, "").strip().lower()
    return client if client in CLIENT_TRIGGERS else "http"


def accepted_body(ws_id: str, signal_id: str, accepted_sid: str, correlation_id: str, webhook: bool) -> dict[str, Any]:
    return {
        "message": "Webhook accepted" if webhook else "Signal accepted",
        "status": "accepted",
        "workspaceId": ws_id,
        "signalId": signal_id,
        "correlationId": correlation_id,
        "sessionId": accepted_sid,
    }


def wait_limit(ws: Workspace, signal_id: str, job_id: str) -> float:
    """The signal's `config.timeout`, else the job timeout plus 60 s of queueing allowance (spec §5.4)."""
    signal = ws.config.signals[signal_id]
    if isinstance(signal, HttpSignal) and signal.config.timeout is not None:
        return parse_duration(signal.config.timeout)
    job = ws.job(job_id)
    return parse_duration(job.config.timeout or ws.config.workspace.timeout.maxTotalTimeout) + 60


def sync_answer(view: dict[str, Any], workspace_id: str, signal_id: str,
                headers: dict[str, str] | None = None) -> Response:
    status = view["status"]
    if status == "completed":
        return json_response({
            "message": "Signal completed",
            "status": "completed",
            "workspaceId": workspace_id,
            "signalId": signal_id,
            "sessionId": view["sessionId"],
            "correlationId": view["correlationId"],
            "output": view.get("results") or {},
            "artifactIds": [],
            "summary": (view.get("aiSummary") or {}).get("summary", ""),
        }, headers=headers)
    raise failure_error(view)


def failure_error(view: dict[str, Any]) -> AtlasError:
    status = view["status"]
    details = {k: view.get(k) for k in ("sessionId", "correlationId", "status", "errorCode", "error")}
    if view.get("errorCode") == "skipped-duplicate":
        if view.get("duplicateOf"):
            details["runningSessionId"] = view["duplicateOf"]  # the session that made it skip (issue #16)
        return AtlasError("skipped-duplicate", view.get("error") or "Skipped: a session is already running",
                          details)
    code = {"cancelled": "session_cancelled", "skipped": "session_skipped"}.get(status, "session_failed")
    return AtlasError(code, f"Session ended {status}" + (f": {view['error']}" if view.get("error") else ""),
                      details)


def _check_skip_states(ws: Workspace, job_id: str, skip_states: list[str] | None) -> None:
    """400 `invalid_body` for a `skipStates` id that is no state of the job's FSM (the reference only logs it; a
    typo that silently runs a step the caller meant to skip is worse than a refusal)."""
    states = ws.fsms[job_id].states
    unknown = [(i, s) for i, s in enumerate(skip_states or []) if s not in states]
    if unknown:
        raise AtlasError("invalid_body", f"skipStates names unknown state(s) of job '{job_id}': "
                         + ", ".join(repr(s) for _, s in unknown),
                         [{"path": f"skipStates[{i}]", "message": f"unknown state '{s}'"} for i, s in unknown])


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body was already read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def trigger(request: Request) -> Response:
    """`POST /api/workspaces/{workspace_id}/signals/{signal_id}`: the checks of §5.3 in order, then one of the
    four modes. First in the route table, a plain Starlette route: the hottest endpoint skips the match attempts
    of every other route.

    A refusal before the accept pipeline (unknown workspace, bad body, invalid payload...) is counted here
    (`atlas_triggers_total{outcome="refused"}`); from the accept on, the pipeline counts (every trigger passes it),
    and what fails after it (a sync wait's failed session) is an accepted trigger's answer, not a refusal."""
    try:
        return await _trigger(request)
    except AtlasError as exc:
        if not request.scope.get(_ACCEPTING):
            daemon_of(request).metrics.trigger_refused(exc.code)
        raise


#: Scope key set once the route hands the trigger to the accept pipeline (which counts it from there).
_ACCEPTING = "atlas.accepting"


async def _trigger(request: Request) -> Response:
    daemon = daemon_of(request)
    idem = daemon.idempotency
    workspace_id: str = request.path_params["workspace_id"]
    signal_id: str = request.path_params["signal_id"]
    ws, job_id = daemon.accept.resolve(workspace_id, signal_id)
    nowait = _nowait(_nowait_param(request))
    raw = await read_body(request, daemon.settings.max_body)
    parsed = parse_trigger_body(raw, request.headers)
    sse = "text/event-stream" in request.headers.get("accept", "")
    signal = ws.config.signals[signal_id]
    if parsed.webhook is not None and (signal.provider != "http" or sse):
        raise AtlasError("envelope_required",
                         f"Signal '{signal_id}' ({signal.provider}) accepts only the envelope body here")
    _check_skip_states(ws, job_id, parsed.skip_states)
    req = TriggerRequest(
        workspace_id=ws.id,
        signal_id=signal_id,
        payload=parsed.payload,
        trigger="webhook" if parsed.webhook is not None else client_trigger(request),
        parent_session_id=parsed.parent_session_id,
        stream_id=parsed.stream_id,
        webhook=parsed.webhook,
        skip_states=parsed.skip_states,
    )
    validated = daemon.accept.validate(req)
    key = request.headers.get("idempotency-key")
    reservation: Reservation | None = None
    replay_headers: dict[str, str] | None = None
    if key is not None:
        reservation = await idem.reserve(ws.id, signal_id, key, raw)
    if reservation is not None and reservation.replay is not None:
        rec = reservation.replay
        accepted = Accepted(rec["sessionId"], rec["correlationId"], ws.id, signal_id, job_id, rec["status"])
        replay_headers = {"Idempotent-Replayed": "true"}
    else:
        request.scope[_ACCEPTING] = True
        try:
            accepted = await daemon.accept.accept(req, validated)
        except BaseException:
            if reservation is not None:
                with contextlib.suppress(Exception):
                    await idem.release(reservation)
            raise
        if reservation is not None:
            await idem.accepted(reservation, {
                "sessionId": accepted.session_id, "correlationId": accepted.correlation_id,
                "status": "accepted", "location": f"/api/sessions/{accepted.session_id}",
                "body": accepted_body(ws.id, signal_id, accepted.session_id, accepted.correlation_id,
                                      parsed.webhook is not None),
            })
    if parsed.webhook is not None or (nowait and not sse):
        body = accepted_body(ws.id, signal_id, accepted.session_id, accepted.correlation_id,
                             parsed.webhook is not None)
        headers = {"Location": f"/api/sessions/{accepted.session_id}", **(replay_headers or {})}
        return json_response(body, 202, headers)
    if sse:
        return StreamingResponse(
            _sse(daemon, request, accepted, ws.id, signal_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(replay_headers or {})},
        )
    return await _sync(daemon, request, accepted, ws, signal_id, job_id, replay_headers)


async def _sync(daemon: Daemon, request: Request, accepted: Accepted, ws: Workspace, signal_id: str, job_id: str,
                headers: dict[str, str] | None) -> Response:
    waiter = asyncio.ensure_future(daemon.store.wait_terminal(accepted.session_id, wait_limit(ws, signal_id, job_id)))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait([waiter, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not waiter.done():
        waiter.cancel()
        await daemon.cancel_tree(accepted.session_id, "client_disconnected", "The waiting client disconnected")
        return Response(status_code=499)
    try:
        view = waiter.result()
    except TimeoutError:
        raise AtlasError("wait_timeout", "The session did not finish in time; it keeps running",
                         {"sessionId": accepted.session_id, "correlationId": accepted.correlation_id}) from None
    return sync_answer(view, ws.id, signal_id, headers)


def _frame(kind: str, data: Any) -> bytes:
    payload = data if kind == "" else {"type": kind, "data": data}
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _raw_frame(kind: bytes, data: bytes) -> bytes:
    """A frame around JSON that is already encoded (an event as the log stores it, a chunk as published)."""
    return b'data: {"type":"' + kind + b'","data":' + data + b"}\n\n"


def _one_line_json(raw: bytes) -> bytes | None:
    """`raw` if it is JSON on one line (what a frame needs), re-encoded if it spans lines, None if not JSON."""
    try:
        parsed = loads(raw)
    except ValueError:
        return None
    return dumps(parsed) if b"\n" in raw or b"\r" in raw else raw


async def _final_view(daemon: Daemon, sid: str) -> dict[str, Any]:
    """The session's terminal view once its `session:complete` was sent.

    The log is ahead of the store (the writer appends before it applies; the materialiser applies what the log
    holds), so an end read from the log may not be folded in yet: wait for it, and rebuild from the log if the
    store never gets there."""
    view = daemon.store.view(sid)
    if view is not None and is_terminal(view.get("status", "")):
        return view
    try:
        return await daemon.store.wait_terminal(sid, FINAL_VIEW_WAIT_S)
    except TimeoutError:
        rebuilt = await daemon.rebuild_view(sid)
        return rebuilt if rebuilt is not None else (daemon.store.view(sid) or {})


async def _sse(daemon: Daemon, request: Request, accepted: Accepted, ws_id: str,
               signal_id: str) -> AsyncIterator[bytes]:
    """SSE mode (spec §5.4): accepted → start → every durable event and chunk → finish → result → [DONE].

    Live events and chunks reach the generator through a bounded `Feed` (the per-session stream's hand-off,
    see `atlas.api.streams` "Slow clients"): a client that does not read blocks the generator in `yield`, and
    the callbacks must not pile up without bound meanwhile. On overflow chunks are dropped (live-only, §3.3)
    while durable events are not: the feed marks the stream for a resync and the generator re-reads the log
    after the last event it read there, skipping what it already sent. So however slow the reader, it gets
    every durable event once and in order, and the stream always ends with the result and `[DONE]`.
    """
    sid = accepted.session_id
    hub = streams_of(request)
    cfg = hub.settings
    feed = Feed(hub)

    def on_event(event: dict[str, Any]) -> None:
        if event.get("sessionId") == sid:
            feed.put_event(event)

    async def on_chunk(_: str, raw: bytes) -> None:
        data = _one_line_json(raw)
        if data is not None:
            feed.put_chunk(data)

    daemon.store.add_listener(on_event)
    watching = contextlib.AsyncExitStack()  # another daemon may run it (shared read model): its events, too
    await watching.enter_async_context(daemon.store.watching(sid))
    sub = await daemon.session_log.follow_chunks(sid, on_chunk, backlog=cfg.chunk_backlog)
    cursor = LogCursor(sid)
    last = 0  # the seq of the last durable event sent
    done = False  # session:complete was sent (it is always the last event, spec §3.2)
    finished = False

    def event_frames(event: dict[str, Any], data: bytes) -> bytes:
        nonlocal last, done
        last = event["seq"]
        done = event.get("type") == "session:complete"
        frame = _raw_frame(b"data-session-event", data)
        if event.get("type") == "session:start":
            return _frame("data-session-start", {"sessionId": sid}) + frame
        return frame

    async def from_log() -> AsyncIterator[bytes]:
        """Every event after the cursor that was not sent yet, one write per page, up to the end of the log."""
        while not done:
            batch, at_end = await cursor.read(daemon, cfg.read_page, cfg.page_bytes)
            frames = []
            for _, data, event in batch:
                seq = event.get("seq")
                if isinstance(seq, int) and seq > last:
                    frames.append(event_frames(event, data))
            if frames:
                yield b"".join(frames)
            if at_end:
                return

    try:
        yield _frame("data-session-accepted", {"workspaceId": ws_id, "signalId": signal_id, "sessionId": sid,
                                               "correlationId": accepted.correlation_id})
        async for frame in from_log():
            yield frame
        while not done:
            if last == 0 and is_terminal((daemon.store.view(sid) or {}).get("status", "")):
                break  # an old session (an idempotent replay) whose events passed retention: answer from the view
            if not await feed.wait(cfg.keepalive_s):
                if is_terminal((daemon.store.view(sid) or {}).get("status", "")):
                    feed.resync = True  # a quiet end: make sure nothing was missed, from the log
                continue
            if feed.resync:
                feed.resync = False
                async for frame in from_log():
                    yield frame
                continue
            while feed.items and not feed.resync and not done:
                kind, item = feed.items.popleft()
                if kind == "chunk":
                    yield _raw_frame(b"data-ephemeral", item)
                    continue
                seq = item.get("seq")
                if not isinstance(seq, int) or seq <= last:
                    continue  # already sent from the log
                if seq != last + 1:
                    feed.resync = True  # a gap: the log has the missing events
                    break
                yield event_frames(item, dumps(item))
        view = await _final_view(daemon, sid)
        yield _frame("data-session-finish", {"sessionId": sid, "workspaceId": ws_id, "status": view.get("status")})
        if view.get("status") == "completed":
            yield _frame("job-complete", {
                "success": True, "sessionId": sid, "correlationId": accepted.correlation_id, "status": "completed",
                "output": view.get("results") or {}, "artifactIds": [],
                "summary": (view.get("aiSummary") or {}).get("summary", ""),
            })
        else:
            err = failure_error(view)
            yield _frame("job-error", error_body(err.code, err.message, err.details))
        yield b"data: [DONE]\n\n"
        finished = True
    finally:
        daemon.store.remove_listener(on_event)
        feed.close()
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):  # the request may be cancelled
            await watching.aclose()
        if not finished:
            await asyncio.shield(daemon.cancel_tree(sid, "client_disconnected", "The streaming client disconnected"))
