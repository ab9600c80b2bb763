"""Sandboxed Jinja2 templating for workspace files (spec §2.6).

Workspace templates come from trusted files but render untrusted payload data, and a bad template must fail
its step (`template_error`), never the daemon. Hence a `SandboxedEnvironment` (no `__class__`/`__mro__`
escapes), `StrictUndefined` (a typo is an error, not an empty string), no autoescaping (we render JSON, argv
and URLs, not HTML), and caps on `**` and sequence `*` so that `{{ 2 ** 10 ** 9 }}` cannot stall the loop.

A string that is exactly one `{{ expr }}` renders to the expression's native value (A), so that
`"{{ results.x.n }}"` stays an integer when it crosses into a child payload.

Every value handed out by `secret("NAME")` is remembered so that the recorder can `redact` it from events and
log lines (§10.7).
"""

from __future__ import annotations

import json
import os
import re
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import StrictUndefined, Undefined
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment, SecurityError

__all__ = ["REDACTED", "TemplateError", "Templater"]

REDACTED = "***"
#: Strings (after native rendering) that `truthy` treats as false, compared case-insensitively.
FALSY_STRINGS = frozenset({"", "false", "0", "no", "none", "null"})

_MAX_POWER_EXPONENT = 1024
_MAX_REPEAT_LENGTH = 1_000_000
_MAX_SOURCE_IN_MESSAGE = 200
_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)


class TemplateError(Exception):
    """A template failed to compile or render; the step fails with errorCode `template_error`."""


