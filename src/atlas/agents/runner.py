"""One entry point for running any agent, so the FSM engine needs no per-type knowledge (spec §2.5).

Every failure leaves here as a `StepError` carrying a session errorCode; an unexpected exception from an agent
module becomes `agent_error` rather than escaping into the engine, because a step failure must never take the
daemon down. `asyncio.CancelledError` is the one exception that passes through untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from atlas.agents.base import AgentContext, StepError
from atlas.agents.builtins import run_builtin
from atlas.agents.http_agent import run_http
from atlas.agents.llm import LlmCallConfig, ToolSource, run_llm
from atlas.agents.python_agent import run_python
from atlas.agents.shell import run_shell
from atlas.config.model import Agent, AtlasAgent, HttpAgent, LlmAgent, PythonAgent, ShellAgent
from atlas.templating import TemplateError, Templater

__all__ = ["AgentResult", "run_agent", "run_agent_full", "run_agent_with_usage"]


@dataclass
class AgentResult:
    """What a step records besides its status: the output, and for `llm` steps usage, tool calls, reasoning."""

    output: Any
    usage: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    reasoning: str | None = None


async def _dispatch(
    agent: Agent | str,
    ctx: AgentContext,
    templater: Templater,
    variables: Mapping[str, Any],
    default_base_url: str | None,
    tools: ToolSource | None,
) -> AgentResult:
    if isinstance(agent, str):
        return AgentResult(await run_builtin(agent, {}, ctx))
    if isinstance(agent, AtlasAgent):
        return AgentResult(await run_builtin(agent.agent, agent.config, ctx))
    if isinstance(agent, PythonAgent):
        return AgentResult(await run_python(agent.config, ctx))
    if isinstance(agent, ShellAgent):
        return AgentResult(await run_shell(agent.config, ctx, templater, variables))
    if isinstance(agent, HttpAgent):
        return AgentResult(await run_http(agent.config, ctx, templater, variables))
    if isinstance(agent, LlmAgent):
        result = await run_llm(LlmCallConfig.from_agent(agent.config), ctx, templater, variables,
                               default_base_url=default_base_url, tools=tools)
        return AgentResult(result.output, result.usage, result.tool_calls, result.reasoning)
    raise StepError("agent_error", f"unsupported agent {agent!r}")


async def run_agent(
    agent: Agent | str, ctx: AgentContext, templater: Templater, variables: Mapping[str, Any]
) -> Any:
    """Run `agent` and return only its output; see `run_agent_full`, which the engine uses."""
    return (await run_agent_full(agent, ctx, templater, variables)).output


async def run_agent_with_usage(
    agent: Agent | str,
    ctx: AgentContext,
    templater: Templater,
    variables: Mapping[str, Any],
    default_base_url: str | None = None,
) -> tuple[Any, dict[str, Any] | None]:
    """Run `agent`; return `(output, usage)` (see `run_agent_full`)."""
    result = await run_agent_full(agent, ctx, templater, variables, default_base_url)
    return result.output, result.usage


async def run_agent_full(
    agent: Agent | str,
    ctx: AgentContext,
    templater: Templater,
    variables: Mapping[str, Any],
    default_base_url: str | None = None,
    tools: ToolSource | None = None,
) -> AgentResult:
    """Run `agent` (a config model, or a built-in name such as `"atlas/count"`).

    `variables` are the template variables (`signal`, `payload`, `results`, `session`, `input`) for the
    agent's templated fields. `default_base_url` is `ATLAS_LLM_BASE_URL`; `tools` the workspace's MCP tools for
    `llm` agents. Raises StepError on failure.
    """
    try:
        return await _dispatch(agent, ctx, templater, variables, default_base_url, tools)
    except StepError:
        raise
    except TemplateError as exc:
        raise StepError("template_error", str(exc)) from exc
    except Exception as exc:
        raise StepError("agent_error", f"{type(exc).__name__}: {exc}") from exc
