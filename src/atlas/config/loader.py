"""Load and validate a `workspace.yml` (spec §2.8).

Loading happens in four layers, each of which stops the next one from running on garbage:

1. **Read** at most 1 MiB of UTF-8, from a regular file only: a FIFO, a device or a socket is refused before a
   byte is read (opening a FIFO would wait for a writer forever), and so is a file whose size is over the cap.
2. **Parse** YAML 1.2 with ruamel.yaml's round-trip loader, which keeps the line and column of every key,
   so every later error can point into the file. The composed node tree is checked before anything is
   constructed: only core-schema tags, no duplicate keys, no recursive or exploding aliases.
3. **Structure**: the pydantic model (`WorkspaceConfig`). Every pydantic error is translated into a
   `ConfigProblem` whose `path` is the YAML path (pydantic's union-member segments removed) and whose position
   is the offending key.
4. **Cross-references** (only on a structurally valid file): triggers, agents, states, one job per signal,
   schemas, cron expressions, time zones.

Nothing here raises for a bad file: every problem becomes a `ConfigProblem`, so the CLI and the API can report
all of them at once. Messages quote the file as little as they can, because the API returns them to a client that
may not be allowed to read the file (issue #19): a document that is not a mapping is described by its kind only
(a key or an env file would otherwise come back whole), and a quoted key or value is cut to a few dozen
characters.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo

from croniter import croniter
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from atlas.config.compat import prune_reference_keys
from atlas.config.model import (
    BUILTIN_AGENTS,
    ID_PATTERN,
    WORKSPACE_ID_PATTERN,
    Action,
    AgentAction,
    Fsm,
    Job,
    ScheduleSignalConfig,
    SequentialStep,
    SignalAction,
    Transition,
    WorkspaceConfig,
)

WORKSPACE_FILE = "workspace.yml"
MAX_FILE_BYTES = 1024 * 1024
MAX_ERRORS = 50
# A Friday file warns once per ignored key (issue #14); a big one has many more than it could have errors.
MAX_WARNINGS = 500
# How many extra nodes alias expansion may add. Aliases are shared objects once loaded, but validation walks
# them expanded, so a "billion laughs" document would otherwise cost exponential time.
MAX_ALIAS_EXPANSION = 100_000
# Real workspaces nest about a dozen levels; the bound keeps every later recursive stage (pydantic,
# jsonschema, the conversion to plain values) far from Python's recursion limit.
MAX_DEPTH = 64
CRON_MACROS = ("@hourly", "@daily", "@weekly", "@monthly")
# How much of a value or a key a message quotes. Ids are at most 64 characters, so a genuine id is never cut.
MAX_QUOTED_VALUE = 32
MAX_QUOTED_KEY = 64
MAX_MESSAGE = 240
# How many known names an "unknown agent/signal" message lists (the rest is "…").
MAX_LISTED_NAMES = 8
_TOO_LARGE = f"file is larger than {MAX_FILE_BYTES} bytes (1 MiB)"

_CORE_TAG_PREFIX = "tag:yaml.org,2002:"
_CORE_TAGS = frozenset(_CORE_TAG_PREFIX + t for t in ("str", "int", "float", "bool", "null", "map", "seq"))
_MERGE_TAG = _CORE_TAG_PREFIX + "merge"
_TIMESTAMP_TAG = _CORE_TAG_PREFIX + "timestamp"
_STR_TAG = _CORE_TAG_PREFIX + "str"

# Discriminated unions put the tag value into pydantic's error location (`signals.s.http.config`); these are
# the keys and values that can appear that way, so the segment can be dropped from the YAML path.
_DISCRIMINATOR_KEYS = ("type", "provider")
_DISCRIMINATOR_VALUES = frozenset(
    {"python", "shell", "http", "llm", "atlas", "agent", "emit", "signal", "schedule", "system"}
)

Segment = str | int


# ---------------------------------------------------------------- public types


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a workspace file, positioned 1-based at the offending key.

    Data, not an exception: a load collects every problem so they can be reported at once; whoever refuses an
    invalid file raises `AtlasError("workspace_invalid", ...)` with them as details (`compile_workspace`).
    """

    file: str
    line: int
    column: int
    path: str
    message: str

    def format(self) -> str:
        """The compiler-style line the CLI prints (`file:line:column: path: message`).

        File-level problems (missing file, YAML syntax) have no path; the empty segment is left out rather
        than printed as `: :`.
        """
        if not self.path:
            return f"{self.file}:{self.line}:{self.column}: {self.message}"
        return f"{self.file}:{self.line}:{self.column}: {self.path}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """The shape used in the API's `error.details`."""
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
        }


@dataclass
class LoadedWorkspace:
    """Result of `load_workspace`: the validated config (or `None`) plus every error and warning."""

    path: Path
    file: Path
    config: WorkspaceConfig | None
    errors: list[ConfigProblem]
    warnings: list[ConfigProblem]
    id: str
    digest: str
    unavailable_agents: dict[str, str] = field(default_factory=dict)
    """Agents of the file that atlas cannot run (a `type: system` or bundled reference agent), by id, with what
    they are; they are not in `config.agents` (see `atlas.config.compat`)."""

    @property
    def ok(self) -> bool:
        return not self.errors


def slugify_workspace_id(name: str) -> str:
    """Derive a workspace id from a name (spec §2.1): lower-case, runs of other characters → `-`, trimmed.

    The result is cut to the 63 characters the id pattern allows. It may be empty (e.g. a name of only
    punctuation); callers must treat that as "no id".
    """
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:63].strip("-")


