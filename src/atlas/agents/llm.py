"""`type: llm` agents and inline `llm` FSM actions: model turns with tools until a final answer (spec §2.5, #14).

Both shapes share `run_llm`, so that an agent and an inline action behave identically; `LlmCallConfig` is the
common subset of their fields. The pieces:

- `atlas.llm.providers` picks the server, key and wire format from `provider` (`missing_credentials` before any
  request);
- `atlas.llm.openai_wire` / `atlas.llm.anthropic_wire` speak Chat Completions / Messages through the official
  SDKs, streamed by default (`provider_options: {stream: false}` asks for one JSON answer);
- `atlas.llm.retry` retries 429, 5xx and connection failures (`max_retries`, default 3) and bounds each model turn
  by `timeout` (default 120 s), retries included. A turn whose text already streamed is not retried;
- `atlas.llm.loop` runs the tool loop over the MCP tools the agent's `tools:` names (`atlas.mcp.servers`).

Prompts. An atlas-format agent (no `provider`) sends its `prompt` as the user message, followed by the `agent`
action's prompt (spec §2.5). A reference-format agent (`provider` set) means by `prompt` what Friday means: the
*system* prompt; its user message is the action's prompt, else the step's input (as JSON unless a string), else
the trigger payload. An inline `llm` action's `prompt` is always its user message.

Secrets: the API key is registered with `Templater.add_secret` before any request, so it is redacted from every
recorded event, chunk and log line, including error bodies that might echo it (§10.7).
Cancellation: cancelling the step's task cancels the SDK request (the connection closes) and the in-flight tool
calls (the MCP SDK sends `notifications/cancelled`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import jsonschema
import jsonschema.exceptions

from atlas.agents.base import AgentContext, StepError
from atlas.config.durations import parse_duration
from atlas.config.model import LlmAction, LlmAgentConfig
from atlas.llm.anthropic_wire import AnthropicMessages
from atlas.llm.conversation import AssistantTurn, TextSink, ToolSpec, TurnRequest, Usage, UserMessage
from atlas.llm.loop import LoopResult, ModelTurn, ToolOutcome, ToolRunner, run_tool_loop
from atlas.llm.openai_wire import OpenAIChat
from atlas.llm.providers import Endpoint, resolve_endpoint
from atlas.llm.retry import call_with_retries
from atlas.observability import tracing
from atlas.templating import Templater

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_OUTPUT_CHARS",
    "LlmCallConfig",
    "LlmResult",
    "ToolSource",
    "run_llm",
]

log = logging.getLogger(__name__)

#: The spec's default `timeout` for an `llm` agent (§2.5); inline actions without one use it as well.
DEFAULT_TIMEOUT = "120s"
#: The answer is held in memory and recorded; beyond this the step fails rather than the daemon.
MAX_OUTPUT_CHARS = 4 * 1024 * 1024
#: One `text-delta` chunk carries at most this many characters, keeping the chunk below 64 KiB (§3.3, §10.6).
MAX_DELTA_CHARS = 8 * 1024
_MAX_LISTED_ERRORS = 20
_JSON_INSTRUCTION = "Respond with a single JSON value only: no prose, no explanations and no Markdown code fences."


@dataclass(frozen=True, kw_only=True)
class LlmCallConfig:
    """The settings of one step, common to `LlmAgentConfig` (agents) and `LlmAction` (inline FSM actions).

    `prompt` and `system` are still templates. `include_action_prompt` is true for agents: the prompt an `agent`
    action gives (already rendered into `ctx.prompt`) is added to the user message. `prompt_is_system` is true
    for a reference-format agent (see the module docstring).
    """

    model: str
    prompt: str
    provider: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    max_steps: int = 10
    max_total_tokens: int | None = None
    tool_choice: str = "auto"
    tools: tuple[str, ...] = ()
    provider_options: Mapping[str, Any] = field(default_factory=dict)
    max_retries: int = 3
    timeout: str = DEFAULT_TIMEOUT
    response_format: str = "text"
    output_schema: dict[str, Any] | None = None
    include_action_prompt: bool = False
    prompt_is_system: bool = False

    @classmethod
    def from_agent(cls, config: LlmAgentConfig) -> LlmCallConfig:
        return cls(
            **_common(config),
            prompt=config.prompt,
            timeout=config.timeout,
            response_format=config.response_format,
            output_schema=config.output_schema,
            include_action_prompt=True,
            prompt_is_system=config.provider is not None,
        )

    @classmethod
    def from_action(cls, action: LlmAction) -> LlmCallConfig:
        return cls(**_common(action), prompt=action.prompt, timeout=action.timeout or DEFAULT_TIMEOUT)

    @property
    def wants_json(self) -> bool:
        return self.response_format == "json" or self.output_schema is not None


def _common(config: LlmAgentConfig | LlmAction) -> dict[str, Any]:
    return {
        "model": config.model,
        "provider": config.provider,
        "base_url": config.base_url,
        "api_key_env": config.api_key_env,
        "system": config.system,
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
        "max_steps": config.max_steps,
        "max_total_tokens": config.max_total_tokens,
        "tool_choice": config.tool_choice,
        "tools": tuple(config.tools),
        "provider_options": dict(config.provider_options),
        "max_retries": config.max_retries,
    }


@dataclass
class LlmResult:
    """The step output (text, or parsed JSON), `{inputTokens, outputTokens, model}` when the server said, the
    tool calls (`ToolCallSummary` records) and the model's reasoning when it sent some."""

    output: Any
    usage: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    reasoning: str | None = None


