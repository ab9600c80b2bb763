"""`type: llm` agents and inline `llm` FSM actions: one streamed OpenAI-compatible chat completion (spec §2.5).

Both shapes share `run_llm`, so that an agent and an inline action behave identically; `LlmCallConfig` is the
common subset of their fields.

Design decisions:

- **Streaming.** The request always uses `stream: true` with `stream_options.include_usage`, so that token deltas
  can go out live as `text-delta` chunks (§3.3) and the final chunk can report usage for `step:complete.usage`.
  A server that ignores `stream` and answers with a plain JSON completion is accepted too.
- **Retries.** 429, 5xx and connection failures are retried with exponential backoff (`RETRY_BACKOFF`, whose
  length is the retry budget: at most 3 retries). A `Retry-After` header can lengthen a wait, up to
  `MAX_RETRY_AFTER`. Once a delta has been streamed, a broken stream is *not* retried: the text already sent to
  watchers would be sent twice.
- **Timeout.** `timeout` bounds the whole call, retries and backoff included, so a step cannot outlive it. When it
  passes, the step fails with `llm_error` ("timed out after …"): the spec lists `llm_error` as the failure code of
  an `llm` step, and the session code `timeout` is reserved for the job timeout (§3.1).
- **Secrets.** The API key is registered with `Templater.add_secret` before the request is built, so it is
  redacted from every recorded event, chunk and log line, including error bodies that might echo it (§10.7). It
  is never logged.
- **Cancellation.** Cancelling the task leaves the `httpx` stream context, which closes the connection: the
  request is aborted and no further chunks are emitted (§8.3).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import jsonschema
import jsonschema.exceptions

from atlas.agents.base import AgentContext, StepError
from atlas.config.durations import parse_duration
from atlas.config.model import LlmAction, LlmAgentConfig
from atlas.templating import Templater

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_RETRY_AFTER",
    "RETRY_BACKOFF",
    "LlmCallConfig",
    "LlmResult",
    "run_llm",
]

log = logging.getLogger(__name__)

#: Seconds to wait before retry 1, 2, 3. Its length is the retry budget. Tests shorten it with monkeypatch.
RETRY_BACKOFF: tuple[float, ...] = (0.5, 1.0, 2.0)
#: Upper bound for a server's `Retry-After`, so that one header cannot park a step for an hour.
MAX_RETRY_AFTER = 30.0
#: The spec's default `timeout` for an `llm` agent (§2.5); inline actions without one use it as well.
DEFAULT_TIMEOUT = "120s"
#: The answer is held in memory and recorded; beyond this the step fails rather than the daemon.
MAX_OUTPUT_CHARS = 4 * 1024 * 1024
#: One `text-delta` chunk carries at most this many characters, keeping the chunk below 64 KiB (§3.3, §10.6).
MAX_DELTA_CHARS = 8 * 1024
#: How much of an error response body is quoted in the step error.
_ERROR_BODY_EXCERPT = 500
_MAX_LISTED_ERRORS = 20
_JSON_INSTRUCTION = "Respond with a single JSON value only: no prose, no explanations and no Markdown code fences."


@dataclass(frozen=True, kw_only=True)
class LlmCallConfig:
    """The settings of one call, common to `LlmAgentConfig` (agents) and `LlmAction` (inline FSM actions).

    `prompt` and `system` are still templates. `include_action_prompt` is true for agents: the prompt an `agent`
    action gives (already rendered into `ctx.prompt`) is appended to the agent's own prompt. An inline action's
    prompt *is* `prompt`, so it must not be added a second time from `ctx.prompt`.
    """

    model: str
    prompt: str
    base_url: str | None = None
    api_key_env: str | None = None
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: str = DEFAULT_TIMEOUT
    response_format: str = "text"
    output_schema: dict[str, Any] | None = None
    include_action_prompt: bool = False

    @classmethod
    def from_agent(cls, config: LlmAgentConfig) -> LlmCallConfig:
        return cls(
            model=config.model,
            prompt=config.prompt,
            base_url=config.base_url,
            api_key_env=config.api_key_env,
            system=config.system,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            timeout=config.timeout,
            response_format=config.response_format,
            output_schema=config.output_schema,
            include_action_prompt=True,
        )

    @classmethod
    def from_action(cls, action: LlmAction) -> LlmCallConfig:
        return cls(
            model=action.model,
            prompt=action.prompt,
            base_url=action.base_url,
            api_key_env=action.api_key_env,
            system=action.system,
            temperature=action.temperature,
            max_tokens=action.max_tokens,
            timeout=action.timeout or DEFAULT_TIMEOUT,
        )

    @property
    def wants_json(self) -> bool:
        return self.response_format == "json" or self.output_schema is not None


@dataclass
class LlmResult:
    """The step output (text, or parsed JSON) and `{inputTokens, outputTokens, model}` when the server said."""

    output: Any
    usage: dict[str, Any] | None = None


@dataclass
class _Stream:
    """What one attempt collected; `streamed` tells whether any delta already reached the sink."""

    parts: list[str] = field(default_factory=list)
    size: int = 0
    usage: dict[str, Any] | None = None
    model: str | None = None
    streamed: bool = False


class _Retryable(Exception):
    """An attempt failed in a way worth retrying (429, 5xx, connection error before any delta)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


