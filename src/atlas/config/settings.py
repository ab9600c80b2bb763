"""Daemon settings from the environment (spec §9 "Daemon settings"); CLI flags override them.

Read once at start into a frozen dataclass so the rest of the code never reads `os.environ` itself.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from atlas.config.durations import parse_duration

_SIZE = re.compile(r"^(\d+)\s*(b|kib|kb|mib|mb|gib|gb)?$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str) -> int:
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"invalid size {text!r}: expected e.g. 1MiB, 512KiB or a number of bytes")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (the default bind; anything else needs a token, spec §10)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def parse_flag(name: str, value: str | None) -> bool:
    """A boolean setting; anything unrecognised is an error, since a typo must not leave a protection off."""
    text = (value or "").strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"{name} must be 1/0, true/false, yes/no or on/off, not {value!r}")


def parse_roots(value: str | None) -> tuple[Path, ...]:
    """`ATLAS_WORKSPACE_ROOTS`: os.pathsep-separated absolute directories, resolved (symlinks followed) now, so
    the check compares resolved paths with resolved paths."""
    roots = []
    for entry in (value or "").split(os.pathsep):
        entry = entry.strip()
        if not entry:
            continue
        path = Path(entry).expanduser()
        if not path.is_absolute():
            raise ValueError(f"ATLAS_WORKSPACE_ROOTS entries must be absolute directories, not {entry!r}")
        roots.append(path.resolve())
    return tuple(roots)


def _log_format(value: str | None) -> str:
    """ATLAS_LOG_FORMAT: `text` (the default) or `json`; anything else is refused rather than silently ignored."""
    fmt = (value or "text").strip().lower()
    if fmt not in ("text", "json"):
        raise ValueError(f"ATLAS_LOG_FORMAT must be text or json, not {value!r}")
    return fmt


def _seconds(name: str, default: str, *, allow_zero: bool = False) -> float:
    return parse_duration(os.environ.get(name) or default, allow_days=True, allow_zero=allow_zero)


@dataclass(frozen=True)
class Settings:
    home: Path
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    # The token is needed even on loopback (shared hosts): atlasd refuses to start without one.
    require_token: bool = False
    # When set, API clients may add workspaces from under these (resolved) directories only.
    workspace_roots: tuple[Path, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    nats_url: str | None = None
    nats_creds: str | None = None
    nats_replicas: int = 1
    max_body: int = 1024 * 1024
    max_concurrent_sessions: int = 32
    max_cascade_depth: int = 8
    max_tree_sessions: int = 1000
    queue_timeout_s: float = 3600.0
    shutdown_grace_s: float = 10.0
    session_retention_s: float = 90 * 86400.0
    idempotency_ttl_s: float = 86400.0
    memory_retention_s: float = 0.0  # ATLAS_MEMORY_RETENTION: memory entries age out after this; 0 keeps them
    ack_wait_s: float = 30.0
    heartbeat_ttl_s: float = 30.0
    bus_retry_s: float = 30.0  # ATLAS_BUS_RETRY: how long writes ride through a silent bus (leader elections)
    llm_base_url: str | None = None
    chat_provider: str | None = None  # ATLAS_CHAT_PROVIDER: the chat agent's provider (openai, anthropic, …)
    chat_model: str | None = None  # ATLAS_CHAT_MODEL: the chat agent's model; without it (or a `chat:` model) no chat
    chat_retention_s: float = 90 * 86400.0  # ATLAS_CHAT_RETENTION: chat records age out after this; 0 keeps them
    chat_job_wait_s: float = 60.0  # ATLAS_CHAT_JOB_WAIT: how long a chat's job tool waits for the run's end
    database_url: str | None = None  # ATLAS_DATABASE_URL: a PostgreSQL read model shared by daemons (issue #15)
    database_pool: int = 4  # ATLAS_DATABASE_POOL: at most this many connections per daemon
    log_level: str = "info"
    log_format: str = "text"  # ATLAS_LOG_FORMAT: text, or json (one object per line, issue #18)
    trace_url_template: str | None = None  # ATLAS_TRACE_URL_TEMPLATE: a trace's page, `{traceId}` filled in
    workspaces: tuple[Path, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        home = Path(env.get("ATLAS_HOME") or Path.home() / ".atlas").expanduser().resolve()
        split = lambda v: tuple(x.strip() for x in (v or "").split(",") if x.strip())  # noqa: E731
        return cls(
            home=home,
            host=env.get("ATLAS_HOST") or "127.0.0.1",
            port=int(env.get("ATLAS_PORT") or 8080),
            token=env.get("ATLAS_TOKEN") or None,
            require_token=parse_flag("ATLAS_REQUIRE_TOKEN", env.get("ATLAS_REQUIRE_TOKEN")),
            workspace_roots=parse_roots(env.get("ATLAS_WORKSPACE_ROOTS")),
            allowed_hosts=split(env.get("ATLAS_ALLOWED_HOSTS")),
            cors_origins=split(env.get("ATLAS_CORS_ORIGINS")),
            nats_url=env.get("ATLAS_NATS_URL") or None,
            nats_creds=env.get("ATLAS_NATS_CREDS") or None,
            nats_replicas=int(env.get("ATLAS_NATS_REPLICAS") or 1),
            max_body=parse_size(env.get("ATLAS_MAX_BODY") or "1MiB"),
            max_concurrent_sessions=int(env.get("ATLAS_MAX_CONCURRENT_SESSIONS") or 32),
            max_cascade_depth=int(env.get("ATLAS_MAX_CASCADE_DEPTH") or 8),
            max_tree_sessions=int(env.get("ATLAS_MAX_TREE_SESSIONS") or 1000),
            queue_timeout_s=_seconds("ATLAS_QUEUE_TIMEOUT", "1h"),
            shutdown_grace_s=_seconds("ATLAS_SHUTDOWN_GRACE", "10s"),
            session_retention_s=_seconds("ATLAS_SESSION_RETENTION", "90d", allow_zero=True),
            idempotency_ttl_s=_seconds("ATLAS_IDEMPOTENCY_TTL", "24h"),
            memory_retention_s=_seconds("ATLAS_MEMORY_RETENTION", "0s", allow_zero=True),
            ack_wait_s=_seconds("ATLAS_ACK_WAIT", "30s"),
            heartbeat_ttl_s=_seconds("ATLAS_HEARTBEAT_TTL", "30s"),
            bus_retry_s=_seconds("ATLAS_BUS_RETRY", "30s", allow_zero=True),
            llm_base_url=env.get("ATLAS_LLM_BASE_URL") or None,
            chat_provider=env.get("ATLAS_CHAT_PROVIDER") or None,
            chat_model=env.get("ATLAS_CHAT_MODEL") or None,
            chat_retention_s=_seconds("ATLAS_CHAT_RETENTION", "90d", allow_zero=True),
            chat_job_wait_s=_seconds("ATLAS_CHAT_JOB_WAIT", "60s"),
            database_url=env.get("ATLAS_DATABASE_URL") or None,
            database_pool=max(2, int(env.get("ATLAS_DATABASE_POOL") or 4)),
            log_level=(env.get("ATLAS_LOG_LEVEL") or "info").lower(),
            log_format=_log_format(env.get("ATLAS_LOG_FORMAT")),
            trace_url_template=env.get("ATLAS_TRACE_URL_TEMPLATE") or None,
        )

    def with_overrides(self, **kwargs: object) -> Settings:
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})  # type: ignore[arg-type]