class _Sandbox(SandboxedEnvironment):
    """The stock sandbox plus limits on the two operators that can allocate unbounded memory or CPU."""

    intercepted_binops = frozenset({"**", "*"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if (
                isinstance(right, int)
                and right > _MAX_POWER_EXPONENT
                and isinstance(left, int)
                and abs(left) > 1
            ):
                raise SecurityError(f"exponent {right} is too large (limit {_MAX_POWER_EXPONENT})")
        elif operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(count, int):
                    if len(seq) * count > _MAX_REPEAT_LENGTH:
                        raise SecurityError(f"repetition result too long (limit {_MAX_REPEAT_LENGTH})")
        return super().call_binop(context, operator, left, right)


def _short(source: str) -> str:
    return source if len(source) <= _MAX_SOURCE_IN_MESSAGE else source[:_MAX_SOURCE_IN_MESSAGE] + "…"


def _to_plain(value: Any) -> Any:
    """Turn a native expression result into plain JSON-like data, copying containers.

    Copying matters: `{{ results.x }}` would otherwise hand out the stored result itself, and whoever mutates
    the rendered value would rewrite history. A `StrictUndefined` anywhere in the value raises here (via
    `str`).
    """
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined raises UndefinedError / SecurityError with jinja's message
        return None
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return str(value)  # drops Markup and other str subclasses
    if isinstance(value, Mapping):
        return {key: _to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset | range | types.GeneratorType | Iterator):
        return [_to_plain(item) for item in value]
    return str(value)


class Templater:
    """One sandboxed environment, its compiled-template caches and the secrets it has revealed.

    Thread-safe: the caches are `functools.lru_cache` and the secret set is guarded by a lock, because
    `redact` may be called from worker threads while the event loop renders.
    """

    def __init__(self, *, cache_size: int = 1024, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ
        self._env = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self._env.globals["secret"] = self._secret
        self._compile_template: Callable[[str], jinja2.Template] = lru_cache(maxsize=cache_size)(
            self._env.from_string
        )
        self._compile_expression: Callable[[str], Any] = lru_cache(maxsize=cache_size)(
            self._compile_expression_uncached
        )
        self._secrets_lock = threading.Lock()
        self._secrets: set[str] = set()
        self._secret_pattern: re.Pattern[str] | None = None

    # ------------------------------------------------------------ secrets

    def _secret(self, name: Any) -> str:
        environ = os.environ if self._environ is None else self._environ
        if not isinstance(name, str) or not name:
            raise TemplateError("secret() takes the name of an environment variable")
        value = environ.get(name)
        if value is None:
            raise TemplateError(f"secret({name!r}): environment variable is not set")
        self.add_secret(value)
        return value

    def add_secret(self, value: str) -> None:
        """Remember a value that must never be recorded (also for LLM keys, shell env values, tokens)."""
        if not value:
            return  # redacting "" would replace every gap between characters
        variants = {value, json.dumps(value)[1:-1]}  # also catch it inside an already-serialised JSON string
        with self._secrets_lock:
            if variants <= self._secrets:
                return
            self._secrets |= variants
            ordered = sorted(self._secrets, key=len, reverse=True)  # longest first: overlapping secrets
            self._secret_pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def redact(self, obj: Any) -> Any:
        """Return a copy of `obj` in which every remembered secret inside any string (keys too) is `***`."""
        with self._secrets_lock:
            pattern = self._secret_pattern
        return self._redact(obj, pattern)

    def _redact(self, obj: Any, pattern: re.Pattern[str] | None) -> Any:
        if isinstance(obj, str):
            return pattern.sub(REDACTED, obj) if pattern is not None else obj
        if isinstance(obj, Mapping):
            return {self._redact(key, pattern): self._redact(value, pattern) for key, value in obj.items()}
        if isinstance(obj, list | tuple):
            return [self._redact(item, pattern) for item in obj]
        return obj

    # ------------------------------------------------------------ rendering

    def render(self, value: Any, variables: Mapping[str, Any]) -> Any:
        """Render every str leaf of `value` (dicts and lists recursively); other leaves come back unchanged.

        Raises TemplateError for a syntax error, an undefined variable, an unsafe attribute or any error
        raised while evaluating.
        """
        if isinstance(value, str):
            return self._render_str(value, variables)
        if isinstance(value, Mapping):
            return {key: self.render(item, variables) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.render(item, variables) for item in value]
        return value

    def truthy(self, value: Any, variables: Mapping[str, Any]) -> bool:
        """Evaluate an `if` / `cond`. Callers treat an absent condition as true before calling this.

        bool passes through; a string is rendered natively and "false", "0", "", "no", "none", "null" (any
        case) count as false, because `if: "{{ 'no' if x else 'yes' }}"`-style templates yield strings.
        """
        if isinstance(value, bool):
            return value
        rendered = self.render(value, variables) if isinstance(value, str) else value
        if isinstance(rendered, str):
            return rendered.strip().lower() not in FALSY_STRINGS
        return bool(rendered)

    def _render_str(self, source: str, variables: Mapping[str, Any]) -> Any:
        if "{{" not in source and "{%" not in source:
            return source
        context = dict(variables)
        try:
            match = _SINGLE_EXPRESSION.match(source)
            if match is not None:
                expression = self._compile_expression(match.group("expr"))
                if expression is not None:
                    return _to_plain(expression(context))
            return self._compile_template(source).render(context)
        except TemplateError:
            raise
        except SecurityError as exc:
            raise TemplateError(f"unsafe template {_short(source)!r}: {exc}") from exc
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"undefined value in template {_short(source)!r}: {exc}") from exc
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"syntax error in template {_short(source)!r}: {exc.message}") from exc
        except Exception as exc:  # any evaluation error (TypeError, ZeroDivisionError…) fails only the step
            raise TemplateError(
                f"cannot render template {_short(source)!r}: {type(exc).__name__}: {exc}"
            ) from exc

    def _compile_expression_uncached(self, expr: str) -> Any:
        """The compiled expression, or None when `expr` is not one (cached too, so it is parsed once)."""
        # `{{- x -}}` is whitespace control, not negation: strip the markers the way jinja's lexer would.
        if expr.startswith("-"):
            expr = expr[1:]
        if expr.endswith("-"):
            expr = expr[:-1]
        try:
            return self._env.compile_expression(expr, undefined_to_none=False)
        except jinja2.TemplateSyntaxError:
            return None  # e.g. "{{ a }} and {{ b }}" matched the regex: render it as a text template
