"""Bug 11: a runaway template fails its step with `template_error` promptly and never freezes the daemon.

Templates come from workspace files, but the data they loop over comes from payloads, so a template such as
`{% for i in range(payload.n) %}{% for j in range(payload.n) %}…` is a payload-driven CPU bomb. The sandbox bounds
loop iterations, output size, values built inside the template and the time a render may take, and the engine and
agents render on worker threads, so /health and the job timers keep working while a render runs.

The unit tests run each render on a daemon thread with a generous liveness bound, so that against unbounded code
they fail (the render is still running) instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atlas.templating import _RENDER_THREADS, TemplateError, Templater
from tests.daemon_proc import FIXTURES, DaemonProcess, wait_for
from tests.test_api_core import post

#: A workspace secret the `leak` job reads with `secret()` and transforms before it is recorded.
SECRET = "Tpl-s3cr3t-Value"
#: Liveness bound for a render that the sandbox must stop "within about a second".
LIVENESS_S = 10.0

NESTED_RANGES = "{% for i in range(n) %}{% for j in range(n) %}{% endfor %}{% endfor %}done"
#: Exponential recursion: no loop to count, so only the time budget stops it.
EXPONENTIAL_MACRO = "{% macro f(k) %}{% if k %}{{ f(k - 1) }}{{ f(k - 1) }}{% endif %}{% endmacro %}{{ f(40) }}"


def _render_in_thread(templater: Templater, source: str, variables: dict[str, Any]) -> BaseException | Any:
    """Render on a daemon thread; return the exception (or the value) once it ends, fail if it does not."""
    outcome: list[Any] = []

    def work() -> None:
        try:
            outcome.append(templater.render(source, variables))
        except BaseException as exc:  # the test inspects whatever came out
            outcome.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(LIVENESS_S)
    assert not thread.is_alive(), f"render still running after {LIVENESS_S}s: {source[:80]!r}"
    return outcome[0]


@pytest.fixture
def templater() -> Templater:
    return Templater()


@pytest.mark.parametrize(
    ("source", "variables"),
    [
        pytest.param(NESTED_RANGES, {"n": 100_000}, id="nested-ranges"),
        pytest.param("{{ ((b ** 1000) ** 1000) ** 1000 }}", {"b": 2}, id="chained-power"),
        pytest.param(
            "{% set ns = namespace(x=b) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}"
            "{{ ns.x > 0 }}",
            {"b": 3}, id="repeated-squaring",
        ),
        pytest.param(EXPONENTIAL_MACRO, {}, id="exponential-macro-recursion"),
    ],
)
def test_runaway_renders_fail_with_template_error_promptly(
    templater: Templater, source: str, variables: dict[str, Any]
) -> None:
    started = time.monotonic()
    outcome = _render_in_thread(templater, source, variables)
    assert isinstance(outcome, TemplateError), f"expected a TemplateError, got {outcome!r:.200}"
    assert time.monotonic() - started < LIVENESS_S


def test_loop_iterations_are_capped_across_nested_loops(templater: Templater) -> None:
    xs = list(range(1000))  # 1000 x 1000 = 1e6 iterations, each range far below jinja's own cap
    outcome = _render_in_thread(templater, "{% for a in xs %}{% for b in xs %}{% endfor %}{% endfor %}ok", {"xs": xs})
    assert isinstance(outcome, TemplateError) and "iterations" in str(outcome)


def test_output_is_capped_at_one_mib(templater: Templater) -> None:
    outcome = _render_in_thread(templater, "{% for i in range(20000) %}{{ 'x' * 100 }}{% endfor %}", {})
    assert isinstance(outcome, TemplateError) and "output" in str(outcome)


def test_values_built_inside_a_template_are_capped(templater: Templater) -> None:
    doubling = "{% set ns = namespace(s='x') %}{% for i in range(26) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    outcome = _render_in_thread(templater, doubling + "{{ ns.s | length }}", {})
    assert isinstance(outcome, TemplateError), f"built a {outcome} character string"
    extending = "{% set l = [1] %}{% for i in range(26) %}{{ l.extend(l) or '' }}{% endfor %}{{ l | length }}"
    outcome = _render_in_thread(templater, extending, {})
    assert isinstance(outcome, TemplateError), f"built a {outcome} item list"


def test_ordinary_templates_still_render(templater: Templater) -> None:
    items = list(range(500))
    assert templater.render("{% for i in xs %}{{ i }},{% endfor %}", {"xs": items}) == "".join(f"{i}," for i in items)
    assert templater.render("{{ 2 ** 1024 > 0 }}", {}) is True
    assert templater.render("{{ 10 ** 100 * 10 ** 100 == 10 ** 200 }}", {}) is True
    ns = "{% set ns = namespace(n=0) %}{% for i in range(1000) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}"
    assert templater.render(ns, {}) == "499500"
    assert templater.render("{% for i in range(3) %}{{ loop.index }}/{{ loop.length }} {% endfor %}", {}) == (
        "1/3 2/3 3/3 "
    )
    assert templater.render("{% for x in xs if x > 1 %}{{ x }}{% else %}none{% endfor %}", {"xs": [1, 2, 3]}) == "23"
    big = "y" * (2 * 1024 * 1024)  # data that is already there passes through a native render unchanged
    assert templater.render("{{ payload.big }}", {"payload": {"big": big}}) == big


def test_the_budget_is_per_render(templater: Templater) -> None:
    source = "{% for i in range(60000) %}{% endfor %}ok"
    for _ in range(3):  # 180 000 iterations in all, 60 000 per render
        assert templater.render(source, {}) == "ok"


async def test_render_async_keeps_the_loop_responsive(templater: Templater) -> None:
    task = asyncio.create_task(templater.render_async(EXPONENTIAL_MACRO, {}))
    await asyncio.sleep(0)  # let the task start its render
    ticks, longest_gap, last = 0, 0.0, time.monotonic()
    while not task.done():  # the loop keeps turning while the render spends its second on a worker thread
        await asyncio.sleep(0.01)
        now = time.monotonic()
        ticks, longest_gap, last = ticks + 1, max(longest_gap, now - last), now
    with pytest.raises(TemplateError, match="longer than"):
        task.result()
    assert ticks > 10 and longest_gap < 0.5, (ticks, longest_gap)  # a render on the loop would be one 1 s gap
    assert await templater.render_async("{{ n + 1 }}", {"n": 1}) == 2
    assert await templater.render_async({"a": "{{ n }}", "b": [True, "plain"]}, {"n": 5}) == {
        "a": 5, "b": [True, "plain"]
    }
    assert await templater.truthy_async("{{ n > 3 }}", {"n": 5}) is True
    assert await templater.truthy_async(False, {}) is False


async def test_cancelling_render_async_frees_its_worker_at_once(templater: Templater) -> None:
    """A job timeout or cancel stops the render at its next check instead of letting it run out its second."""
    running: list[int] = []

    def started() -> str:
        running.append(1)  # list.append is atomic: called from the pool's threads
        return ""

    source = "{{ started() }}" + EXPONENTIAL_MACRO
    tasks = [asyncio.create_task(templater.render_async(source, {"started": started})) for _ in range(_RENDER_THREADS)]
    deadline = time.monotonic() + LIVENESS_S
    while len(running) < _RENDER_THREADS:  # every pool thread is inside a render
        assert time.monotonic() < deadline, "the renders did not start"
        await asyncio.sleep(0.005)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    started = time.monotonic()
    assert await templater.render_async("{{ n * 2 }}", {"n": 21}) == 42  # needs one of the pool's threads
    assert time.monotonic() - started < 0.5  # the cancelled renders would otherwise hold them for ~1 s


# ---------------------------------------------------------------- a real daemon


@pytest.fixture(scope="module")
def tdaemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    home: Path = tmp_path_factory.mktemp("templates-home")
    d = DaemonProcess(home, [FIXTURES / "templates"], env={"TPL_TEST_SECRET": SECRET}).start()
    yield d
    d.stop()


def _health_within_2s(d: DaemonProcess) -> None:
    started = time.monotonic()
    r = httpx.get(f"{d.url}/health", timeout=2)
    assert r.status_code == 200 and time.monotonic() - started < 2.0


def _run_watching_health(d: DaemonProcess, signal: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Trigger `signal` and poll the session to its end, asking /health (2 s bound) between every poll."""
    sid = post(d, "templates", signal, {"payload": payload}).json()["sessionId"]
    terminal = {"completed", "failed", "skipped", "cancelled", "interrupted"}

    def ended() -> dict[str, Any] | None:
        _health_within_2s(d)
        view = httpx.get(f"{d.url}/api/sessions/{sid}", timeout=2).json()
        return view if view.get("status") in terminal else None

    view: dict[str, Any] = wait_for(ended, 30, what=f"{signal} session to end")
    return view