def load_workspace(path: str | Path) -> LoadedWorkspace:
    """Read, parse and validate a workspace; never raises for problems in the file itself.

    `path` is the workspace directory or its `workspace.yml`. Errors name the file as the caller gave it, so
    CLI output reads like a compiler's.
    """
    file = workspace_file(Path(path))
    absolute = file.resolve()
    outcome = _Outcome(id=slugify_workspace_id(absolute.parent.name) or "workspace")
    report = _Reporter(str(file))
    try:
        _load(file, report, outcome)
    except RecursionError:  # a safety net: MAX_DEPTH should make this unreachable
        report.at_root("the document is nested too deeply")
    return LoadedWorkspace(
        path=absolute.parent,
        file=absolute,
        config=outcome.config if not outcome.errors else None,
        errors=_finish(outcome.errors),
        warnings=_finish(outcome.warnings, MAX_WARNINGS),
        id=outcome.id,
        digest=outcome.digest,
        unavailable_agents=outcome.unavailable_agents,
    )


@dataclass
class _Outcome:
    """What `_load` found so far; each stage fills in what it can, so an early stop still has an id."""

    id: str
    digest: str = ""
    config: WorkspaceConfig | None = None
    errors: list[ConfigProblem] = field(default_factory=list)
    warnings: list[ConfigProblem] = field(default_factory=list)
    unavailable_agents: dict[str, str] = field(default_factory=dict)


def _load(file: Path, report: _Reporter, outcome: _Outcome) -> None:
    """Run the stages in order, stopping at the first one that found errors."""
    outcome.errors, outcome.warnings = report.errors, report.warnings
    data, read_error = _read(file)
    if data is None:
        report.errors.append(ConfigProblem(report.file, 1, 1, "", read_error or "cannot read file"))
        return
    outcome.digest = hashlib.sha256(data).hexdigest()
    if len(data) > MAX_FILE_BYTES:  # it grew since it was opened, or its size says 0 (procfs)
        report.errors.append(ConfigProblem(report.file, 1, 1, "", _TOO_LARGE))
        return
    raw = _parse(data, report)
    if report.errors:
        return
    report.root = raw
    outcome.id = _raw_workspace_id(raw) or outcome.id
    if not isinstance(raw, CommentedMap):
        got = "an empty file" if raw is None else _kind(_plain(raw))
        report.at_root(f"expected a mapping with 'version' and 'workspace', got {got}")
        return
    # The reference's keys of features atlas lacks warn and are dropped before validation (issue #14).
    document = _plain(raw)
    pruned = prune_reference_keys(document, report.warning)
    outcome.unavailable_agents = pruned.unavailable_agents
    report.original = pruned.original
    try:
        config = WorkspaceConfig.model_validate(document)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        _report_validation(errors, report)
        # The references of the well-formed rest are still checked: one bad key must not hide every unknown
        # agent of the file until it is fixed (issue #16).
        salvaged = _salvage(document, errors)
        if salvaged is not None:
            _CrossChecker(salvaged, outcome.id, report, outcome.unavailable_agents, document).run()
        return
    derived = config.workspace.id or slugify_workspace_id(config.workspace.name)
    if not derived:
        report.error(("workspace", "name"), "cannot derive a workspace id from this name; set workspace.id")
    outcome.id = derived or outcome.id
    _CrossChecker(config, outcome.id, report, outcome.unavailable_agents, document).run()
    outcome.config = config


_SECTIONS = ("signals", "agents", "jobs")


def _salvage(document: dict[str, Any], errors: Sequence[ErrorDetails]) -> WorkspaceConfig | None:
    """The document without the parts that have structural errors, validated; None when nothing sound is left.

    A broken signal, agent or job is left out whole (its own references are not checked: its shape is unknown),
    a broken `workspace` becomes a bare name, any other broken top-level key is dropped. A section that is itself
    malformed (`jobs: 3`) gives up: the names it declares are unknown, so every reference could be misjudged.
    The names left out still count as declared (`_CrossChecker` reads them from the document).
    """
    pruned = {key: dict(value) if key in _SECTIONS and isinstance(value, dict) else value
              for key, value in document.items()}
    for error in errors:
        loc = error["loc"]
        head = loc[0] if loc else None
        section = pruned.get(head) if isinstance(head, str) else None
        if head in _SECTIONS and len(loc) >= 2 and isinstance(section, dict):
            section.pop(loc[1], None)
        elif head == "workspace":
            pruned["workspace"] = {"name": "workspace"}
        elif head is None or head in _SECTIONS:
            return None
        else:
            pruned.pop(str(head), None)
    try:
        return WorkspaceConfig.model_validate(pruned)
    except ValidationError:
        return None


# ---------------------------------------------------------------- reading and parsing


def workspace_file(given: Path) -> Path:
    """A directory means its `workspace.yml`; a `.yml`/`.yaml` path or an existing file is the file itself."""
    if given.is_dir():
        return given / WORKSPACE_FILE
    if given.is_file() or given.suffix in (".yml", ".yaml"):
        return given
    return given / WORKSPACE_FILE


def _read(file: Path) -> tuple[bytes | None, str | None]:
    """The bytes of a regular file of at most MAX_FILE_BYTES, or why not.

    The file is opened non-blocking and checked on the open descriptor (no race with a swapped path): opening a
    FIFO blocks until a writer comes, which froze the daemon's event loop for good. A file whose size is over the
    cap is refused unread; otherwise at most one byte past the cap is read, for files that grow or report no size.
    """
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, "file not found"
    except OSError as exc:
        return None, f"cannot read file: {exc.strerror or exc}"
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            return None, "is a directory, not a file"
        if not stat.S_ISREG(info.st_mode):
            return None, "not a regular file"
        if info.st_size > MAX_FILE_BYTES:
            return None, _TOO_LARGE
        try:
            return handle.read(MAX_FILE_BYTES + 1), None
        except OSError as exc:
            return None, f"cannot read file: {exc.strerror or exc}"


