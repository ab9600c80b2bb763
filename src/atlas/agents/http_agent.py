"""`type: http` agents: one HTTP request with templated url, headers and JSON body (spec §2.5).

Only `http`/`https` URLs are allowed, so a template cannot turn the agent into a `file://` reader. The
response body is read as a stream and capped, so a huge download cannot exhaust the daemon's memory.

Each request writes one diagnostic line to the step's log (issue #16, item 1: http diagnostics are kept with the
run): `METHOD URL → STATUS in N ms` on `stdout`, or on `stderr` for an error status or a failed request, with the
error. Only the method, the URL (without user info; `secret()` values in it are redacted by the step log like any
text) and the outcome: never headers or bodies, which may hold credentials or personal data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from atlas.agents.base import AgentContext, StepError
from atlas.config.durations import parse_duration
from atlas.config.model import HttpAgentConfig
from atlas.observability import tracing
from atlas.templating import Templater

__all__ = ["MAX_JSON_BYTES", "MAX_TEXT_BYTES", "run_http"]

MAX_TEXT_BYTES = 1024 * 1024
#: A JSON body is parsed whole, so it may be larger than a text one; beyond this it is kept as capped text.
MAX_JSON_BYTES = 16 * 1024 * 1024
_ALLOWED_SCHEMES = ("http", "https")


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _shown(url: httpx.URL) -> httpx.URL:
    """The URL as errors and the step log show it: a password in `user:pass@` is never a `secret()` to redact."""
    return url.copy_with(userinfo=b"") if url.userinfo else url


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _url(rendered: Any) -> httpx.URL:
    if not isinstance(rendered, str):
        raise StepError("http_error", f"url must render to a string, got {type(rendered).__name__}")
    try:
        url = httpx.URL(rendered)
    except httpx.InvalidURL as exc:
        raise StepError("http_error", f"invalid url: {exc}") from exc
    if url.scheme not in _ALLOWED_SCHEMES or not url.host:
        raise StepError("http_error", "url must be an absolute http:// or https:// URL")
    return url


async def _read_body(response: httpx.Response) -> tuple[Any, bool]:
    """Return (body, truncated): parsed JSON for a JSON response, else text capped at MAX_TEXT_BYTES."""
    is_json = _is_json(response.headers.get("content-type", ""))
    limit = MAX_JSON_BYTES if is_json else MAX_TEXT_BYTES
    data = bytearray()
    overflow = False
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > limit:
            overflow = True
            break
    if is_json and not overflow and data:
        try:
            return json.loads(data), False
        except ValueError:
            pass  # a server that lies about its content type: keep the text
    truncated = len(data) > MAX_TEXT_BYTES
    text = bytes(data[:MAX_TEXT_BYTES]).decode(response.encoding or "utf-8", errors="replace")
    return text, truncated or overflow


async def run_http(
    config: HttpAgentConfig, ctx: AgentContext, templater: Templater, variables: Mapping[str, Any]
) -> dict[str, Any]:
    """Send the request; return `{status, headers, body}` or raise `http_error` / `http_status`."""
    # Rendered on the template threads: a payload-driven template must not stall the loop (bug 11).
    url = _url(await templater.render_async(config.url, variables))
    headers = {
        name: value if isinstance(value, str) else json.dumps(value)
        for name, value in (await templater.render_async(dict(config.headers), variables)).items()
    }
    if tracing.active() is not None and not any(name.lower() == "traceparent" for name in headers):
        traceparent = tracing.current_traceparent()  # the step's span: the service joins the run's trace
        if traceparent is not None:
            headers["traceparent"] = traceparent
    body = await templater.render_async(config.json_, variables) if config.json_ is not None else None
    timeout = parse_duration(config.timeout)
    request_args: dict[str, Any] = {"headers": headers}
    if body is not None:
        request_args["json"] = body
    shown = f"{config.method} {_shown(url)}"
    started = time.monotonic()
    try:
        async with (
            httpx.AsyncClient(timeout=timeout) as client,
            client.stream(config.method, url, **request_args) as response,
        ):
            parsed, truncated = await _read_body(response)
    except httpx.TimeoutException as exc:
        raise _failed(ctx, shown, started, f"timed out after {config.timeout}") from exc
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
        raise _failed(ctx, shown, started, f"{type(exc).__name__}: {exc}") from exc
    except (TypeError, ValueError) as exc:  # e.g. a header value that is not latin-1, a body that is not JSON
        raise _failed(ctx, shown, started, f"invalid request: {exc}") from exc
    failed = response.status_code >= 400
    ctx.emit_log("stderr" if failed else "stdout",
                 f"{shown} → {response.status_code} in {_elapsed_ms(started)} ms"
                 + (" (truncated)" if truncated else ""))

    output: dict[str, Any] = {
        "status": response.status_code,
        "headers": dict(response.headers.items()),
        "body": parsed,
    }
    if truncated:
        output["truncated"] = True
    if failed and config.fail_on_status:
        raise StepError("http_status", f"{shown}: HTTP {response.status_code}", output=output)
    return output


def _failed(ctx: AgentContext, shown: str, started: float, reason: str) -> StepError:
    """The `http_error` of a request that got no response, after saying so in the step log."""
    ctx.emit_log("stderr", f"{shown} failed after {_elapsed_ms(started)} ms: {reason}")
    return StepError("http_error", f"{shown}: {reason}")
