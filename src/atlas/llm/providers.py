"""Which server a `provider:` talks to, with which key, in which wire format (issue #14, item 1).

Precedence, as the issue fixes it:
- base URL: the agent's `base_url`; then the provider's usual variable (`OPENAI_BASE_URL`, `ANTHROPIC_BASE_URL`);
  then `ATLAS_LLM_BASE_URL` for the OpenAI-compatible providers (spec §2.4); then the provider's default.
- API key: the variable named by `api_key_env`; else the provider's usual variable. A provider that needs a key
  and has none fails the step with `missing_credentials` before any request.

Without `provider` (workspaces written for atlas before #14) the server is OpenAI-compatible, its URL is
`base_url` or `ATLAS_LLM_BASE_URL` (one of them is required, as before) and a key is sent only when
`api_key_env` names one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import httpx

from atlas.agents.base import StepError

__all__ = ["PROVIDERS", "Endpoint", "ProviderInfo", "resolve_endpoint"]

Wire = Literal["openai", "anthropic"]


@dataclass(frozen=True)
class ProviderInfo:
    wire: Wire
    key_env: str | None
    url_env: str | None
    default_url: str
    needs_key: bool


PROVIDERS: dict[str, ProviderInfo] = {
    "openai": ProviderInfo("openai", "OPENAI_API_KEY", "OPENAI_BASE_URL", "https://api.openai.com/v1", True),
    "anthropic": ProviderInfo(
        "anthropic", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "https://api.anthropic.com", True
    ),
    "openrouter": ProviderInfo("openai", "OPENROUTER_API_KEY", None, "https://openrouter.ai/api/v1", True),
    # a local Ollama serves the OpenAI-compatible API without a key
    "ollama": ProviderInfo("openai", None, "OLLAMA_BASE_URL", "http://127.0.0.1:11434/v1", False),
}


@dataclass(frozen=True)
class Endpoint:
    """Where one step's model calls go. `api_key` is None for a keyless server (no Authorization header)."""

    provider: str
    wire: Wire
    base_url: str
    api_key: str | None


def resolve_endpoint(
    provider: str | None,
    base_url: str | None,
    api_key_env: str | None,
    *,
    default_base_url: str | None,
    environ: Mapping[str, str],
) -> Endpoint:
    """Apply the precedence rules above; raises StepError (`llm_error`, `missing_credentials`)."""
    if provider is None:
        url = base_url or default_base_url
        if not url:
            raise StepError("llm_error", "no base_url: set config.base_url or ATLAS_LLM_BASE_URL (or a provider)")
        key = _key(api_key_env, None, environ, needs_key=api_key_env is not None)
        return Endpoint("openai-compatible", "openai", _checked(url), key)
    info = PROVIDERS[provider]
    url = base_url or (environ.get(info.url_env) if info.url_env else None)
    if not url and info.wire == "openai":
        url = default_base_url
    key = _key(api_key_env, info.key_env, environ, needs_key=info.needs_key or api_key_env is not None)
    return Endpoint(provider, info.wire, _checked(url or info.default_url), key)


def _key(api_key_env: str | None, usual: str | None, environ: Mapping[str, str], *, needs_key: bool) -> str | None:
    name = api_key_env or usual
    value = environ.get(name, "") if name else ""
    if value:
        return value
    if not needs_key:
        return None
    if name is None:
        raise StepError("missing_credentials", "no API key: set api_key_env")
    source = "api_key_env" if api_key_env else "the provider's usual variable"
    raise StepError("missing_credentials", f"environment variable {name} ({source}) is unset or empty")


def _checked(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise StepError("llm_error", f"invalid base_url: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise StepError("llm_error", "base_url must be an absolute http:// or https:// URL")
    return url.rstrip("/")