def _parse(data: bytes, report: _Reporter) -> Any:
    """Parse one YAML 1.2 document into ruamel's round-trip tree, or report why not."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _offset_position(data, exc.start)
        report.errors.append(ConfigProblem(report.file, line, column, "", "file is not valid UTF-8"))
        return None
    text = text.removeprefix("\ufeff")
    yaml = YAML(typ="rt")
    yaml.version = (1, 2)
    try:
        node = yaml.compose(text)
        version = yaml.doc_infos[-1].doc_version if yaml.doc_infos else None
        if version is not None and (version.major, version.minor) != (1, 2):
            message = f"%YAML {version.major}.{version.minor} is not supported: workspace files are YAML 1.2"
            report.errors.append(ConfigProblem(report.file, 1, 1, "", message))
            return None
        if node is None:
            return None
        _NodeChecker(report).check(node)
        if report.errors:
            return None
        return yaml.constructor.construct_document(node)
    except MarkedYAMLError as exc:
        report.errors.append(_syntax_error(report.file, exc, text))
    except ReaderError as exc:  # a character YAML does not allow (e.g. a control character)
        line, column = _offset_position(text.encode(), len(text[: exc.position].encode()))
        report.errors.append(ConfigProblem(report.file, line, column, "",
                                         f"YAML syntax error: character {exc.character!r} is not allowed"))
    except YAMLError as exc:
        report.errors.append(ConfigProblem(report.file, 1, 1, "", f"YAML syntax error: {exc}"))
    except RecursionError:
        report.errors.append(ConfigProblem(report.file, 1, 1, "", "the document is nested too deeply"))
    return None


def _syntax_error(file: str, exc: MarkedYAMLError, text: str) -> ConfigProblem:
    """Position at the parser's problem, with a plain hint for the mistakes people make (issue #16).

    The parser's own words ("expected <block end>, but found '<block mapping start>'") describe its state, not the
    file; the common slips (one space of indentation, a tab, an unclosed quote or bracket) get a sentence that says
    what to change. Anything else keeps the parser's message and where the enclosing construct started.
    """
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    message = _syntax_hint(exc, text.splitlines(), line) or exc.problem or exc.context or "invalid YAML"
    if message == exc.problem and exc.context:
        started = exc.context_mark
        where = f" started at line {started.line + 1}, column {started.column + 1}" if started else ""
        message = f"{exc.problem} ({exc.context}{where})"
    return ConfigProblem(file, line, column, "", f"YAML syntax error: {message}")


def _indent(text: str) -> int:
    """1-based column of a line's first character that is not a space."""
    return len(text) - len(text.lstrip(" ")) + 1


def _content_lines_before(lines: Sequence[str], line: int) -> list[tuple[int, str]]:
    """The (1-based number, text) of the lines above `line` that hold YAML (not blank, not a comment), nearest first."""
    above = [(n + 1, lines[n]) for n in range(min(line - 1, len(lines)) - 1, -1, -1)]
    return [(n, t) for n, t in above if t.strip() and not t.lstrip().startswith("#")]


def _open_columns(lines: Sequence[str], line: int) -> list[int]:
    """The columns a line at `line` could line up with: the indentation of each block still open above it."""
    columns: list[int] = []
    for _, text in _content_lines_before(lines, line):
        column = _indent(text)
        if not columns or column < columns[-1]:
            columns.append(column)
    return sorted(columns)


def _syntax_hint(exc: MarkedYAMLError, lines: Sequence[str], line: int) -> str | None:
    """A sentence for the YAML mistakes people make, or None to keep the parser's words."""
    problem, context = exc.problem or "", exc.context or ""
    started = exc.context_mark
    start = f"line {started.line + 1}, column {started.column + 1}" if started is not None else "above"
    if "'\\t'" in problem or "\t" in problem:
        return "a tab character: YAML is indented with spaces, never tabs"
    if problem.startswith("expected <block end>, but found"):
        return _indentation_hint(lines, line, problem.endswith(("'-'", "'<block sequence start>'")))
    if problem == "mapping values are not allowed here":
        return _colon_hint(lines, line)
    if context == "while scanning a quoted scalar" and "end of stream" in problem:
        return f"the quoted string that starts at {start} is never closed: add the closing quote"
    if context.startswith("while parsing a flow") and problem.endswith("'<stream end>'"):
        bracket = "{" if "mapping" in context else "["
        closing = "}" if bracket == "{" else "]"
        return f"the '{bracket}' at {start} is never closed: add '{closing}'"
    if problem == "could not find expected ':'":
        return f"a key without ':' (at {start}): write 'key: value', or quote a value that spans lines"
    return None


def _indentation_hint(lines: Sequence[str], line: int, item: bool) -> str:
    """A line whose indentation lines up with no open block: say its column and the ones it could have."""
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    columns = [str(c) for c in _open_columns(lines, line)] or ["1"]
    listed = columns[0] if len(columns) == 1 else f"{', '.join(columns[:-1])} or {columns[-1]}"
    what = "this list item ('-')" if item else "this line"
    return (f"bad indentation: {what} starts in column {_indent(text)}, but the lines above start in"
            f" column {listed}; line it up with the keys (or items) it belongs with")


def _colon_hint(lines: Sequence[str], line: int) -> str:
    """`key: value` where YAML allows no ':': a line indented under a value, a key with no ':', or `a: b: c`."""
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    before = _content_lines_before(lines, line)
    if before:
        number, previous = before[0]
        if _indent(text) > _indent(previous) and not previous.rstrip().endswith(":"):
            return (f"this line is indented more than line {number}, so YAML reads it as the rest of that line's"
                    f" value: line it up with the key above (column {_indent(previous)})")
        if ":" not in previous and not previous.lstrip().startswith("-"):
            return f"line {number} has no ':' after its key, so YAML reads it and this line as one value"
    return "a ':' inside a value: quote the value (e.g. name: \"a: b\")"


def _offset_position(data: bytes, offset: int) -> tuple[int, int]:
    before = data[:offset]
    line = before.count(b"\n") + 1
    return line, offset - (before.rfind(b"\n") + 1) + 1


