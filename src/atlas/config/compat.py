"""Friday workspace files that load unedited (issue #14): the reference's keys atlas does not implement.

A `workspace.yml` written for Friday Studio uses keys of its schema (`packages/config/src/workspace.ts`, `agents.ts`,
`jobs.ts`, `mcp.ts`, `signals.ts`, the FSM action schema of `packages/fsm-engine/`) that name features atlas lacks:
skills, permissions, bundled agents, output types… Refusing the whole file over one of them made
no reference workspace load; accepting them silently would let a user believe they work. So each such key loads
with a **warning** naming it and its position, and is removed before the pydantic model sees the document: the
rest of atlas never meets a key it does not implement. A key in neither schema is still an error (spec §2.8).

The walk below knows, per level, which keys the reference accepts and atlas does not. It runs on the plain copy of
the document that is about to be validated (it mutates that copy, never the round-trip tree, which keeps every
position for the warnings). It only prunes where the shape is the expected one (a mapping where a mapping belongs);
anything else is left for the model to report as an error.

Agents atlas cannot run (a `type: system` agent, a bundled `type: atlas` agent such as `agent: web`) are a special
case: removing them would turn every reference to them into an "unknown agent" error, and keeping them would hand
the runtime an agent it cannot start. They are removed from `agents` and returned by name, so the cross-checks
accept references to them and a job that uses one answers `422 agent_unavailable` when triggered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from atlas.config.model import BUILTIN_AGENTS

Segment = str | int
Path = tuple[Segment, ...]
Warn = Callable[[Path, str], None]

# Per level: key → the feature it names (the warning reads "'<key>' is ignored: atlas does not support <feature>").
TOP_LEVEL: Mapping[str, str] = {
    "server": "the workspace's own server settings",
    "skills": "skills",
    "communicators": "communicators (chat platforms)",
    "notifications": "notifications",
    "federation": "federation between workspaces",
    "improvement": "the self-improvement policy",
    "permissions": "permissions",
    "delegation": "delegation budgets",
    "validation": "LLM output validation",
    "artifacts": "artifacts",
}
WORKSPACE_INFO: Mapping[str, str] = {"version": "a workspace version"}
WORKSPACE_TIMEOUT: Mapping[str, str] = {"progressTimeout": "a progress watchdog for jobs"}
JOB: Mapping[str, str] = {
    "name": "an MCP job name (atlas names a job by its id and title)",
    "entrypoint": "a TypeScript job entry point",
    "context": "file context",
    "prompt": "a supervisor prompt",
    "inputs": "job inputs (chat tools)",
    "skills": "skills",
    "success": "a job success condition",
    "error": "a job error condition",
    "outputs": "memory outputs",
    "improvement_key_convention": "the self-improvement policy",
    "scope_exclusions": "the self-improvement policy",
    "improvement": "the self-improvement policy",
    "concurrency": "a per-job concurrency policy (atlas sets `concurrency` on the signal)",
}
JOB_CONFIG_ATLAS = frozenset({"timeout", "max_steps"})
JOB_CONFIG: Mapping[str, str] = {"supervision": "supervision levels"}
TRIGGER: Mapping[str, str] = {"condition": "a trigger condition (the job runs on every trigger)"}
EXECUTION: Mapping[str, str] = {"context": "file context"}
EXECUTION_AGENT: Mapping[str, str] = {
    "nickname": "agent nicknames",
    "context": "agent context",
    "dependencies": "explicit agent dependencies",
    "tools": "a per-step tool filter",
}
FSM: Mapping[str, str] = {
    "documentTypes": "FSM document types",
    "functions": "FSM code functions",
    "tools": "FSM tool functions",
}
STATE: Mapping[str, str] = {"documents": "FSM documents"}
TRANSITION: Mapping[str, str] = {"guards": "guard functions (the transition is taken unguarded)"}
STEP_ACTION: Mapping[str, str] = {
    "outputType": "an output type",
    "skills": "a step skill filter",
    "summary": "an action summary",
    "validate": "LLM output validation",
    "run_code": "run_code",
}
ACTION_TYPES: Mapping[str, str] = {
    "code": "a `code` action",
    "notification": "a `notification` action (chat platforms)",
}
LLM_AGENT_CONFIG: Mapping[str, str] = {
    "success": "an agent success condition",
    "error": "an agent error condition",
}
ATLAS_AGENT: Mapping[str, str] = {
    "prompt": "a prompt for a built-in agent",
    "env": "an environment for a built-in agent",
}
# `memory.mounts` / `memory.shareable`: corpora of other workspaces. An empty one is dropped without a word (it asks
# for nothing); a non-empty one warns.
MEMORY: Mapping[str, str] = {
    "mounts": "mounting other workspaces' memory corpora (only `memory.own` is used)",
    "shareable": "sharing memory corpora with other workspaces",
}
SIGNAL_PROVIDERS = frozenset({"fs-watch", "slack", "telegram", "whatsapp", "discord"})
MCP_AUTH: Mapping[str, str] = {
    "header": "a custom auth header (atlas sends `Authorization: Bearer`)",
    "username_env": "basic auth",
    "password_env": "basic auth",
}


def ignored(key: str, feature: str) -> str:
    """The one wording of a warned key, so every level reads alike."""
    return f"'{key}' is ignored: atlas does not support {feature}"


class _Pruner:
    """One walk over the plain document; `warn` positions each warning at its key (the loader's reporter)."""

    def __init__(self, warn: Warn) -> None:
        self.warn = warn
        self.unavailable: dict[str, str] = {}
        self.kept: dict[Path, list[int]] = {}

    def drop(self, node: Any, at: Path, keys: Mapping[str, str]) -> None:
        if not isinstance(node, dict):
            return
        for key in [k for k in node if isinstance(k, str) and k in keys]:
            self.warn((*at, key), ignored(key, keys[key]))
            del node[key]

    def run(self, doc: dict[str, Any]) -> None:
        self.drop(doc, (), TOP_LEVEL)
        info = doc.get("workspace")
        self.drop(info, ("workspace",), WORKSPACE_INFO)
        if isinstance(info, dict):
            self.drop(info.get("timeout"), ("workspace", "timeout"), WORKSPACE_TIMEOUT)
        for signal_id, signal in _items(doc.get("signals")):
            self.signal(("signals", signal_id), signal)
        for agent_id, agent in _items(doc.get("agents")):
            self.agent(doc["agents"], agent_id, agent)
        for job_id, job in _items(doc.get("jobs")):
            self.job(("jobs", job_id), job)
        self.memory(doc.get("memory"))
        tools = doc.get("tools")
        if isinstance(tools, dict) and isinstance(tools.get("mcp"), dict):
            servers = tools["mcp"].get("servers")
            for server_id, server in _items(servers):
                self.mcp_server(servers, ("tools", "mcp", "servers", server_id), server_id, server)

    # memory

    def memory(self, memory: Any) -> None:
        if not isinstance(memory, dict):
            return
        for key in [k for k in MEMORY if k in memory and memory[k] in ([], {}, None)]:
            del memory[key]
        self.drop(memory, ("memory",), MEMORY)

    # signals

    def signal(self, at: Path, signal: Any) -> None:
        """A provider atlas lacks (Slack, a file watcher…) loads as a `system` signal: jobs it triggers still load
        and can be run from the API or a `signal` action; nothing outside fires it."""
        if not isinstance(signal, dict) or signal.get("provider") not in SIGNAL_PROVIDERS:
            return
        provider = signal["provider"]
        self.warn((*at, "provider"), f"atlas does not support provider '{provider}': loaded as a 'system' signal"
                                     " (fired only by the API or a signal action); its 'config' is ignored")
        signal["provider"] = "system"
        signal.pop("config", None)

    # agents

    def agent(self, agents: dict[str, Any], agent_id: str, agent: Any) -> None:
        at: Path = ("agents", agent_id)
        if not isinstance(agent, dict):
            return
        kind = agent.get("type")
        if kind == "system":
            name = agent.get("agent")
            what = f"system agent '{name}'" if isinstance(name, str) else "a system agent"
            self.unavailable_agent(agents, agent_id, (*at, "type"), what)
        elif kind == "atlas":
            name = agent.get("agent")
            if isinstance(name, str) and name not in BUILTIN_AGENTS:
                self.unavailable_agent(agents, agent_id, (*at, "agent"), f"bundled agent '{name}'")
                return
            self.drop(agent, at, ATLAS_AGENT)
        elif kind == "llm":
            self.drop(agent.get("config"), (*at, "config"), LLM_AGENT_CONFIG)

    def unavailable_agent(self, agents: dict[str, Any], agent_id: str, at: Path, what: str) -> None:
        self.warn(at, f"{what} is not available in atlas: jobs that use agent '{agent_id}' cannot run"
                      " (a trigger answers 422 agent_unavailable)")
        self.unavailable[agent_id] = what
        del agents[agent_id]

    # jobs

    def job(self, at: Path, job: Any) -> None:
        if not isinstance(job, dict):
            return
        self.drop(job, at, JOB)
        for index, trigger in _entries(job.get("triggers")):
            self.drop(trigger, (*at, "triggers", index), TRIGGER)
        self.job_config((*at, "config"), job.get("config"))
        execution = job.get("execution")
        self.drop(execution, (*at, "execution"), EXECUTION)
        if isinstance(execution, dict):
            for index, step in _entries(execution.get("agents")):
                self.drop(step, (*at, "execution", "agents", index), EXECUTION_AGENT)
        fsm = job.get("fsm")
        self.drop(fsm, (*at, "fsm"), FSM)
        if isinstance(fsm, dict):
            for state_id, state in _items(fsm.get("states")):
                self.state((*at, "fsm", "states", state_id), state)

    def job_config(self, at: Path, config: Any) -> None:
        """The reference's job `config` is open: keys of its own (`supervision`) and any the job's code reads."""
        if not isinstance(config, dict):
            return
        self.drop(config, at, JOB_CONFIG)
        for key in [k for k in config if isinstance(k, str) and k not in JOB_CONFIG_ATLAS]:
            self.warn((*at, key), ignored(key, "a free job config key (read by a job's code in Friday)"))
            del config[key]

    def state(self, at: Path, state: Any) -> None:
        if not isinstance(state, dict):
            return
        self.drop(state, at, STATE)
        self.actions((*at, "entry"), state.get("entry"))
        for event, spec in _items(state.get("on")):
            if isinstance(spec, list):
                for index, transition in enumerate(spec):
                    self.transition((*at, "on", event, index), transition)
            else:
                self.transition((*at, "on", event), spec)

    def transition(self, at: Path, transition: Any) -> None:
        if not isinstance(transition, dict):
            return
        self.drop(transition, at, TRANSITION)
        self.actions((*at, "actions"), transition.get("actions"))

    def actions(self, at: Path, actions: Any) -> None:
        """Drops the actions of a type atlas lacks (warned, so a reader knows that step will not happen), then the
        keys atlas lacks on the step actions it has."""
        if not isinstance(actions, list):
            return
        kept: list[int] = []
        for index, action in enumerate(actions):
            kind = action.get("type") if isinstance(action, dict) else None
            if isinstance(kind, str) and kind in ACTION_TYPES:
                self.warn((*at, index, "type"), f"atlas does not support {ACTION_TYPES[kind]}: the action is"
                                                " ignored")
                continue
            if kind in ("agent", "llm"):
                self.drop(action, (*at, index), STEP_ACTION)
            kept.append(index)
        if len(kept) < len(actions):
            # Later problems name the file's indices, not the shortened list's (`Pruned.original`).
            self.kept[at] = kept
            actions[:] = [actions[i] for i in kept]

    # MCP servers

    def mcp_server(self, servers: dict[str, Any], at: Path, server_id: str, server: Any) -> None:
        """A transport or an auth scheme atlas cannot speak drops the server (its tools are then unknown at first
        use) rather than letting it connect some other way."""
        if not isinstance(server, dict):
            return
        transport = server.get("transport")
        if isinstance(transport, dict) and transport.get("type") == "sse":
            self.warn((*at, "transport", "type"), "atlas does not support transport 'sse' (use 'http', streamable"
                                                  f" HTTP): MCP server '{server_id}' is not loaded")
            del servers[server_id]
            return
        auth = server.get("auth")
        if isinstance(auth, dict) and auth.get("type") in ("api_key", "basic"):
            self.warn((*at, "auth", "type"), f"atlas does not support auth type '{auth['type']}' (only 'bearer'):"
                                             f" MCP server '{server_id}' is not loaded")
            del servers[server_id]
            return
        self.drop(auth, (*at, "auth"), MCP_AUTH)


def _items(node: Any) -> list[tuple[str, Any]]:
    """A mapping's string-keyed entries, copied (the walk may delete while iterating); nothing for a non-mapping."""
    return [(k, v) for k, v in node.items() if isinstance(k, str)] if isinstance(node, dict) else []


def _entries(node: Any) -> list[tuple[int, Any]]:
    return list(enumerate(node)) if isinstance(node, list) else []


class Pruned:
    """What the walk took out that later stages must know about."""

    def __init__(self, unavailable: dict[str, str], kept: dict[Path, list[int]]) -> None:
        self.unavailable_agents = unavailable
        """Agents atlas cannot run, by id, with what they are (`"bundled agent 'web'"`)."""
        self._kept = kept

    def original(self, path: Path) -> Path:
        """`path` into the pruned document → the same place in the file: an action list that lost an action (a
        `code` one, say) is shorter, so the indices after it are shifted back."""
        out: list[Segment] = []
        for seg in path:
            kept = self._kept.get(tuple(out))
            if kept is not None and isinstance(seg, int) and not isinstance(seg, bool) and 0 <= seg < len(kept):
                seg = kept[seg]
            out.append(seg)
        return tuple(out)


def prune_reference_keys(doc: dict[str, Any], warn: Warn) -> Pruned:
    """Remove (and warn about) every reference-only key of `doc`, in place, and say what was taken out."""
    pruner = _Pruner(warn)
    pruner.run(doc)
    return Pruned(pruner.unavailable, pruner.kept)