# ---------------------------------------------------------------- entry point


async def run_llm(
    cfg: LlmCallConfig,
    ctx: AgentContext,
    templater: Templater,
    variables: Mapping[str, Any],
    *,
    default_base_url: str | None,
) -> LlmResult:
    """Render the prompt, call `<base_url>/chat/completions` with streaming and return the answer and usage.

    `variables` are the template variables (`signal`, `payload`, `results`, `session`, `input`).
    `default_base_url` is `ATLAS_LLM_BASE_URL`, used when the config has no `base_url`. Raises StepError with
    `llm_error`, `invalid_output` or `missing_credentials`; TemplateError escapes for the caller to map to
    `template_error`.
    """
    try:
        timeout = parse_duration(cfg.timeout)
    except ValueError as exc:
        raise StepError("llm_error", str(exc)) from exc
    url = _endpoint(cfg.base_url or default_base_url)
    api_key = _api_key(cfg.api_key_env, templater)
    if cfg.output_schema is not None:
        _check_schema(cfg.output_schema)
    body = _request_body(cfg, await _messages(cfg, ctx, templater, variables))
    headers = {"Accept": "text/event-stream"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"

    try:
        async with asyncio.timeout(timeout):
            stream = await _call_with_retries(url, headers, body, ctx, timeout)
    except TimeoutError as exc:
        raise StepError("llm_error", f"{cfg.model}: timed out after {cfg.timeout}") from exc

    text = "".join(stream.parts)
    usage = _usage(stream, cfg.model)
    if not cfg.wants_json:
        return LlmResult(text, usage)
    parsed = _parse_json(text, templater)
    if cfg.output_schema is not None:
        _validate(parsed, cfg.output_schema)
    return LlmResult(parsed, usage)


# ---------------------------------------------------------------- request


def _endpoint(base_url: str | None) -> httpx.URL:
    if not base_url:
        raise StepError("llm_error", "no base_url: set config.base_url or ATLAS_LLM_BASE_URL")
    try:
        url = httpx.URL(base_url.rstrip("/") + "/chat/completions")
    except httpx.InvalidURL as exc:
        raise StepError("llm_error", f"invalid base_url: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise StepError("llm_error", "base_url must be an absolute http:// or https:// URL")
    return url


def _api_key(env_name: str | None, templater: Templater) -> str | None:
    """Read the key and make it a secret before anything could record it; a keyless server gets no header."""
    if env_name is None:
        return None
    key = os.environ.get(env_name, "")
    if not key:
        raise StepError("missing_credentials", f"environment variable {env_name} (api_key_env) is unset or empty")
    templater.add_secret(key)
    return key


def _as_text(value: Any) -> str:
    """A template rendered natively (`{{ payload }}`) may be an object; the model gets it as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


async def _messages(
    cfg: LlmCallConfig, ctx: AgentContext, templater: Templater, variables: Mapping[str, Any]
) -> list[dict[str, str]]:
    """Build `[system?, user]`, rendering the prompt and system templates off the loop (bug 11).

    The user message is the rendered prompt, plus the `agent` action's prompt for an agent. When both are empty
    the agent's input is sent instead (as JSON unless it is a string), so an agent in a sequential `execution`
    chain still has something to answer.
    """
    parts = [_as_text(await templater.render_async(cfg.prompt, variables))] if cfg.prompt else []
    if cfg.include_action_prompt and ctx.prompt:
        parts.append(ctx.prompt)
    user = "\n\n".join(part for part in parts if part)
    if not user:
        if ctx.input is None:
            raise StepError("llm_error", "empty prompt: neither a prompt nor an input to send")
        user = _as_text(ctx.input)

    system_parts: list[str] = []
    if cfg.system:
        system_parts.append(_as_text(await templater.render_async(cfg.system, variables)))
    if cfg.wants_json:
        system_parts.append(_JSON_INSTRUCTION)
        if cfg.output_schema is not None:
            system_parts.append("The JSON must conform to this JSON Schema:\n" + json.dumps(cfg.output_schema))
    messages = []
    system = "\n\n".join(part for part in system_parts if part)
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user})
    return messages


def _request_body(cfg: LlmCallConfig, messages: list[dict[str, str]]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": cfg.model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if cfg.temperature is not None:
        body["temperature"] = cfg.temperature
    if cfg.max_tokens is not None:
        body["max_tokens"] = cfg.max_tokens
    if cfg.wants_json:
        body["response_format"] = {"type": "json_object"}
    return body


# ---------------------------------------------------------------- transport


async def _call_with_retries(
    url: httpx.URL, headers: dict[str, str], body: dict[str, Any], ctx: AgentContext, timeout: float
) -> _Stream:
    """Run attempts until one succeeds or the retry budget is spent; the caller's deadline bounds it all."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout)) as client:
        for attempt in range(len(RETRY_BACKOFF) + 1):
            try:
                return await _attempt(client, url, headers, body, ctx)
            except _Retryable as exc:
                if attempt >= len(RETRY_BACKOFF):
                    raise StepError("llm_error", f"{exc.message} (after {attempt} retries)") from exc
                delay = RETRY_BACKOFF[attempt]
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER))
                log.info("llm request failed (%s); retry %d in %.1fs", exc.message, attempt + 1, delay)
                await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


