"""Sandboxed Jinja2 templating for workspace files (spec §2.6).

Workspace templates come from trusted files but render untrusted payload data, and a bad template must fail
its step (`template_error`), never the daemon. Hence a `SandboxedEnvironment` (no `__class__`/`__mro__`
escapes), `StrictUndefined` (a typo is an error, not an empty string), no autoescaping (we render JSON, argv
and URLs, not HTML).

A payload can still make a template expensive (`range(payload.n)` in two nested loops, `**` chained on its own
result), so every render has a budget (bug 11): at most `MAX_ITERATIONS` loop iterations, `MAX_OUTPUT_CHARS` of
output, values built inside the template (namespace attributes, call arguments and results, `+`, `*`, `**`
results) of at most `MAX_VALUE_LENGTH` items or `MAX_INT_BITS` bits, and `MAX_RENDER_SECONDS` of time. Exceeding
any of them is a `TemplateError`. The async entry points (`render_async`, `truthy_async`) render on a small
thread pool so that even a render that uses its whole budget never stalls the event loop.

A string that is exactly one `{{ expr }}` renders to the expression's native value (A), so that
`"{{ results.x.n }}"` stays an integer when it crosses into a child payload.

Every value handed out by `secret("NAME")` is remembered so that the recorder can `redact` it from events and
log lines (§10.7), in any letter case and reversed too; `secret()` refuses the daemon's own credentials.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import threading
import time
import types
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, TypeVar, cast

import jinja2
from jinja2 import StrictUndefined, Undefined, nodes
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from jinja2.utils import Namespace

__all__ = [
    "MAX_ITERATIONS",
    "MAX_OUTPUT_CHARS",
    "MAX_RENDER_SECONDS",
    "REDACTED",
    "TemplateError",
    "Templater",
]

REDACTED = "***"
#: Strings (after native rendering) that `truthy` treats as false, compared case-insensitively.
FALSY_STRINGS = frozenset({"", "false", "0", "no", "none", "null"})

#: Loop iterations one render may run, over all its `for` loops together (jinja caps one `range` at 100 000).
MAX_ITERATIONS = 100_000
#: Characters a text template may produce (a native `{{ expr }}` may hand out larger data that already exists).
MAX_OUTPUT_CHARS = 1024 * 1024
#: Time one render may take: a step fails with `template_error` "within about a second" (bug 11).
MAX_RENDER_SECONDS = 1.0
#: Items (characters for a string) of a value built inside a template and kept, passed or returned.
MAX_VALUE_LENGTH = 4 * 1024 * 1024
#: Bits of an integer built by `**` or `*` (about 20 000 digits): far below anything that costs time.
MAX_INT_BITS = 65_536

_MAX_POWER_EXPONENT = 1024
_MAX_REPEAT_LENGTH = 1_000_000
_MAX_SOURCE_IN_MESSAGE = 200
_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)
#: Name of the filter that `_Sandbox._generate` wraps around every `{% for %}` iterable.
_METER_FILTER = "atlas_metered"
#: Worker threads for `render_async`: renders are short, so a few suffice; a runaway one holds its thread for
#: at most MAX_RENDER_SECONDS.
_RENDER_THREADS = 4

#: Variables that carry the daemon's own credentials: `secret()` refuses them (spec §10.7, bug 11).
_DAEMON_CREDENTIALS = frozenset({"ATLAS_TOKEN", "ATLAS_NATS_CREDS", "ATLAS_NATS_URL"})
_DAEMON_CREDENTIAL_SUFFIXES = ("_TOKEN", "_CREDS", "_PASSWORD", "_NKEY")

_T = TypeVar("_T")


class TemplateError(Exception):
    """A template failed to compile or render; the step fails with errorCode `template_error`."""


class _LimitExceeded(Exception):
    """A render went over its budget; `_render_str` turns it into a TemplateError naming the template."""


class _Budget:
    """What one top-level render may still spend; lives in a thread-local while that render runs.

    `cancelled` is set from the event loop when the task awaiting `render_async` is cancelled (job timeout,
    cancel), so the worker thread gives up at its next check instead of running out its time.
    """

    __slots__ = ("cancelled", "deadline", "iterations")

    def __init__(self) -> None:
        self.deadline = time.monotonic() + MAX_RENDER_SECONDS
        self.iterations = 0
        self.cancelled = False

    def check(self) -> None:
        if self.cancelled:
            raise _LimitExceeded("rendering was cancelled")
        if time.monotonic() > self.deadline:
            raise _LimitExceeded(f"rendering took longer than {MAX_RENDER_SECONDS:g}s")

    def iteration(self) -> None:
        self.iterations += 1
        if self.iterations > MAX_ITERATIONS:
            raise _LimitExceeded(f"more than {MAX_ITERATIONS} loop iterations")
        self.check()


_local = threading.local()


def _budget() -> _Budget | None:
    """The budget of the render running on this thread, None outside `Templater` (e.g. a bare jinja call)."""
    budget: _Budget | None = getattr(_local, "budget", None)
    return budget


def _check_size(value: Any) -> None:
    """Refuse a value too large to have been built cheaply: this bounds doubling through loop state."""
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset):
        if len(value) > MAX_VALUE_LENGTH:
            raise _LimitExceeded(f"a value of {len(value)} items (limit {MAX_VALUE_LENGTH})")
    elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _LimitExceeded(f"an integer of {value.bit_length()} bits (limit {MAX_INT_BITS})")


def _metered(iterable: Iterable[_T]) -> Iterable[_T]:
    """The `{% for %}` filter: charge every iteration to the running render's budget."""
    budget = _budget()
    if budget is None:
        return iterable
    return _metered_iter(iterable, budget)


