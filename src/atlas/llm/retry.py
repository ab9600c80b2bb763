"""One retry policy for every provider (spec §2.5; issue #14 `max_retries`), around one model turn.

Why not the SDKs' retries: a turn whose text already streamed to watchers must not be retried (they would see
the text twice), which only the caller knows; and the policy, the `Retry-After` cap and the error messages are
the same for both wire formats. 429, 5xx and connection failures are retried with exponential backoff up to
`max_retries` times; other statuses fail at once with `llm_error`.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from typing import Any

import anthropic
import openai
import pydantic

from atlas.agents.base import StepError
from atlas.llm.conversation import AssistantTurn, ModelCall, TextSink, TurnRequest

__all__ = ["MAX_RETRY_AFTER", "RETRY_BACKOFF", "call_with_retries"]

log = logging.getLogger(__name__)

#: Seconds before retry 1, 2, 3, …; later retries reuse the last value. Tests shorten it with monkeypatch.
RETRY_BACKOFF: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
#: Upper bound for a server's `Retry-After`, so that one header cannot park a step for an hour.
MAX_RETRY_AFTER = 30.0
_EXCERPT = 500

_STATUS_ERRORS = (openai.APIStatusError, anthropic.APIStatusError)
_TIMEOUTS = (openai.APITimeoutError, anthropic.APITimeoutError)
_CONNECTION_ERRORS = (openai.APIConnectionError, anthropic.APIConnectionError)


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


async def call_with_retries(
    model: ModelCall, request: TurnRequest, on_text: TextSink, *, max_retries: int, timeout: float, label: str,
    timeout_text: str | None = None,
) -> AssistantTurn:
    """One turn, retried per the policy above; `timeout` bounds the turn with its retries and waits."""
    streamed = False

    def sink(text: str) -> None:
        nonlocal streamed
        streamed = True
        on_text(text)

    try:
        async with asyncio.timeout(timeout):
            for attempt in range(max_retries + 1):
                try:
                    return await _attempt(model, request, sink, lambda: streamed)
                except _Retryable as exc:
                    if attempt >= max_retries:
                        suffix = f" (after {attempt} retries)" if attempt else ""
                        raise StepError("llm_error", f"{exc.message}{suffix}") from exc
                    delay = RETRY_BACKOFF[min(attempt, len(RETRY_BACKOFF) - 1)]
                    if exc.retry_after is not None:
                        delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER))
                    log.info("model request failed (%s); retry %d in %.1fs", exc.message, attempt + 1, delay)
                    await asyncio.sleep(delay)
    except TimeoutError as exc:
        raise StepError("llm_error", f"{label}: timed out after {timeout_text or f'{timeout:g}s'}") from exc
    raise AssertionError("unreachable")  # the loop returns or raises


async def _attempt(model: ModelCall, request: TurnRequest, sink: TextSink, streamed: Any) -> AssistantTurn:
    try:
        return await model(request, sink)
    except _TIMEOUTS as exc:
        raise TimeoutError(str(exc)) from exc
    except _STATUS_ERRORS as exc:
        message = f"HTTP {exc.status_code}: {_excerpt(exc)}"
        if exc.status_code == 429 or exc.status_code >= 500:
            if streamed():
                raise StepError("llm_error", f"stream broken after partial answer: {message}") from exc
            raise _Retryable(message, _retry_after(exc.response)) from exc
        raise StepError("llm_error", message) from exc
    except _CONNECTION_ERRORS as exc:
        message = f"{type(exc).__name__}: {exc}"
        if streamed():
            raise StepError("llm_error", f"stream broken after partial answer: {message}") from exc
        raise _Retryable(message) from exc
    except (openai.OpenAIError, anthropic.AnthropicError, pydantic.ValidationError, ValueError, KeyError) as exc:
        raise StepError("llm_error", f"malformed answer from the server: {type(exc).__name__}: {exc}"[:800]) from exc


def _excerpt(exc: Any) -> str:
    body = getattr(exc, "body", None)
    text = ""
    if isinstance(body, dict):
        error = body.get("error", body)
        text = str(error.get("message", error)) if isinstance(error, dict) else str(error)
    elif body is not None:
        text = str(body)
    if not text:
        try:
            text = exc.response.text
        except Exception:
            text = str(exc)
    text = " ".join(text.split())
    return (text[:_EXCERPT] + "…" if len(text) > _EXCERPT else text) or "(empty body)"


def _retry_after(response: Any) -> float | None:
    """`Retry-After` in seconds (a number or an HTTP date), or None when absent or unreadable."""
    value = response.headers.get("retry-after") if response is not None else None
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