class ResolvedToolSet(ToolRunner, Protocol):
    specs: list[ToolSpec]


class ToolSource(Protocol):
    """The workspace's MCP tools (`atlas.mcp.servers.WorkspaceTools`): resolves an agent's `tools:` names."""

    async def resolve(self, names: list[str]) -> ResolvedToolSet: ...


# ---------------------------------------------------------------- entry point


async def run_llm(
    cfg: LlmCallConfig,
    ctx: AgentContext,
    templater: Templater,
    variables: Mapping[str, Any],
    *,
    default_base_url: str | None,
    tools: ToolSource | None = None,
    environ: Mapping[str, str] | None = None,
) -> LlmResult:
    """Run the step: resolve the endpoint and tools, render the prompts, loop, check the output.

    `variables` are the template variables (`signal`, `payload`, `results`, `session`, `input`).
    `default_base_url` is `ATLAS_LLM_BASE_URL`. Raises StepError (`llm_error`, `invalid_output`,
    `missing_credentials`, `unknown_tool`, `tool_conflict`, `max_steps_exceeded`, `budget_exceeded`), with
    `tool_calls` set when calls were made; TemplateError escapes for the caller to map to `template_error`.
    """
    try:
        timeout = parse_duration(cfg.timeout)
    except ValueError as exc:
        raise StepError("llm_error", str(exc)) from exc
    endpoint = resolve_endpoint(cfg.provider, cfg.base_url, cfg.api_key_env, default_base_url=default_base_url,
                                environ=os.environ if environ is None else environ)
    if endpoint.api_key:
        templater.add_secret(endpoint.api_key)
    if cfg.output_schema is not None:
        _check_schema(cfg.output_schema)
    runner: ResolvedToolSet | None = None
    if cfg.tools and cfg.tool_choice != "none":
        if tools is None:
            raise StepError("unknown_tool", f"no MCP server offers {cfg.tools[0]!r}: the workspace has no tools.mcp "
                            "servers")
        runner = await tools.resolve(list(cfg.tools))
    system, user = await _prompts(cfg, ctx, templater, variables)
    options = dict(cfg.provider_options)
    stream = options.pop("stream", True) is not False
    request = TurnRequest(
        model=cfg.model,
        system=system,
        messages=[UserMessage(user)],
        tools=list(runner.specs) if runner is not None else [],
        tool_choice=cfg.tool_choice,  # type: ignore[arg-type]  # checked by the config model
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        json_output=cfg.wants_json,
        provider_options=options,
        stream=stream,
    )
    client = _client(endpoint, timeout)
    text = _TextOut(ctx)
    provider = cfg.provider or endpoint.provider
    label = f"{provider} {cfg.model}"
    observer = ctx._llm_observer

    async def turn(req: TurnRequest, on_text: TextSink) -> AssistantTurn:
        if observer is None:
            return await call_with_retries(client, req, on_text, max_retries=cfg.max_retries, timeout=timeout,
                                           label=label, timeout_text=cfg.timeout)
        started = time.monotonic()
        try:
            answer = await call_with_retries(client, req, on_text, max_retries=cfg.max_retries, timeout=timeout,
                                             label=label, timeout_text=cfg.timeout)
        except Exception:
            observer.model_call(provider, cfg.model, False, time.monotonic() - started, 0, 0)
            raise
        observer.model_call(provider, cfg.model, True, time.monotonic() - started, answer.usage.input_tokens,
                            answer.usage.output_tokens)
        return answer

    model_turn: ModelTurn = turn
    tool_runner: ToolRunner | None = runner
    traced = tracing.active()
    if traced is not None:  # a traced run: a span per model call and per tool call (issue #18)
        model_turn = _traced_turn(turn, traced, provider, cfg.model)
        tool_runner = _TracedTools(runner, traced) if runner is not None else None
    try:
        loop = await run_tool_loop(model_turn, request, tool_runner, max_steps=cfg.max_steps,
                                   max_total_tokens=cfg.max_total_tokens, emit=ctx._emit, on_text=text.add,
                                   record=ctx.tool_calls,
                                   on_tool_call=observer.tool_call if observer is not None else None)
    except StepError as exc:
        if isinstance(exc.usage, Usage):
            exc.usage = _usage(exc.usage, cfg.model, None)
        raise
    finally:
        await client.aclose()
    return _result(cfg, loop, templater)