async def _attempt(
    client: httpx.AsyncClient, url: httpx.URL, headers: dict[str, str], body: dict[str, Any], ctx: AgentContext
) -> _Stream:
    stream = _Stream()
    try:
        async with client.stream("POST", url, headers=headers, json=body) as response:
            if response.status_code == 429 or response.status_code >= 500:
                excerpt = await _excerpt(response)
                raise _Retryable(f"HTTP {response.status_code}: {excerpt}", _retry_after(response))
            if not 200 <= response.status_code < 300:
                excerpt = await _excerpt(response)
                raise StepError("llm_error", f"HTTP {response.status_code}: {excerpt}")
            media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media_type == "application/json":
                _take_completion(stream, await _read_json(response), ctx)
            else:
                async for data in _sse_data(response):
                    if data.strip() == "[DONE]":
                        break
                    try:
                        event = json.loads(data)
                    except ValueError as exc:
                        raise StepError("llm_error", f"malformed stream event: {data[:200]!r}") from exc
                    _take_event(stream, event, ctx)
    except httpx.TimeoutException as exc:
        # httpx's own timeout (a silent server) is the same failure as the overall deadline
        raise TimeoutError(str(exc)) from exc
    except (httpx.TransportError, httpx.StreamError) as exc:
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if stream.streamed:
            raise StepError("llm_error", f"stream broken after partial answer: {message}") from exc
        raise _Retryable(message) from exc
    except (TypeError, ValueError) as exc:  # e.g. a key that is not valid in a header
        raise StepError("llm_error", f"invalid request: {type(exc).__name__}") from exc
    return stream


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """Yield the `data` of each server-sent event: `data:` lines joined by newlines, ended by a blank line."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
            continue
        if line.startswith("data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(" ") else value)
        # comments (": keep-alive") and other fields (event:, id:, retry:) carry nothing we use
    if lines:
        yield "\n".join(lines)


async def _excerpt(response: httpx.Response) -> str:
    """A short, single-line excerpt of an error body, read without pulling a huge body into memory."""
    data = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > _ERROR_BODY_EXCERPT:
                break
    except (httpx.TransportError, httpx.StreamError):
        pass
    text = bytes(data[:_ERROR_BODY_EXCERPT]).decode("utf-8", errors="replace")
    text = " ".join(text.split())
    if len(data) > _ERROR_BODY_EXCERPT:
        text += "…"
    return text or "(empty body)"


async def _read_json(response: httpx.Response) -> Any:
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > MAX_OUTPUT_CHARS * 2:
            raise StepError("llm_error", "response body too large")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise StepError("llm_error", "malformed JSON completion from the server") from exc


def _retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (a number or an HTTP date), or None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# ---------------------------------------------------------------- response content


def _server_error(event: Mapping[str, Any]) -> None:
    error = event.get("error")
    if error:
        message = error.get("message") if isinstance(error, Mapping) else error
        raise StepError("llm_error", f"server error in stream: {str(message)[:_ERROR_BODY_EXCERPT]}")


def _take_event(stream: _Stream, event: Any, ctx: AgentContext) -> None:
    """Fold one `chat.completion.chunk`: emit and keep its content delta, remember model and usage."""
    if not isinstance(event, Mapping):
        return
    _server_error(event)
    _take_meta(stream, event)
    choices = event.get("choices")
    if not isinstance(choices, list):
        return
    for choice in choices:
        if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, Mapping) else None
        if isinstance(content, str) and content:
            _add_text(stream, content, ctx)


def _take_completion(stream: _Stream, completion: Any, ctx: AgentContext) -> None:
    """Fold a non-streamed `chat.completion` (a server that ignored `stream: true`) as one delta."""
    if not isinstance(completion, Mapping):
        raise StepError("llm_error", "malformed completion from the server")
    _server_error(completion)
    _take_meta(stream, completion)
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise StepError("llm_error", "completion without choices")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, Mapping) else None
    if isinstance(content, str) and content:
        _add_text(stream, content, ctx)


def _take_meta(stream: _Stream, event: Mapping[str, Any]) -> None:
    model = event.get("model")
    if isinstance(model, str) and model:
        stream.model = model
    usage = event.get("usage")
    if isinstance(usage, Mapping):
        stream.usage = dict(usage)


def _add_text(stream: _Stream, text: str, ctx: AgentContext) -> None:
    stream.size += len(text)
    if stream.size > MAX_OUTPUT_CHARS:
        raise StepError("llm_error", f"answer longer than {MAX_OUTPUT_CHARS} characters")
    stream.parts.append(text)
    stream.streamed = True
    for start in range(0, len(text), MAX_DELTA_CHARS):
        # AgentContext._emit shields the agent from a failing sink; the runtime's sink never blocks
        ctx._emit({"type": "text-delta", "delta": text[start : start + MAX_DELTA_CHARS]})


def _usage(stream: _Stream, requested_model: str) -> dict[str, Any] | None:
    """Map OpenAI usage to §3.2's `{inputTokens, outputTokens, cacheReadTokens?, model}`; None if unreported."""
    raw = stream.usage
    if raw is None:
        return None
    usage: dict[str, Any] = {}
    for source, target in (("prompt_tokens", "inputTokens"), ("completion_tokens", "outputTokens")):
        value = raw.get(source)
        if isinstance(value, int) and not isinstance(value, bool):
            usage[target] = value
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    if isinstance(cached, int) and not isinstance(cached, bool) and cached:
        usage["cacheReadTokens"] = cached
    usage["model"] = stream.model or requested_model
    return usage


