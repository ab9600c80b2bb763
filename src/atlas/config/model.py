"""Typed model of `workspace.yml` (spec §2).

Field names mirror the YAML keys so that error paths (`jobs.x.fsm.states.y.entry[0].agentId`) are the
pydantic locations unchanged. The few keys that clash with Python or pydantic names use an alias:
`if` → `if_`, `schema` → `schema_`, `json` → `json_`. Every model forbids unknown keys (spec §2.8).
Boolean switches are `StrictBool`: in YAML 1.2 `wait: yes` is the string "yes", and pydantic's lax mode would
otherwise quietly turn it into `True`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from atlas.config.durations import parse_duration

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
WORKSPACE_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
BUILTIN_AGENTS = ("atlas/sleep", "atlas/echo", "atlas/count")


class Strict(BaseModel):
    """Base: unknown keys are errors; aliases and names both accepted."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


# A duration string (`30s`), checked by `_check_duration`: one clear message for any bad value.
Duration = str


def _check_duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)
    return value


# ---------------------------------------------------------------- workspace


class WorkspaceTimeout(Strict):
    maxTotalTimeout: Duration = "30m"

    _dur = field_validator("maxTotalTimeout")(_check_duration)


class WorkspaceInfo(Strict):
    name: str = Field(min_length=1)
    id: str | None = Field(default=None, pattern=WORKSPACE_ID_PATTERN)
    description: str | None = None
    welcome: str | None = None
    timeout: WorkspaceTimeout = WorkspaceTimeout()


# ---------------------------------------------------------------- signals


class HttpSignalConfig(Strict):
    path: str = Field(pattern=r"^/")
    timeout: Duration | None = None

    _dur = field_validator("timeout")(_check_duration)


class ScheduleSignalConfig(Strict):
    schedule: str = Field(min_length=1)
    timezone: str = "UTC"
    onMissed: Literal["skip", "coalesce", "catchup"] = "coalesce"
    missedWindow: Duration = "24h"

    _dur = field_validator("missedWindow")(_check_duration)


class SystemSignalConfig(Strict):
    pass


Concurrency = Literal["skip", "queue", "concurrent", "replace"]


class _SignalBase(Strict):
    title: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    concurrency: Concurrency = "skip"


class HttpSignal(_SignalBase):
    provider: Literal["http"]
    config: HttpSignalConfig


class ScheduleSignal(_SignalBase):
    provider: Literal["schedule"]
    config: ScheduleSignalConfig


class SystemSignal(_SignalBase):
    provider: Literal["system"]
    config: SystemSignalConfig = SystemSignalConfig()


Signal = Annotated[HttpSignal | ScheduleSignal | SystemSignal, Field(discriminator="provider")]


# ---------------------------------------------------------------- agents


class PythonAgentConfig(Strict):
    entrypoint: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    params: dict[str, Any] = {}


class ShellAgentConfig(Strict):
    command: list[str] = Field(min_length=1)
    env: dict[str, str] = {}
    cwd: str | None = None
    timeout: Duration | None = None
    inherit_env: StrictBool = False
    stdin: Literal["input", "none"] = "input"

    _dur = field_validator("timeout")(_check_duration)


class HttpAgentConfig(Strict):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "POST"
    url: str = Field(min_length=1)
    headers: dict[str, str] = {}
    json_: Any = Field(default=None, alias="json")
    timeout: Duration = "30s"
    fail_on_status: StrictBool = True

    _dur = field_validator("timeout")(_check_duration)


Provider = Literal["anthropic", "openai", "openrouter", "ollama"]
ToolChoice = Literal["auto", "required", "none"]


class _LlmCommon(Strict):
    """The keys an `llm` agent and an inline `llm` action share (issue #14: the reference's keys plus atlas's).

    `provider` is required by the reference; atlas keeps it optional, meaning an OpenAI-compatible server at
    `base_url` (spec §2.5), so workspaces written before it still load. `tools` names MCP tools offered by the
    workspace's `tools.mcp` servers; the names are checked at first use (`unknown_tool`), never at load.
    """

    provider: Provider | None = None
    model: str = Field(min_length=1)
    base_url: str | None = None
    api_key_env: str | None = None
    system: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    max_steps: int = Field(default=10, ge=1, le=1000)
    max_total_tokens: int | None = Field(default=None, ge=1)
    tool_choice: ToolChoice = "auto"
    tools: list[str] = []
    provider_options: dict[str, Any] = {}
    max_retries: int = Field(default=3, ge=0, le=10)