class _NodeChecker:
    """Safety checks on the composed node tree, before any Python object is built.

    Working on nodes (not loaded data) keeps positions for every problem, reports all duplicate keys instead
    of the first, and sees aliases as shared nodes so their expanded size can be bounded.
    """

    def __init__(self, report: _Reporter) -> None:
        self.report = report
        self.seen: set[int] = set()
        self.sizes: dict[int, int] = {}
        self.in_progress: set[int] = set()

    def check(self, root: Node) -> None:
        self._walk(root, ())
        if self.report.errors:
            return
        expanded = self._size(root)
        if expanded < 0:
            return
        if expanded - len(self.seen) > MAX_ALIAS_EXPANSION:
            message = f"aliases expand to too many nodes (more than {MAX_ALIAS_EXPANSION} extra)"
            self._error(root, (), message)

    def _error(self, node: Node, path: tuple[Segment, ...], message: str) -> None:
        mark = node.start_mark
        self.report.errors.append(
            ConfigProblem(self.report.file, mark.line + 1, mark.column + 1, _format_path(path), message)
        )

    def _walk(self, node: Node, path: tuple[Segment, ...]) -> None:
        if id(node) in self.seen:
            return
        self.seen.add(id(node))
        self._check_tag(node, path)
        if len(path) > MAX_DEPTH:
            self._error(node, path, f"nested deeper than {MAX_DEPTH} levels")
            return
        if isinstance(node, MappingNode):
            self._walk_mapping(node, path)
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, (*path, index))

    def _check_tag(self, node: Node, path: tuple[Segment, ...]) -> None:
        tag = node.tag or ""
        if tag == _TIMESTAMP_TAG:
            # The YAML 1.2 core schema has no timestamps: `2024-01-01` is a string, as any JSON tool reads it.
            node.tag = _STR_TAG
        elif tag not in _CORE_TAGS and tag != _MERGE_TAG:
            shown = "!!" + tag.removeprefix(_CORE_TAG_PREFIX) if tag.startswith(_CORE_TAG_PREFIX) else tag
            shown = _clip(shown, MAX_QUOTED_KEY)
            self._error(node, path, f"unsupported tag '{shown}': only plain YAML values are allowed")

    def _walk_mapping(self, node: MappingNode, path: tuple[Segment, ...]) -> None:
        first_line: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.tag != _MERGE_TAG:
                identity = (key.tag or "", key.value)
                if identity in first_line:
                    shown = _clip(str(key.value), MAX_QUOTED_KEY)
                    message = f"duplicate key '{shown}' (first defined on line {first_line[identity]})"
                    self._error(key, (*path, key.value), message)
                else:
                    first_line[identity] = key.start_mark.line + 1
                child_path: tuple[Segment, ...] = (*path, key.value)
            else:
                self._walk(key, path)
                child_path = path
            self._walk(value, child_path)

    def _size(self, node: Node) -> int:
        """Number of nodes once aliases are expanded; -1 after reporting a recursive alias."""
        key = id(node)
        if key in self.sizes:
            return self.sizes[key]
        if key in self.in_progress:
            anchor = f" '&{node.anchor}'" if node.anchor else ""
            self._error(node, (), f"recursive alias{anchor}: a node cannot contain itself")
            return -1
        self.in_progress.add(key)
        total = 1
        for child in _children(node):
            size = self._size(child)
            if size < 0:
                return -1
            total += size
            if total > MAX_ALIAS_EXPANSION * 10:
                break  # already far past any limit; no need to count further
        self.in_progress.discard(key)
        self.sizes[key] = total
        return total


def _children(node: Node) -> Iterator[Node]:
    if isinstance(node, MappingNode):
        for key, value in node.value:
            yield key
            yield value
    elif isinstance(node, SequenceNode):
        yield from node.value


def _plain(value: Any) -> Any:
    """Round-trip objects → plain dict/list/str/int/float/bool/None, so the model holds ordinary values."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if type(value).__name__ == "ScalarBoolean":
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def _raw_workspace_id(raw: Any) -> str | None:
    """Best-effort id for a file that parsed but did not validate, so errors name the right workspace."""
    if not isinstance(raw, dict) or not isinstance(raw.get("workspace"), dict):
        return None
    info = raw["workspace"]
    explicit = info.get("id")
    if isinstance(explicit, str) and re.match(WORKSPACE_ID_PATTERN, explicit):
        return explicit
    name = info.get("name")
    return (slugify_workspace_id(name) or None) if isinstance(name, str) else None


# ---------------------------------------------------------------- positions and paths


def _format_path(segments: Iterable[Segment]) -> str:
    """`("jobs", "x", "entry", 0, "agentId")` → `jobs.x.entry[0].agentId` (ints are list indices).

    A key longer than MAX_QUOTED_KEY is cut: a path names where the problem is, it does not copy the file.
    """
    out = ""
    for seg in segments:
        if isinstance(seg, int) and not isinstance(seg, bool):
            out += f"[{seg}]"
        else:
            key = _clip(str(seg), MAX_QUOTED_KEY)
            out += f".{key}" if out else key
    return out


def _clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with `…` where it was cut."""
    return text if len(text) <= limit else text[:limit] + "…"


def _quote(value: Any, limit: int = MAX_QUOTED_VALUE) -> str:
    """A value as a message quotes it: repr-quoted, cut to `limit` characters."""
    return repr(_clip(str(value), limit))


@dataclass
class _Located:
    """A YAML path resolved against the round-trip tree: the segments that exist, and a 1-based position."""

    segments: list[Segment] = field(default_factory=list)
    line: int = 1
    column: int = 1
    node: Any = None


def _node_position(node: Any) -> tuple[int, int] | None:
    lc = getattr(node, "lc", None)
    if lc is None or lc.line is None:
        return None
    return lc.line + 1, lc.col + 1


