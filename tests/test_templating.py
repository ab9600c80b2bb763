"""Sandboxed templating (spec §2.6): native values, strictness, the sandbox, secrets and truthiness."""

from __future__ import annotations

from typing import Any

import pytest

from atlas.templating import TemplateError, Templater

VARS: dict[str, Any] = {
    "results": {"x": {"n": 3, "list": [1, 2]}},
    "payload": {"name": "ada", "loud": False},
    "signal": {"id": "go"},
    "session": {"id": "s-1"},
}


@pytest.fixture
def templater() -> Templater:
    return Templater()


def test_single_expression_renders_native_values(templater: Templater) -> None:
    assert templater.render("{{ results.x.n }}", VARS) == 3
    assert templater.render("  {{ results.x }}  ", VARS) == {"n": 3, "list": [1, 2]}
    assert templater.render("{{ payload.loud }}", VARS) is False
    assert templater.render("{{ results.x.list | map('string') }}", VARS) == ["1", "2"]
    assert templater.render("{{- results.x.n -}}", VARS) == 3  # whitespace control, not negation
    assert templater.render("{{ -1 }}", VARS) == -1


def test_native_values_are_copies(templater: Templater) -> None:
    rendered = templater.render("{{ results.x }}", VARS)
    rendered["n"] = 99
    assert VARS["results"]["x"]["n"] == 3


def test_other_strings_render_to_strings(templater: Templater) -> None:
    assert templater.render("n={{ results.x.n }}", VARS) == "n=3"
    assert templater.render("{{ results.x.n }} and {{ payload.name }}", VARS) == "3 and ada"
    assert templater.render("{{ results.x | tojson }}", VARS) == '{"list": [1, 2], "n": 3}'
    assert templater.render("{% if payload.loud %}LOUD{% else %}quiet{% endif %}", VARS) == "quiet"
    assert templater.render("<b>{{ payload.name }}</b>", {"payload": {"name": "<i>"}}) == "<b><i></b>"


def test_containers_are_rendered_recursively(templater: Templater) -> None:
    value = {"a": ["{{ results.x.n }}", 7, None], "b": {"c": "hi {{ payload.name }}"}, "d": True}
    assert templater.render(value, VARS) == {"a": [3, 7, None], "b": {"c": "hi ada"}, "d": True}


def test_plain_strings_pass_through(templater: Templater) -> None:
    assert templater.render("no templates {here}", {}) == "no templates {here}"


@pytest.mark.parametrize(
    "source",
    ["{{ nope }}", "{{ results.missing }}", "{{ [results.missing] }}", "a {{ nope }} b", "{{ unclosed"],
)
def test_undefined_or_invalid_is_a_template_error(templater: Templater, source: str) -> None:
    with pytest.raises(TemplateError):
        templater.render(source, VARS)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "x {{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ payload.__init__.__globals__ }}",
        "{{ 2 ** (10 ** 9) }}",
        "{{ 'a' * 10 ** 9 }}",
    ],
)
def test_unsafe_templates_are_template_errors(templater: Templater, source: str) -> None:
    with pytest.raises(TemplateError):
        templater.render(source, VARS)


def test_evaluation_errors_are_template_errors(templater: Templater) -> None:
    with pytest.raises(TemplateError, match="ZeroDivisionError"):
        templater.render("{{ 1 / 0 }}", VARS)


def test_secret_reads_environment_and_is_redacted(
    templater: Templater, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATLAS_TEST_SECRET", "s3cr3t-value")
    assert templater.render("Bearer {{ secret('ATLAS_TEST_SECRET') }}", {}) == "Bearer s3cr3t-value"
    event: dict[str, Any] = {
        "headers": {"Authorization": "Bearer s3cr3t-value"},
        "lines": ["x s3cr3t-value y", 4],
    }
    redacted = templater.redact(event)
    assert redacted == {"headers": {"Authorization": "Bearer ***"}, "lines": ["x *** y", 4]}
    assert event["headers"]["Authorization"] == "Bearer s3cr3t-value"  # a copy, not in place


def test_redact_without_secrets_changes_nothing(templater: Templater) -> None:
    assert templater.redact({"a": ["b", 1]}) == {"a": ["b", 1]}


def test_missing_secret_is_a_template_error(templater: Templater, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATLAS_TEST_MISSING", raising=False)
    with pytest.raises(TemplateError, match="ATLAS_TEST_MISSING"):
        templater.render("{{ secret('ATLAS_TEST_MISSING') }}", {})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("{{ payload.loud }}", False),
        ("{{ results.x.n > 2 }}", True),
        ("{{ results.x.n }}", True),
        ("{{ 0 }}", False),
        ("{{ [] }}", False),
        ("false", False),
        ("FALSE", False),
        ("0", False),
        ("", False),
        ("no", False),
        ("None", False),
        ("null", False),
        ("yes", True),
        ("{{ 'No' }}", False),
        ("{{ payload.name }}", True),
    ],
)
def test_truthy(templater: Templater, value: Any, expected: bool) -> None:
    assert templater.truthy(value, VARS) is expected


def test_truthy_propagates_template_errors(templater: Templater) -> None:
    with pytest.raises(TemplateError):
        templater.truthy("{{ nope }}", VARS)


def test_compiled_templates_are_cached(templater: Templater) -> None:
    for n in range(3):
        assert templater.render("v={{ n }}", {"n": n}) == f"v={n}"
        assert templater.render("{{ n }}", {"n": n}) == n
    compile_template: Any = templater._compile_template
    compile_expression: Any = templater._compile_expression
    assert compile_template.cache_info().hits == 2
    assert compile_expression.cache_info().hits == 2


@pytest.mark.parametrize("name", ["ATLAS_TOKEN", "ATLAS_NATS_CREDS", "ATLAS_NATS_URL"])
def test_secret_refuses_the_daemons_own_credentials(
    templater: Templater, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "daemon-credential-value")
    with pytest.raises(TemplateError, match=name) as caught:
        templater.render(f"Bearer {{{{ secret('{name}') }}}}", {})
    assert "daemon-credential-value" not in str(caught.value)
    assert templater.redact("daemon-credential-value") == "daemon-credential-value"  # never revealed, never noted


@pytest.mark.parametrize(
    "source",
    [
        "{{ secret('ATLAS_TEST_SECRET') | upper }}",
        "{{ secret('ATLAS_TEST_SECRET') | lower }}",
        "{{ secret('ATLAS_TEST_SECRET') | title }}",
        "{{ secret('ATLAS_TEST_SECRET') | capitalize }}",
        "{{ secret('ATLAS_TEST_SECRET').swapcase() }}",
        "{{ secret('ATLAS_TEST_SECRET') | reverse | join }}",
    ],
)
def test_redaction_catches_case_changes_and_reversal_of_a_secret(
    templater: Templater, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    monkeypatch.setenv("ATLAS_TEST_SECRET", "Mixed-Case-s3cr3t")
    rendered = templater.render("token=" + source, {})
    assert isinstance(rendered, str) and rendered != "token=***"
    assert templater.redact({"line": rendered, "json": f'{{"v": "{rendered}"}}'}) == {
        "line": "token=***", "json": '{"v": "token=***"}'
    }
