"""The JSON Schemas `/openapi.json` publishes for the session shapes, generated from the TypedDicts that declare them.

Why generated: the durable events (`atlas.sessions.events`) and the fold's SessionView, AgentBlock and
SessionSummary (`atlas.sessions.reducer`) are declared once, as TypedDicts that the runtime builds and the reducer
produces. Describing them a second time by hand is how the document drifted from what the daemon writes (a
`session:complete` without `durationMs`, a `session:start` with an undocumented `runner`); generating the schemas
from the same types leaves nothing to keep in step.

Pydantic only generates here, once, when the document is first built; it never validates events (they stay plain
dicts on the hot path). The output is OpenAPI 3.1 / JSON Schema 2020-12: every named type is its own component,
`$ref`s point into `#/components/schemas/`, nothing is nested under `$defs`, optional fields are left out of
`required` (never `nullable`), and each event's `type` is a `const`.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode

from atlas.sessions.events import EVENT_TYPES, EphemeralChunk, PlannedStep
from atlas.sessions.reducer import AgentBlock, SessionSummary, SessionView

__all__ = ["EVENT_UNION", "REF_TEMPLATE", "component_schemas"]

REF_TEMPLATE: Final = "#/components/schemas/{model}"
#: The component that stands for any durable event.
EVENT_UNION: Final = "Event"

# The published types; each is a component named after its class, as are the types they reference (KeyDetail,
# Usage, AiSummary, ChunkBody and its three chunk kinds, StreamChunkBody with the two tool-call kinds).
_TOP_LEVEL: Final[tuple[type[Any], ...]] = (
    *EVENT_TYPES.values(),
    PlannedStep,
    EphemeralChunk,
    AgentBlock,
    SessionView,
    SessionSummary,
)


class _Generator(GenerateJsonSchema):
    """Pydantic's generator without the `title` it gives every property (the property name says it already)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def component_schemas() -> dict[str, dict[str, Any]]:
    """Every generated component, by name (a new object on each call), plus `Event`, the union of the events."""
    inputs: list[tuple[str, JsonSchemaMode, TypeAdapter[Any]]] = [
        (cls.__name__, "validation", TypeAdapter(cls)) for cls in _TOP_LEVEL
    ]
    by_key, defs = TypeAdapter.json_schemas(inputs, ref_template=REF_TEMPLATE, schema_generator=_Generator)
    components: dict[str, dict[str, Any]] = dict(defs.get("$defs", {}))
    for (name, _mode), schema in by_key.items():
        if schema.get("$ref") != REF_TEMPLATE.format(model=name):  # not referenced by another: generated inline
            components[name] = schema
    for schema in components.values():
        schema.pop("title", None)
        _type_first(schema)
    components[EVENT_UNION] = _event_union()
    _check_flat(components)
    return components


def _type_first(schema: dict[str, Any]) -> None:
    """List `type` first among an event's properties, as on the wire (pydantic puts a TypedDict base's fields
    first, and the events share their `sessionId`/`seq`/`timestamp` head through one)."""
    properties = schema.get("properties")
    if isinstance(properties, dict) and "type" in properties:
        schema["properties"] = {"type": properties["type"], **properties}


def _event_union() -> dict[str, Any]:
    names = {event_type: cls.__name__ for event_type, cls in EVENT_TYPES.items()}
    return {
        "description": "A durable session event: `seq` starts at 1 per session and grows by 1 without gaps",
        "oneOf": [{"$ref": REF_TEMPLATE.format(model=name)} for name in names.values()],
        "discriminator": {"propertyName": "type",
                          "mapping": {t: REF_TEMPLATE.format(model=name) for t, name in names.items()}},
    }


def _check_flat(node: Any) -> None:
    """Fail at build time, not in a client, if a schema ever nests `$defs` or refers outside the components."""
    if isinstance(node, dict):
        if "$defs" in node:
            raise ValueError("nested $defs in a generated schema")
        target = node.get("$ref")
        if target is not None and not str(target).startswith("#/components/schemas/"):
            raise ValueError(f"$ref outside the components: {target}")
        for value in node.values():
            _check_flat(value)
    elif isinstance(node, list):
        for value in node:
            _check_flat(value)