def _key_position(mapping: CommentedMap, key: Any) -> tuple[int, int] | None:
    try:
        line, column = mapping.lc.key(key)
    except (KeyError, TypeError):
        return None  # a key brought in by a `<<` merge has no position of its own
    return line + 1, column + 1


def _item_position(seq: CommentedSeq, index: int) -> tuple[int, int] | None:
    try:
        line, column = seq.lc.item(index)
    except (KeyError, TypeError):
        return None
    return line + 1, column + 1


def _has_key(mapping: CommentedMap, key: Any) -> bool:
    try:
        return key in mapping
    except TypeError:
        return False


class _Reporter:
    """Collects errors and warnings for one file and positions them against the round-trip tree."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.root: Any = None
        self.errors: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []
        # Maps a path of the validated document to the file's (they differ where an ignored Friday action was
        # taken out of a list, `atlas.config.compat`); warnings are made with the file's paths already.
        self.original: Callable[[tuple[Segment, ...]], tuple[Segment, ...]] = tuple

    def locate(self, segments: Sequence[Segment]) -> _Located:
        """Walk existing keys/items; stop at the deepest one that exists (the best position we have)."""
        here = _Located(node=self.root)
        here.line, here.column = _node_position(self.root) or (1, 1)
        for seg in segments:
            node = here.node
            if isinstance(node, CommentedMap) and _has_key(node, seg):
                position = _key_position(node, seg)
                here.node = node[seg]
            elif isinstance(node, CommentedSeq) and isinstance(seg, int) and 0 <= seg < len(node):
                position = _item_position(node, seg)
                here.node = node[seg]
            else:
                break
            if position is not None:
                here.line, here.column = position
        here.segments = list(segments)
        return here

    def error(self, segments: Sequence[Segment], message: str, *, at_mapping: bool = False) -> None:
        """Report at the key `segments` names; `at_mapping` points at the mapping itself (a missing key)."""
        segments = self.original(tuple(segments))
        here = self.locate(segments)
        if at_mapping:
            here.line, here.column = _node_position(here.node) or (here.line, here.column)
        self.errors.append(ConfigProblem(self.file, here.line, here.column, _format_path(segments), message))

    def warning(self, segments: Sequence[Segment], message: str) -> None:
        here = self.locate(segments)
        self.warnings.append(ConfigProblem(self.file, here.line, here.column, _format_path(segments), message))

    def at_root(self, message: str) -> None:
        line, column = _node_position(self.root) or (1, 1)
        self.errors.append(ConfigProblem(self.file, line, column, "", message))


def _finish(items: Sequence[ConfigProblem], cap: int = MAX_ERRORS) -> list[ConfigProblem]:
    """Drop exact duplicates, order by position (the order a reader scans the file in), cap the list."""
    unique = list(dict.fromkeys(items))
    unique.sort(key=lambda e: (e.line, e.column))
    return [e if len(e.message) <= MAX_MESSAGE else replace(e, message=_clip(e.message, MAX_MESSAGE))
            for e in unique[:cap]]


# ---------------------------------------------------------------- pydantic errors → ConfigProblem


@dataclass
class _Translated:
    """A pydantic error resolved to YAML: path, position and where a plain (non-tagged) union was crossed."""

    located: _Located
    error: ErrorDetails
    union_depth: int | None = None
    message: str | None = None
    """Set by `_explain_unknown_keys`: the message to use instead of the one made from `error`."""
    merged: bool = False
    """A "missing required key" that an unknown key's message already names (a typo): not reported alone."""


def _resolve(report: _Reporter, error: ErrorDetails) -> _Translated:
    """Map pydantic's `loc` onto the YAML tree, dropping segments that are not YAML keys.

    Pydantic inserts the discriminator value of tagged unions (`http`, `agent`, …) and the member name of
    plain unions (`str`, `list[Transition]`, …). A segment is kept only when it is a key or an index that
    exists at that point of the document; a missing key (the last segment of a `missing` error) is kept and
    positioned at the mapping that lacks it.
    """
    loc = error["loc"]
    here = report.locate(())
    union_depth: int | None = None
    for index, seg in enumerate(loc):
        last = index == len(loc) - 1
        node = here.node
        if seg == "[key]":
            continue  # a dict-key error: the position is already that key's
        if isinstance(node, CommentedMap):
            if not last and _is_discriminator_tag(node, seg):
                continue
            if _has_key(node, seg):
                here.line, here.column = _key_position(node, seg) or (here.line, here.column)
                here.segments.append(seg if isinstance(seg, str) else str(seg))  # a key, never an index
                here.node = node[seg]
                continue
            if last and error["type"] == "missing":
                here.line, here.column = _node_position(node) or (here.line, here.column)
                here.segments.append(seg)
                here.node = None
                continue
        elif isinstance(node, CommentedSeq) and isinstance(seg, int) and 0 <= seg < len(node):
            mapped = report.original((*here.segments, seg))[-1]
            seg = mapped if isinstance(mapped, int) else seg
            here.line, here.column = _item_position(node, seg) or (here.line, here.column)
            here.segments.append(seg)
            here.node = node[seg]
            continue
        if isinstance(seg, str):
            if union_depth is None:
                union_depth = len(here.segments)
            continue
        here.segments.append(seg)  # an index into something that is not a list; keep it for the path
    return _Translated(here, error, union_depth)


def _is_discriminator_tag(node: CommentedMap, seg: Segment) -> bool:
    return seg in _DISCRIMINATOR_VALUES and any(node.get(key) == seg for key in _DISCRIMINATOR_KEYS)