def _metered_iter(iterable: Iterable[_T], budget: _Budget) -> Iterator[_T]:
    for item in iterable:
        budget.iteration()
        yield item


class _MeteredNamespace(Namespace):
    """`namespace()`, whose attributes are the only state a loop can carry from one iteration to the next."""

    def __setitem__(self, name: str, value: Any) -> None:
        _check_size(value)
        budget = _budget()
        if budget is not None:
            budget.check()
        super().__setitem__(name, value)


class _Sandbox(SandboxedEnvironment):
    """The stock sandbox plus a budget: metered loops, calls and operators, and caps on what they build."""

    intercepted_binops = frozenset({"**", "*", "+"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters[_METER_FILTER] = _metered
        self.globals["namespace"] = _MeteredNamespace

    def _generate(
        self, source: nodes.Template, name: str | None, filename: str | None, defer_init: bool = False
    ) -> str:
        """Wrap every `{% for %}` iterable in the metering filter before jinja generates Python code.

        Jinja's loops are plain Python `for` statements that no sandbox hook sees, so this is the one place where
        the iterations of nested loops over payload data can be counted.
        """
        for loop in list(source.find_all(nodes.For)):
            loop.iter = nodes.Filter(loop.iter, _METER_FILTER, [], [], None, None, lineno=loop.iter.lineno)
        return super()._generate(source, name, filename, defer_init=defer_init)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Every call (functions, methods, macros, recursive `loop()`) checks the clock and the sizes it moves."""
        budget = _budget()
        if budget is not None:
            budget.check()
            for value in itertools.chain(args, kwargs.values()):
                _check_size(value)
        result = super().call(context, obj, *args, **kwargs)
        if budget is not None:
            _check_size(result)
            receiver = getattr(obj, "__self__", None)
            if isinstance(receiver, list | dict | set):  # `l.extend(l)` grows its receiver, not its result
                _check_size(receiver)
        return result

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        if budget is not None:
            budget.check()
        if operator == "**":
            if isinstance(right, int) and isinstance(left, int) and abs(left) > 1:
                if right > _MAX_POWER_EXPONENT:
                    raise SecurityError(f"exponent {right} is too large (limit {_MAX_POWER_EXPONENT})")
                if abs(left).bit_length() * right > MAX_INT_BITS:  # `(2 ** 1000) ** 1000`: chained powers
                    raise _LimitExceeded(f"power result too large (limit {MAX_INT_BITS} bits)")
        elif operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(count, int):
                    if len(seq) * count > _MAX_REPEAT_LENGTH:
                        raise SecurityError(f"repetition result too long (limit {_MAX_REPEAT_LENGTH})")
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise _LimitExceeded(f"product too large (limit {MAX_INT_BITS} bits)")
        elif operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                if len(left) + len(right) > MAX_VALUE_LENGTH:
                    raise _LimitExceeded(f"concatenation too long (limit {MAX_VALUE_LENGTH})")
        return super().call_binop(context, operator, left, right)


_executor_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _render_executor() -> ThreadPoolExecutor:
    """One small pool per process, made on first use, kept apart from the loop's default executor."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=_RENDER_THREADS, thread_name_prefix="atlas-template")
        return _executor


def _has_template(value: Any) -> bool:
    """Whether rendering `value` would evaluate anything (plain config needs no thread hop)."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, Mapping):
        return any(_has_template(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_has_template(item) for item in value)
    return False


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


class StreamRedactor:
    """Redacts a text that arrives in pieces (a model's streamed reply): each piece is redacted together with what
    was held back before it, and the end that could still be the beginning of a secret is held back until the next
    piece, or `flush`, decides. So a secret streamed in two pieces is never shown, in either, while ordinary text is
    let through at once (see `Templater.secret_begins_at_end`). Thread-safe: a step's sink may be called from its
    own thread."""

    def __init__(self, templater: Templater) -> None:
        self._templater = templater
        self._held = ""
        self._lock = threading.Lock()

    def feed(self, piece: str) -> str:
        """The redacted text that can be let through now ("" while everything may still become a secret)."""
        with self._lock:
            text = str(self._templater.redact(self._held + piece))
            cut = len(text) - self._templater.secret_begins_at_end(text)
            self._held = text[cut:]
            return text[:cut]

    def flush(self) -> str:
        """What was held back: the text ended (or something else comes between), so it is no secret's beginning."""
        with self._lock:
            text, self._held = self._held, ""
            return text


class Templater:
    """One sandboxed environment, its compiled-template caches and the secrets it has revealed.

    Thread-safe: the caches are `functools.lru_cache`, the secret set is guarded by a lock and a render's budget
    is thread-local, because renders run on worker threads (`render_async`) while the loop redacts.
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
        upper = name.upper()
        if upper in _DAEMON_CREDENTIALS or (
            upper.startswith("ATLAS_") and upper.endswith(_DAEMON_CREDENTIAL_SUFFIXES)
        ):
            # A workspace reads its own secrets; the daemon's token and bus credentials are not among them.
            raise TemplateError(f"secret({name!r}): the daemon's own credentials are not available to templates")
        value = environ.get(name)
        if value is None:
            raise TemplateError(f"secret({name!r}): environment variable is not set")
        self.add_secret(value)
        return value

    def add_secret(self, value: str) -> None:
        """Remember a value that must never be recorded (also for LLM keys, shell env values, tokens).

        The pattern matches regardless of letter case (so `|upper`, `|title`, `|capitalize` are caught) and also
        matches the value reversed, each also as it appears inside a serialised JSON string. Slices, encodings
        and other transformations are not caught (see docs/decisions.md).
        """
        if not value:
            return  # redacting "" would replace every gap between characters
        forms = {value, value[::-1]}
        forms |= {form.upper() for form in forms} | {form.lower() for form in forms}  # JSON escapes keep case
        variants = forms | {json.dumps(form)[1:-1] for form in forms}  # also inside a serialised JSON string
        with self._secrets_lock:
            if variants <= self._secrets:
                return
            self._secrets |= variants
            ordered = sorted(self._secrets, key=len, reverse=True)  # longest first: overlapping secrets
            self._secret_pattern = re.compile("|".join(re.escape(s) for s in ordered), re.IGNORECASE)

    def secret_begins_at_end(self, text: str) -> int:
        """How many of `text`'s last characters could be the beginning of a remembered secret (0: none could).

        A text streamed in pieces is redacted as it grows; what it ends with must be held back while it could still
        become a secret, or a secret split across two pieces would be recorded (the chat's `Recorder`). Ordinary
        text rarely ends with more than a character or two of one, so little is held."""
        with self._secrets_lock:
            secrets = [s.lower() for s in self._secrets]
        keep = min(len(text), max((len(s) for s in secrets), default=0) - 1)
        if keep <= 0:
            return 0
        tail = text[len(text) - keep:].lower()
        for start in range(len(tail)):
            piece = tail[start:]
            if any(len(secret) > len(piece) and secret.startswith(piece) for secret in secrets):
                return len(piece)
        return 0

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

        Runs on the calling thread, within one budget for the whole value; on the event loop prefer
        `render_async`. Raises TemplateError for a syntax error, an undefined variable, an unsafe attribute, an
        exceeded limit or any error raised while evaluating.
        """
        if isinstance(value, str) and "{{" not in value and "{%" not in value:
            return value  # the common case, without a budget
        return self._metered_call(self._render_value, value, variables)

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

    async def render_async(self, value: Any, variables: Mapping[str, Any]) -> Any:
        """`render` on the template thread pool, so a render that spends its whole budget never stalls the loop.

        Values without template markers are returned (copied) at once, without a thread hop. Cancelling the
        awaiting task stops the render at its next budget check.
        """
        if not _has_template(value):
            return self._render_value(value, variables)
        return await self._off_loop(self._render_value, value, variables)

    async def truthy_async(self, value: Any, variables: Mapping[str, Any]) -> bool:
        """`truthy` on the template thread pool (see `render_async`)."""
        if not _has_template(value):
            return self.truthy(value, variables)
        return await self._off_loop(self.truthy, value, variables)

    async def _off_loop(self, fn: Callable[[Any, Mapping[str, Any]], _T], value: Any,
                        variables: Mapping[str, Any]) -> _T:
        budget = _Budget()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(_render_executor(), self._metered_call, fn, value, variables, budget)
        try:
            return await future
        except asyncio.CancelledError:
            budget.cancelled = True  # the thread cannot be interrupted, but it stops at its next check
            raise

    @staticmethod
    def _metered_call(fn: Callable[[Any, Mapping[str, Any]], _T], value: Any, variables: Mapping[str, Any],
                      budget: _Budget | None = None) -> _T:
        """Run `fn` under a budget: a fresh one, unless a render on this thread already has one (nested calls)."""
        if _budget() is not None:
            return fn(value, variables)
        _local.budget = budget or _Budget()
        try:
            return fn(value, variables)
        finally:
            _local.budget = None

    def _render_value(self, value: Any, variables: Mapping[str, Any]) -> Any:
        if isinstance(value, str):
            return self._render_str(value, variables)
        if isinstance(value, Mapping):
            return {key: self._render_value(item, variables) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._render_value(item, variables) for item in value]
        return value

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
            return _bounded_text(self._compile_template(source), context)
        except TemplateError:
            raise
        except _LimitExceeded as exc:
            raise TemplateError(f"template {_short(source)!r} is too expensive: {exc}") from None
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


def _bounded_text(template: jinja2.Template, context: dict[str, Any]) -> str:
    """Render a text template piece by piece, stopping at MAX_OUTPUT_CHARS instead of building it all first.

    Pieces are not timed: without a loop or a call (which are) their number is bounded by the source.
    """
    parts: list[str] = []
    size = 0
    chunks = cast(Generator[str, None, None], template.root_render_func(template.new_context(context)))
    try:
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise _LimitExceeded(f"output longer than {MAX_OUTPUT_CHARS} characters")
            parts.append(chunk)
    finally:
        chunks.close()
    return "".join(parts)
