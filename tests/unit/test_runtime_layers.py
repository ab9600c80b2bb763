"""The runtime's seams (issue #13): no component imports the composition root, `runtime/` has no import circle,
and the unit tests' fakes implement the ports they stand for.

Imports are read from the source with `ast` (no import side effects), so a circle hidden behind
`if TYPE_CHECKING:` counts too.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "src" / "atlas" / "runtime"
ROOT = "atlas.runtime.daemon"


def _runtime_imports() -> dict[str, set[str]]:
    """module name -> the atlas.runtime modules it imports (anywhere in the file)."""
    graph: dict[str, set[str]] = {}
    for path in RUNTIME.glob("*.py"):
        name = f"atlas.runtime.{path.stem}"
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("atlas.runtime."):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("atlas.runtime."))
        graph[name] = found - {name}
    return graph


def test_no_component_imports_the_composition_root() -> None:
    offenders = sorted(m for m, deps in _runtime_imports().items() if ROOT in deps)
    assert offenders == []


def test_the_runtime_has_no_import_circle() -> None:
    graph = _runtime_imports()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for dep in graph.get(module, ()):
            visit(dep, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_the_fakes_implement_the_ports_they_stand_for() -> None:
    """Every method of the in-memory fakes exists on the real port with the same parameters, so the unit tests
    drive the runtime through calls it really makes (helpers for assertions excepted)."""
    from atlas.bus.client import Bus
    from atlas.bus.sessionlog import SessionLog
    from tests.unit.fakes import FakeBus, FakeSessionLog

    helpers = {"events"}
    for fake, real in ((FakeBus, Bus), (FakeSessionLog, SessionLog)):
        for name, member in vars(fake).items():
            if name.startswith("_") or name in helpers or not callable(member):
                continue
            assert hasattr(real, name), f"{real.__name__} has no {name}"
            ours = list(inspect.signature(member).parameters)
            theirs = list(inspect.signature(getattr(real, name)).parameters)
            assert ours == theirs, f"{fake.__name__}.{name}{ours} != {real.__name__}.{name}{theirs}"
