"""A provider-neutral conversation: what the tool loop keeps between model turns.

Why neutral types: the loop (call the model, run the tools it asked for, feed results back) is the same for the
OpenAI Chat Completions and the Anthropic Messages wire formats; only the translation to and from each format
differs, and that lives in one adapter module per format. History as data (as in Temporal's SDK): a turn is a
value, and a conversation is the list of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "AssistantTurn",
    "ModelCall",
    "TextSink",
    "ToolCallRequest",
    "ToolResultMessage",
    "ToolSpec",
    "TurnRequest",
    "Usage",
    "UserMessage",
]


@dataclass(frozen=True)
class ToolSpec:
    """A tool as offered to the model: its name, description and JSON Schema for the arguments."""

    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ToolCallRequest:
    """One call the model asked for. `args` is the decoded JSON object; `args_error` is set when the model sent
    arguments that are not a JSON object (the call is then answered with an error, never run)."""

    id: str
    name: str
    args: dict[str, Any]
    args_error: str | None = None


@dataclass
class Usage:
    """Token counts of one turn or, summed, of a whole loop."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    reported: bool = False

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.reported = self.reported or other.reported

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class UserMessage:
    text: str


@dataclass
class AssistantTurn:
    """What the model answered in one turn. `provider_blocks` keeps format-specific content that must be sent
    back verbatim (Anthropic's signed thinking blocks) when the conversation continues."""

    text: str = ""
    tool_calls: list[ToolCallRequest] = field(default_factory=list)
    reasoning: str | None = None
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    stop_reason: str | None = None
    provider_blocks: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class ToolResultMessage:
    """A tool's result as the model gets it: text, and whether the call failed."""

    call_id: str
    name: str
    text: str
    is_error: bool = False


Message = UserMessage | AssistantTurn | ToolResultMessage
TextSink = Callable[[str], None]
ToolChoice = Literal["auto", "required", "none"]


@dataclass(frozen=True)
class TurnRequest:
    """Everything one model call needs; `provider_options` go into the request body unchanged."""

    model: str
    system: str | None
    messages: list[Message]
    tools: list[ToolSpec]
    tool_choice: ToolChoice
    temperature: float | None
    max_tokens: int | None
    json_output: bool
    provider_options: dict[str, Any]
    stream: bool = True


class ModelCall(Protocol):
    """One model turn: send the conversation, stream text to `on_text`, return the answer."""

    def __call__(self, request: TurnRequest, on_text: TextSink) -> Awaitable[AssistantTurn]: ...