# ---------------------------------------------------------------- JSON output


def _parse_json(text: str, templater: Templater) -> Any:
    """Parse the answer; a Markdown code fence around it is tolerated, since many models add one anyway."""
    candidate = text.strip()
    if candidate.startswith("```") and candidate.endswith("```") and len(candidate) >= 6:
        candidate = candidate[3:-3]
        first_line, _, rest = candidate.partition("\n")
        if first_line.strip().isalnum() or not first_line.strip():  # ```json
            candidate = rest
        candidate = candidate.strip()
    try:
        return json.loads(candidate)
    except json.JSONDecodeError as exc:
        excerpt = str(templater.redact(" ".join(text.split())[:200]))
        raise StepError("llm_error", f"unparseable JSON in the answer ({exc.msg}): {excerpt!r}") from exc


def _check_schema(schema: dict[str, Any]) -> None:
    """Reject a broken `output_schema` before the request, so no tokens are spent on an answer we cannot check."""
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise StepError("llm_error", f"invalid output_schema: {exc.message}") from exc


def _validate(value: Any, schema: dict[str, Any]) -> None:
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(value), key=lambda error: [str(part) for part in error.absolute_path])
    if not errors:
        return
    lines = [f"{error.json_path}: {error.message}" for error in errors[:_MAX_LISTED_ERRORS]]
    if len(errors) > _MAX_LISTED_ERRORS:
        lines.append(f"… and {len(errors) - _MAX_LISTED_ERRORS} more")
    raise StepError(
        "invalid_output",
        f"answer does not match output_schema ({len(errors)} error(s)): " + "; ".join(lines),
        output=value,
    )