@pytest.mark.parametrize(
    ("signal", "payload"),
    [("spin", {"n": 100_000}), ("power", {"b": 2}), ("branch", {"n": 100_000}), ("recurse", {"k": 40})],
)
def test_runaway_template_fails_its_step_and_health_keeps_answering(
    tdaemon: DaemonProcess, signal: str, payload: dict[str, Any]
) -> None:
    started = time.monotonic()
    view = _run_watching_health(tdaemon, signal, payload)
    assert view["status"] == "failed" and view["errorCode"] == "template_error", view
    assert time.monotonic() - started < LIVENESS_S
    if signal != "branch":  # a `cond` fails the session before any step starts
        block = view["agentBlocks"][0]
        assert block["status"] == "failed" and block["errorCode"] == "template_error"
    assert _run_watching_health(tdaemon, "echo", {"still": "healthy"})["status"] == "completed"


def test_concurrent_slow_renders_leave_health_answering(tdaemon: DaemonProcess) -> None:
    """Four renders that each spend their whole second at once: on the loop that is 4 s without /health."""
    sids = [post(tdaemon, "templates", "recurse", {"payload": {"k": 40}}).json()["sessionId"] for _ in range(4)]
    terminal = {"completed", "failed", "skipped", "cancelled", "interrupted"}

    def all_ended() -> list[dict[str, Any]] | None:
        _health_within_2s(tdaemon)
        views = [httpx.get(f"{tdaemon.url}/api/sessions/{sid}", timeout=2).json() for sid in sids]
        return views if all(v.get("status") in terminal for v in views) else None

    views: list[dict[str, Any]] = wait_for(all_ended, 30, what="the four recurse sessions to end")
    assert all(v["status"] == "failed" and v["errorCode"] == "template_error" for v in views), views
    assert all("longer than" in v["error"] for v in views), [v["error"] for v in views]