class LlmAgentConfig(_LlmCommon):
    prompt: str = ""
    timeout: Duration = "120s"
    response_format: Literal["text", "json"] = "text"
    output_schema: dict[str, Any] | None = None

    _dur = field_validator("timeout")(_check_duration)


class _AgentBase(Strict):
    description: str | None = None


class PythonAgent(_AgentBase):
    type: Literal["python"]
    config: PythonAgentConfig


class ShellAgent(_AgentBase):
    type: Literal["shell"]
    config: ShellAgentConfig


class HttpAgent(_AgentBase):
    type: Literal["http"]
    config: HttpAgentConfig


class LlmAgent(_AgentBase):
    type: Literal["llm"]
    config: LlmAgentConfig


class AtlasAgent(_AgentBase):
    """A built-in (`atlas/sleep|echo|count`); its own config is free-form and checked at run time."""

    type: Literal["atlas"]
    agent: Literal["atlas/sleep", "atlas/echo", "atlas/count"]
    config: dict[str, Any] = {}


Agent = Annotated[
    PythonAgent | ShellAgent | HttpAgent | LlmAgent | AtlasAgent, Field(discriminator="type")
]


# ---------------------------------------------------------------- FSM


class AgentAction(Strict):
    type: Literal["agent"]
    agentId: str = Field(min_length=1)
    prompt: str | None = None
    inputFrom: str | list[str] | None = None
    outputTo: str | None = None
    if_: str | bool | None = Field(default=None, alias="if")


class LlmAction(_LlmCommon):
    type: Literal["llm"]
    prompt: str
    outputTo: str | None = Field(default=None, min_length=1)
    """Optional as in the reference; without it the result is stored under `llm:<stateId>`."""
    timeout: Duration | None = None
    inputFrom: str | list[str] | None = None
    if_: str | bool | None = Field(default=None, alias="if")

    _dur = field_validator("timeout")(_check_duration)


class EmitAction(Strict):
    type: Literal["emit"]
    event: str = Field(min_length=1)
    data: Any = None


class SignalAction(Strict):
    type: Literal["signal"]
    signal: str = Field(pattern=ID_PATTERN)
    workspace: str | None = None
    payload: dict[str, Any] | None = None
    wait: StrictBool = False
    outputTo: str | None = None
    if_: str | bool | None = Field(default=None, alias="if")


Action = Annotated[AgentAction | LlmAction | EmitAction | SignalAction, Field(discriminator="type")]


class Transition(Strict):
    target: str = Field(min_length=1)
    cond: str | bool | None = None
    actions: list[Action] = []


class State(Strict):
    entry: list[Action] = []
    on: dict[str, Transition | list[Transition]] = {}
    type: Literal["final"] | None = None


class Fsm(Strict):
    id: str | None = None
    initial: str = Field(min_length=1)
    states: dict[str, State] = Field(min_length=1)


class SequentialStep(Strict):
    id: str = Field(min_length=1)
    prompt: str | None = None


class Execution(Strict):
    # Optional as in the reference, whose default it is (issue #14: its files load unedited).
    strategy: Literal["sequential"] = "sequential"
    agents: list[str | SequentialStep] = Field(min_length=1)


class TriggerRef(Strict):
    signal: str = Field(min_length=1)


class JobConfig(Strict):
    timeout: Duration | None = None
    max_steps: int = Field(default=100, ge=1)

    _dur = field_validator("timeout")(_check_duration)


class KeyDetail(Strict):
    label: str
    value: str
    url: str | None = None


class SummarySpec(Strict):
    text: str
    keyDetails: list[KeyDetail] = []