def _report_validation(errors: Sequence[ErrorDetails], report: _Reporter) -> None:
    """Translate every pydantic error, collapsing the per-member errors of a plain union into one."""
    translated = [_resolve(report, e) for e in errors]
    _explain_unknown_keys(report, translated)
    translated = [item for item in translated if not item.merged]
    groups: dict[tuple[Segment, ...], list[_Translated]] = {}
    for item in translated:
        if item.union_depth is None:
            _emit(report, item, _message(item))
        else:
            key = tuple(item.located.segments[: item.union_depth])
            groups.setdefault(key, []).append(item)
    for items in groups.values():
        depth = items[0].union_depth or 0
        deeper = [i for i in items if len(i.located.segments) > depth]
        if deeper:
            # The user evidently wrote the shape of one member (a mapping, a list): report its real problems.
            for item in deeper:
                _emit(report, item, _message(item))
        else:
            _emit(report, items[0], _union_message(items))


def _explain_unknown_keys(report: _Reporter, translated: Sequence[_Translated]) -> None:
    """Give each unknown key the key it was probably meant to be (issue #16).

    A misspelt required key is two pydantic errors, the unknown key and the missing one; when a missing key of
    the same mapping is close to the unknown one, they become one error at the unknown key. Otherwise the
    closest key the model allows there (and the mapping does not have yet) is suggested, if any is close.
    """
    missing: dict[tuple[Segment, ...], list[_Translated]] = {}
    for item in translated:
        if item.error["type"] == "missing" and item.located.segments:
            missing.setdefault(tuple(item.located.segments[:-1]), []).append(item)
    for item in translated:
        key = item.error["loc"][-1] if item.error["loc"] else None
        if item.error["type"] != "extra_forbidden" or not isinstance(key, str) or not item.located.segments:
            continue
        parent = tuple(item.located.segments[:-1])
        absent = {str(m.located.segments[-1]): m for m in missing.get(parent, []) if not m.merged}
        shown = _clip(key, MAX_QUOTED_KEY)
        typo = _closest(key, list(absent))
        if typo is not None:
            absent[typo].merged = True
            item.message = f"unknown key '{shown}': did you mean '{typo}'? ('{typo}' is required)"
            continue
        mapping = report.locate(parent).node
        present = set(mapping) if isinstance(mapping, CommentedMap) else set()
        allowed = [k for k in _allowed_keys(item.error["loc"][:-1]) if k not in present]
        suggestion = _closest(key, allowed)
        if suggestion is not None:
            item.message = f"unknown key '{shown}': did you mean '{suggestion}'?"