@pytest.mark.parametrize("signal", ["deadline", "shell-deadline"])
def test_the_job_timeout_fires_while_a_template_renders(tdaemon: DaemonProcess, signal: str) -> None:
    """The job's 200 ms timer ends the session before the render's own one-second budget could have (an llm-style
    prompt rendered by the engine, and a shell step's argv rendered by the agent)."""
    view = _run_watching_health(tdaemon, signal, {"k": 40})
    assert view["status"] == "failed" and view["errorCode"] == "timeout", view
    assert view["error"] == "Job timed out after 200ms"
    assert view["durationMs"] < 1000, view["durationMs"]  # a render on the loop holds the timer for its 1 s


def test_secrets_in_prompts_and_summaries_are_redacted_in_any_case(tdaemon: DaemonProcess) -> None:
    """A rendered prompt is recorded as the step's `task`, and the summary as `session:summary`: both redacted."""
    view = _run_watching_health(tdaemon, "leak", {})
    assert view["status"] == "completed", view
    sid = view["sessionId"]
    events = []
    with httpx.stream("GET", f"{tdaemon.url}/api/sessions/{sid}/stream", timeout=10) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line[6:].startswith('{"type"'):
                events.append(line[6:])
    recorded = "\n".join(events) + httpx.get(f"{tdaemon.url}/api/sessions/{sid}", timeout=5).text
    assert SECRET.lower() not in recorded.lower(), recorded
    assert "key=***" in recorded and "used ***" in recorded
    assert SECRET.lower() not in tdaemon.log().lower()