class Job(Strict):
    title: str | None = None
    description: str | None = None
    triggers: list[TriggerRef] = []
    """Optional as in the reference, where a job without triggers is a tool of chat; atlas loads it, untriggerable."""
    config: JobConfig = JobConfig()
    fsm: Fsm | None = None
    execution: Execution | None = None
    summary: str | SummarySpec | None = None


# ---------------------------------------------------------------- tools (MCP servers, the reference's `tools.mcp`)


class McpTimeouts(Strict):
    progressTimeout: Duration = "2m"
    maxTotalTimeout: Duration = "30m"

    _dur = field_validator("progressTimeout", "maxTotalTimeout")(_check_duration)


class McpClientConfig(Strict):
    timeout: McpTimeouts = McpTimeouts()


class McpStdioTransport(Strict):
    type: Literal["stdio"]
    command: str = Field(min_length=1)
    args: list[str] = []


class McpHttpTransport(Strict):
    type: Literal["http"]
    url: str = Field(pattern=r"^https?://")


McpTransport = Annotated[McpStdioTransport | McpHttpTransport, Field(discriminator="type")]


class McpAuth(Strict):
    type: Literal["bearer"]
    token_env: str = Field(min_length=1)


class McpToolFilter(Strict):
    allow: list[str] | None = None
    deny: list[str] | None = None


class McpServerConfig(Strict):
    description: str | None = None
    transport: McpTransport
    client_config: McpClientConfig | None = None
    auth: McpAuth | None = None
    tools: McpToolFilter | None = None
    env: dict[str, str] = {}


class McpConfig(Strict):
    client_config: McpClientConfig = McpClientConfig()
    servers: dict[Annotated[str, Field(pattern=ID_PATTERN)], McpServerConfig] = {}


class ToolsConfig(Strict):
    mcp: McpConfig | None = None


# ---------------------------------------------------------------- memory (issue #17, the reference's `memory`)


class MemoryCorpus(Strict):
    """One corpus the workspace owns. `long_term` narrative corpora are fed back into every chat turn's prompt
    (`atlas.memory.prompt`); `short_term` and the reference's `scratchpad` are kept and listed the same way but
    never put into a prompt. `narrative` is the reference's only strategy left, hence the default."""

    name: str = Field(pattern=ID_PATTERN)
    type: Literal["long_term", "short_term", "scratchpad"]
    strategy: Literal["narrative"] = "narrative"


class MemoryConfig(Strict):
    """`memory.own`; the reference's `mounts` and `shareable` (other workspaces' corpora) are warned about and
    removed by `atlas.config.compat` when non-empty, so the model never holds them."""

    own: list[MemoryCorpus] = []


# ---------------------------------------------------------------- chat (issue #17, the reference's `chat`)


class ChatConfig(Strict):
    """The workspace's chat agent: `provider` and `model` override the daemon's `ATLAS_CHAT_PROVIDER` /
    `ATLAS_CHAT_MODEL`; `prompt` is added to the built-in system prompt; `tools` names the workspace's MCP tools
    (or whole servers) the agent is offered besides the job and memory tools (`atlas.chat.turn`)."""

    enabled: bool = True
    """The reference's switch: `false` makes every chat request answer `chat_unavailable`."""
    provider: Literal["openai", "anthropic", "openrouter", "ollama"] | None = None
    model: str | None = Field(default=None, min_length=1)
    prompt: str | None = None
    tools: list[str] = []


# ---------------------------------------------------------------- top level


class WorkspaceConfig(Strict):
    """The whole file. `version` may be left out (issue #14: a file with only `workspace` and `memory` is valid);
    when present it must be "1.0", the only version the reference and atlas know."""

    version: Literal["1.0"] = "1.0"
    workspace: WorkspaceInfo
    signals: dict[Annotated[str, Field(pattern=ID_PATTERN)], Signal] = {}
    jobs: dict[Annotated[str, Field(pattern=ID_PATTERN)], Job] = {}
    agents: dict[Annotated[str, Field(pattern=ID_PATTERN)], Agent] = {}
    tools: ToolsConfig = ToolsConfig()
    memory: MemoryConfig = MemoryConfig()
    chat: ChatConfig | None = None