def _closest(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate `name` was most likely meant to be (difflib's ratio ≥ 0.6), or None."""
    matches = get_close_matches(name, candidates, n=1)
    return matches[0] if matches else None


def _allowed_keys(loc: Sequence[Segment]) -> list[str]:
    """The keys the model allows in the mapping at pydantic location `loc` (empty when it is not a model).

    Walks the model's annotations along `loc`: a field name into its type, a dict key into the value type, an
    index into the item type. Where pydantic put a union label into the location (a tag such as `python`, or a
    member such as `Transition`), the members it names are kept; an unrecognised label keeps every member.
    """
    candidates = _members(WorkspaceConfig)
    for seg in loc:
        stepped = [inner for tp in candidates for inner in _step_into(tp, seg)]
        if not stepped:
            labelled = [tp for tp in candidates if _is_labelled(tp, seg)]
            stepped = labelled or candidates
        candidates = stepped
    keys: list[str] = []
    for tp in candidates:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            keys += [info.alias or name for name, info in tp.model_fields.items()]
    return list(dict.fromkeys(keys))


def _members(tp: Any) -> list[Any]:
    """A type with `Annotated` and unions (`X | Y`, `Optional`) unwrapped into its members."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [member for arg in get_args(tp) for member in _members(arg)]
    return [tp]


def _step_into(tp: Any, seg: Segment) -> list[Any]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, info in tp.model_fields.items():
            if seg in (name, info.alias):
                return _members(info.annotation)
        return []
    origin, args = get_origin(tp), get_args(tp)
    if origin is dict and isinstance(seg, str) and len(args) == 2:
        return _members(args[1])
    if origin is list and isinstance(seg, int) and args:
        return _members(args[0])
    return []


def _is_labelled(tp: Any, seg: Segment) -> bool:
    """Whether pydantic's union label `seg` names the member `tp`: its class name or its tag value."""
    if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return False
    if seg == tp.__name__:
        return True
    for key in _DISCRIMINATOR_KEYS:
        info = tp.model_fields.get(key)
        if info is not None and get_origin(info.annotation) is Literal and seg in get_args(info.annotation):
            return True
    return False


def _emit(report: _Reporter, item: _Translated, message: str) -> None:
    here = item.located
    report.errors.append(
        ConfigProblem(report.file, here.line, here.column, _format_path(here.segments), message)
    )


_EXPECTED = {
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
}


def _describe(value: Any) -> str:
    """How a YAML value reads to its author, for "expected X, got Y" messages."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {_quote(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _kind(value: Any) -> str:
    """What a value is, never what it says: how a document that is not a mapping is described.

    Any file given as a workspace file lands here whole when it is not a YAML mapping (a private key, an env file,
    /etc/shadow are one multi-line string to YAML), so quoting it, even in part, would hand it to the caller.
    """
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a mapping" if isinstance(value, dict) else "a value"


def _union_message(items: Sequence[_Translated]) -> str:
    expected = list(dict.fromkeys(_EXPECTED.get(i.error["type"], "") for i in items))
    if "" in expected:
        return _message(items[0])
    return f"expected {' or '.join(expected)}, got {_describe(items[0].error.get('input'))}"


def _message(item: _Translated) -> str:
    """A short, specific message for one pydantic error (pydantic's own wording is the fallback)."""
    if item.message is not None:
        return item.message
    error = item.error
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    segments = item.located.segments
    name = _clip(str(segments[-1]), MAX_QUOTED_KEY) if segments else ""
    if kind == "missing":
        return f"missing required key '{name}'"
    if kind == "extra_forbidden":
        return f"unknown key '{name}'"
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        return _tag_message(item)
    if kind == "literal_error":
        return _literal_message(name, value, str(ctx.get("expected", "")))
    if kind == "string_pattern_mismatch":
        return _pattern_message(error, value, str(ctx.get("pattern", "")))
    if kind == "invalid_key" or (kind == "string_type" and error["loc"][-1:] == ("[key]",)):
        return f"invalid key {_describe(value)}: keys must be strings (quote it)"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_describe(value)}"
    if kind == "value_error":
        text = str(error["msg"]).removeprefix("Value error, ")
        return text.replace(repr(value), _quote(value)) if isinstance(value, str) else text
    if kind == "string_too_short":
        minimum = ctx.get("min_length", 1)
        return "must not be empty" if minimum == 1 else f"must be at least {minimum} characters"
    if kind == "too_short":
        minimum = ctx.get("min_length", 1)
        return "must not be empty" if minimum == 1 else f"must have at least {minimum} items"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return str(error["msg"]).replace("Input should be", "must be")
    text = str(error["msg"])
    return text[:1].lower() + text[1:]


def _tag_message(item: _Translated) -> str:
    """Errors of tagged unions name the discriminator key (`type`, `provider`), which is where they point."""
    error = item.error
    ctx = error.get("ctx") or {}
    key = str(ctx.get("discriminator", "type")).strip("'")
    node = item.located.node
    if error["type"] == "union_tag_not_found":
        if not isinstance(node, CommentedMap):
            return f"expected a mapping, got {_describe(error.get('input'))}"
        item.located.line, item.located.column = _node_position(node) or (
            item.located.line,
            item.located.column,
        )
        item.located.segments.append(key)
        return f"missing required key '{key}'"
    if isinstance(node, CommentedMap):
        item.located.line, item.located.column = _key_position(node, key) or (
            item.located.line,
            item.located.column,
        )
    item.located.segments.append(key)
    return f"unknown {key} {_quote(ctx.get('tag'))}: expected one of {ctx.get('expected_tags')}"


def _literal_message(name: Segment, value: Any, expected: str) -> str:
    if name == "strategy" and value == "parallel":
        return "strategy 'parallel' is not supported: only 'sequential' is"
    if name == "version" and not isinstance(value, str):
        return f'expected the string "1.0", got {_describe(value)} (quote it: version: "1.0")'
    shown = _quote(value) if isinstance(value, str) else _describe(value)
    return f"invalid value {shown}: expected {expected}"


def _pattern_message(error: ErrorDetails, value: Any, pattern: str) -> str:
    if pattern == ID_PATTERN:
        kind = ("id" if error["loc"][-1:] == ("[key]",) else "memory corpus name" if error["loc"][:1] == ("memory",)
                else "signal id")
        return f"invalid {kind} {_quote(value, MAX_QUOTED_KEY)}: use 1-64 letters, digits, '_' or '-'"
    if pattern == WORKSPACE_ID_PATTERN:
        return (
            f"invalid workspace id {_quote(value, MAX_QUOTED_KEY)}: use at most 63 lower-case letters, digits, '_'"
            " or '-',"
            " starting with a letter or digit"
        )
    if pattern == "^/":
        return f"invalid path {_quote(value)}: must start with '/'"
    if "[A-Za-z_]" in pattern and ":" in pattern:
        return f"invalid entrypoint {_quote(value)}: expected 'package.module:function'"
    return f"invalid value {_quote(value)}: must match {pattern}"


# ---------------------------------------------------------------- cross-references


def is_valid_schedule(expression: str) -> bool:
    """A 5-field cron expression or one of the four macros the spec allows (croniter alone also takes 6/7)."""
    text = expression.strip()
    if text in CRON_MACROS:
        return True
    return len(text.split()) == 5 and bool(croniter.is_valid(text))


def is_valid_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return False
    return True


class _CrossChecker:
    """Rules that span several parts of a structurally valid file (spec §2.8 "Cross-references")."""

    def __init__(self, config: WorkspaceConfig, ws_id: str, report: _Reporter,
                 unavailable_agents: Mapping[str, str], document: Mapping[str, Any]) -> None:
        """`document` is the file's data: its declared names count even for the entries `config` left out
        (`_salvage`), so a reference to a malformed agent is not also reported as unknown."""
        self.config = config
        self.ws_id = ws_id
        self.report = report
        self.unavailable_agents = unavailable_agents
        self.signal_names = _declared(document, "signals")
        self.agent_names = [*_declared(document, "agents"), *unavailable_agents]

    def run(self) -> None:
        for signal_id in self.config.signals:
            self._check_signal(signal_id)
        handled_by: dict[str, str] = {}
        for job_id, job in self.config.jobs.items():
            self._check_triggers(job_id, job, handled_by)
            self._check_job(job_id, job)
        self._check_memory()

    def _check_memory(self) -> None:
        """A corpus name is its key on the bus and in the API: two corpora of one name would share entries."""
        seen: set[str] = set()
        for index, corpus in enumerate(self.config.memory.own):
            if corpus.name in seen:
                self.report.error(("memory", "own", index, "name"), f"memory corpus '{corpus.name}' is declared twice")
            seen.add(corpus.name)

    # signals

    def _check_signal(self, signal_id: str) -> None:
        signal = self.config.signals[signal_id]
        base: tuple[Segment, ...] = ("signals", signal_id)
        if signal.schema_ is not None:
            self._check_schema((*base, "schema"), signal.schema_)
        config = signal.config
        if isinstance(config, ScheduleSignalConfig):
            self._check_schedule((*base, "config"), config, signal.concurrency)

    def _check_schema(self, at: tuple[Segment, ...], schema: dict[str, Any]) -> None:
        meta = Draft202012Validator(Draft202012Validator.META_SCHEMA)
        problems = sorted(meta.iter_errors(schema), key=lambda e: list(map(str, e.absolute_path)))
        for problem in problems:
            inner = tuple(problem.absolute_path)
            self.report.error((*at, *inner), f"invalid JSON Schema: {problem.message}")
        if problems:
            return
        if schema.get("type") != "object":
            where = (*at, "type") if "type" in schema else at
            self.report.error(where, "the schema root must be 'type: object'")

    def _check_schedule(
        self, at: tuple[Segment, ...], config: ScheduleSignalConfig, concurrency: str
    ) -> None:
        if not is_valid_schedule(config.schedule):
            self.report.error(
                (*at, "schedule"),
                f"invalid cron expression '{config.schedule}': expected 5 cron fields"
                f" (minute hour day month weekday) or one of {', '.join(CRON_MACROS)}",
            )
        if not is_valid_timezone(config.timezone):
            self.report.error((*at, "timezone"), f"unknown time zone '{config.timezone}'")
        if config.onMissed == "catchup" and concurrency == "skip":
            self.report.warning(
                (*at, "onMissed"),
                "onMissed 'catchup' with concurrency 'skip' runs only the first missed slot;"
                " use concurrency 'queue' to run them all",
            )

    # jobs

    def _check_triggers(self, job_id: str, job: Job, handled_by: dict[str, str]) -> None:
        for index, trigger in enumerate(job.triggers):
            at = ("jobs", job_id, "triggers", index, "signal")
            if trigger.signal not in self.signal_names:
                self.report.error(at, _unknown("signal", trigger.signal, self.signal_names))
                continue
            owner = handled_by.setdefault(trigger.signal, job_id)
            if owner == job_id and any(t.signal == trigger.signal for t in job.triggers[:index]):
                self.report.error(at, f"signal '{trigger.signal}' is listed twice")
            elif owner != job_id:
                self.report.error(
                    at,
                    f"signal '{trigger.signal}' is already handled by job '{owner}'"
                    " (a signal triggers at most one job)",
                )

    def _check_job(self, job_id: str, job: Job) -> None:
        base: tuple[Segment, ...] = ("jobs", job_id)
        if job.fsm is not None and job.execution is not None:
            self.report.error((*base, "execution"), "a job has either 'fsm' or 'execution', not both")
        elif job.fsm is None and job.execution is None:
            self.report.error(base, "a job needs 'fsm' or 'execution'", at_mapping=True)
        if job.fsm is not None:
            self._check_fsm(job_id, job, job.fsm)
        if job.execution is not None:
            for index, step in enumerate(job.execution.agents):
                agent_id = step.id if isinstance(step, SequentialStep) else step
                at: tuple[Segment, ...] = (*base, "execution", "agents", index)
                if isinstance(step, SequentialStep):
                    at = (*at, "id")
                self._check_agent_ref(at, agent_id)

    def _check_fsm(self, job_id: str, job: Job, fsm: Fsm) -> None:
        base: tuple[Segment, ...] = ("jobs", job_id, "fsm")
        if fsm.initial not in fsm.states:
            self.report.error((*base, "initial"), f"unknown state '{fsm.initial}'")
        for state_id, state in fsm.states.items():
            at_state = (*base, "states", state_id)
            for index, action in enumerate(state.entry):
                self._check_action(job, (*at_state, "entry", index), action)
            for event, transitions in state.on.items():
                at_event = (*at_state, "on", event)
                if isinstance(transitions, Transition):
                    self._check_transition(job, fsm, at_event, transitions)
                else:
                    for index, transition in enumerate(transitions):
                        self._check_transition(job, fsm, (*at_event, index), transition)

    def _check_transition(self, job: Job, fsm: Fsm, at: tuple[Segment, ...], transition: Transition) -> None:
        if transition.target not in fsm.states:
            self.report.error((*at, "target"), f"unknown state '{transition.target}'")
        for index, action in enumerate(transition.actions):
            self._check_action(job, (*at, "actions", index), action)

    def _check_action(self, job: Job, at: tuple[Segment, ...], action: Action) -> None:
        if isinstance(action, AgentAction):
            self._check_agent_ref((*at, "agentId"), action.agentId)
        elif isinstance(action, SignalAction):
            self._check_signal_action(job, at, action)

    def _check_agent_ref(self, at: tuple[Segment, ...], agent_id: str) -> None:
        # An agent atlas cannot run was warned about where it is declared; its job refuses triggers instead.
        if agent_id not in self.agent_names and agent_id not in BUILTIN_AGENTS:
            self.report.error(at, _unknown("agent", agent_id, [*self.agent_names, *BUILTIN_AGENTS]))

    def _check_signal_action(self, job: Job, at: tuple[Segment, ...], action: SignalAction) -> None:
        """Same-workspace targets can be checked now; other workspaces are only known at run time."""
        if action.workspace not in (None, self.ws_id):
            return
        if action.signal not in self.signal_names:
            self.report.error((*at, "signal"), _unknown("signal", action.signal, self.signal_names))
        elif action.wait and any(t.signal == action.signal for t in job.triggers):
            self.report.error(
                (*at, "signal"),
                f"a 'wait: true' signal action cannot trigger its own job's signal '{action.signal}'"
                " (it would wait for itself)",
            )


def _declared(document: Mapping[str, Any], section: str) -> list[str]:
    """The names a section of the file declares, in file order, malformed entries included."""
    entries = document.get(section)
    return [name for name in entries if isinstance(name, str)] if isinstance(entries, dict) else []


def _unknown(kind: str, name: str, known: Sequence[str]) -> str:
    """`unknown agent 'x': did you mean 'y'? (known agents: …)`: the closest name, then the names there are."""
    message = f"unknown {kind} '{name}'"
    closest = _closest(name, known)
    if closest is not None:
        message += f": did you mean '{closest}'?"
    if not known:
        return f"{message} (this workspace declares no {kind}s)"
    listed = ", ".join(known[:MAX_LISTED_NAMES]) + (", …" if len(known) > MAX_LISTED_NAMES else "")
    return f"{message} (known {kind}s: {listed})"
