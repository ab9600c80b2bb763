"""One entry point for running any agent, so the FSM engine needs no per-type knowledge (spec §2.5).

Every failure leaves here as a `StepError` carrying a session errorCode; an unexpected exception from an agent
module becomes `agent_error` rather than escaping into the engine, because a step failure must never take the
daemon down. `asyncio.CancelledError` is the one exception that passes through untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from atlas.agents.base import AgentContext, StepError
from atlas.agents.builtins import run_builtin
from atlas.agents.http_agent import run_http
from atlas.agents.llm import LlmCallConfig, run_llm
from atlas.agents.python_agent import run_python
from atlas.agents.shell import run_shell
from atlas.config.model import Agent, AtlasAgent, HttpAgent, LlmAgent, PythonAgent, ShellAgent
from atlas.templating import TemplateError, Templater

__all__ = ["run_agent", "run_agent_with_usage"]


async def _dispatch(
    agent: Agent | str,
    ctx: AgentContext,
    templater: Templater,
    variables: Mapping[str, Any],
    default_base_url: str | None,
) -> tuple[Any, dict[str, Any] | None]:
    if isinstance(agent, str):
        return await run_builtin(agent, {}, ctx), None
    if isinstance(agent, AtlasAgent):
        return await run_builtin(agent.agent, agent.config, ctx), None
    if isinstance(agent, PythonAgent):
        return await run_python(agent.config, ctx), None
    if isinstance(agent, ShellAgent):
        return await run_shell(agent.config, ctx, templater, variables), None
    if isinstance(agent, HttpAgent):
        return await run_http(agent.config, ctx, templater, variables), None
    if isinstance(agent, LlmAgent):
        result = await run_llm(
            LlmCallConfig.from_agent(agent.config), ctx, templater, variables, default_base_url=default_base_url
        )
        return result.output, result.usage
    raise StepError("agent_error", f"unsupported agent {agent!r}")


async def run_agent(
    agent: Agent | str, ctx: AgentContext, templater: Templater, variables: Mapping[str, Any]
) -> Any:
    """Run `agent` and return only its output; see `run_agent_with_usage`, which the engine uses."""
    output, _usage = await run_agent_with_usage(agent, ctx, templater, variables)
    return output


async def run_agent_with_usage(
    agent: Agent | str,
    ctx: AgentContext,
    templater: Templater,
    variables: Mapping[str, Any],
    default_base_url: str | None = None,
) -> tuple[Any, dict[str, Any] | None]:
    """Run `agent` (a config model, or a built-in name such as `"atlas/count"`); return `(output, usage)`.

    `variables` are the template variables (`signal`, `payload`, `results`, `session`, `input`) for the
    agent's templated fields. `usage` is `{inputTokens, outputTokens, model}` for an `llm` agent whose endpoint
    reported it (for `step:complete.usage`, §3.2), else None. `default_base_url` is `ATLAS_LLM_BASE_URL`, used
    by `llm` agents without a `base_url`. Raises StepError on failure.
    """
    try:
        return await _dispatch(agent, ctx, templater, variables, default_base_url)
    except StepError:
        raise
    except TemplateError as exc:
        raise StepError("template_error", str(exc)) from exc
    except Exception as exc:
        raise StepError("agent_error", f"{type(exc).__name__}: {exc}") from exc