def _traced_turn(turn: ModelTurn, traced: tracing.Tracing, system: str, model: str) -> ModelTurn:
    """`turn` inside a GenAI `chat {model}` span, with what the answer says about the model and its token use."""

    async def traced_turn(req: TurnRequest, on_text: TextSink) -> AssistantTurn:
        with traced.model_span(system, model) as span:
            try:
                answer = await turn(req, on_text)
            except StepError as exc:
                tracing.mark_error(span, exc.code)
                raise
            tracing.record_model_answer(span, answer.model, answer.usage.input_tokens, answer.usage.output_tokens,
                                        answer.stop_reason)
            return answer

    return traced_turn


class _TracedTools:
    """A step's tools with an `execute_tool {name}` span around each call. A failed call marks its span an error
    by kind only: the error text may echo arguments (secrets), and spans leave the daemon."""

    def __init__(self, inner: ResolvedToolSet, traced: tracing.Tracing) -> None:
        self._inner = inner
        self._traced = traced
        self.specs = inner.specs

    def server_of(self, name: str) -> str | None:
        return self._inner.server_of(name)

    async def call(self, name: str, args: dict[str, Any]) -> ToolOutcome:
        with self._traced.tool_span(name, self._inner.server_of(name)) as span:
            outcome = await self._inner.call(name, args)
            if outcome.error is not None:
                tracing.mark_error(span, "tool_error")
            return outcome


def _client(endpoint: Endpoint, timeout: float) -> OpenAIChat | AnthropicMessages:
    if endpoint.wire == "anthropic":
        return AnthropicMessages(endpoint, timeout)
    return OpenAIChat(endpoint, timeout)


def _result(cfg: LlmCallConfig, loop: LoopResult, templater: Templater) -> LlmResult:
    usage = _usage(loop.usage, cfg.model, loop.model)
    if not cfg.wants_json:
        return LlmResult(loop.text, usage, loop.tool_calls, loop.reasoning)
    try:
        parsed = _parse_json(loop.text, templater)
        if cfg.output_schema is not None:
            _validate(parsed, cfg.output_schema)
    except StepError as exc:
        exc.tool_calls, exc.usage = loop.tool_calls, usage
        raise
    return LlmResult(parsed, usage, loop.tool_calls, loop.reasoning)


class _TextOut:
    """Streams the answer's text as `text-delta` chunks and bounds its size."""

    def __init__(self, ctx: AgentContext) -> None:
        self._ctx = ctx
        self._size = 0

    def add(self, text: str) -> None:
        self._size += len(text)
        if self._size > MAX_OUTPUT_CHARS:
            raise StepError("llm_error", f"answer longer than {MAX_OUTPUT_CHARS} characters")
        for start in range(0, len(text), MAX_DELTA_CHARS):
            # AgentContext._emit shields the agent from a failing sink; the runtime's sink never blocks
            self._ctx._emit({"type": "text-delta", "delta": text[start : start + MAX_DELTA_CHARS]})


def _usage(usage: Usage, requested_model: str, served_model: str | None) -> dict[str, Any] | None:
    """§3.2's `{inputTokens, outputTokens, cacheReadTokens?, model}` summed over the loop; None if unreported."""
    if not usage.reported:
        return None
    out: dict[str, Any] = {"inputTokens": usage.input_tokens, "outputTokens": usage.output_tokens}
    if usage.cache_read_tokens:
        out["cacheReadTokens"] = usage.cache_read_tokens
    out["model"] = served_model or requested_model
    return out


# ---------------------------------------------------------------- prompts


def _as_text(value: Any) -> str:
    """A template rendered natively (`{{ payload }}`) may be an object; the model gets it as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


async def _prompts(
    cfg: LlmCallConfig, ctx: AgentContext, templater: Templater, variables: Mapping[str, Any]
) -> tuple[str | None, str]:
    """The system prompt and the user message (rendering templates off the loop, bug #19.11)."""
    prompt = _as_text(await templater.render_async(cfg.prompt, variables)) if cfg.prompt else ""
    system_parts: list[str] = []
    if cfg.prompt_is_system:
        system_parts.append(prompt)
        user = ctx.prompt or _as_text(ctx.input) or (_as_text(ctx.payload) if ctx.payload else "")
    else:
        parts = [prompt]
        if cfg.include_action_prompt and ctx.prompt:
            parts.append(ctx.prompt)
        user = "\n\n".join(part for part in parts if part)
        if not user and ctx.input is not None:
            user = _as_text(ctx.input)
    if not user:
        raise StepError("llm_error", "empty prompt: neither a prompt nor an input to send")
    if cfg.system:
        system_parts.append(_as_text(await templater.render_async(cfg.system, variables)))
    if cfg.wants_json:
        system_parts.append(_JSON_INSTRUCTION)
        if cfg.output_schema is not None:
            system_parts.append("The JSON must conform to this JSON Schema:\n" + json.dumps(cfg.output_schema))
    system = "\n\n".join(part for part in system_parts if part)
    return system or None, user


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
