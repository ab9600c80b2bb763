"""Streamed text and secrets: `Templater.secret_begins_at_end` says how much of a growing text's end could still
become a secret, which the chat's `Recorder` holds back (tests/test_chat.py runs it end to end)."""

from __future__ import annotations

from atlas.templating import Templater


def templater(*secrets: str) -> Templater:
    t = Templater(environ={})
    for secret in secrets:
        t.add_secret(secret)
    return t


def test_no_secret_holds_nothing() -> None:
    assert Templater(environ={}).secret_begins_at_end("anything sk-") == 0


def test_the_longest_possible_beginning_of_a_secret_is_held() -> None:
    t = templater("sk-abc123")
    assert t.secret_begins_at_end("the key is sk-ab") == len("sk-ab")
    assert t.secret_begins_at_end("the key is SK-AB") == len("SK-AB")  # redaction ignores case, so does this
    assert t.secret_begins_at_end("the key is s") == 1
    assert t.secret_begins_at_end("the key is sk-abc12") == len("sk-abc12")
    assert t.secret_begins_at_end("plain words.") == 0
    assert t.secret_begins_at_end(t.redact("the key is sk-abc123")) == 0  # a whole one is redacted first
    assert t.secret_begins_at_end("sk") == 2  # shorter than the secret's beginning window


def test_a_reversed_secret_counts_too() -> None:
    t = templater("sk-abc123")
    assert t.secret_begins_at_end("backwards: 321") == 3


def test_a_stream_redactor_lets_text_through_and_holds_only_a_secrets_beginning() -> None:
    from atlas.templating import StreamRedactor

    stream = StreamRedactor(templater("sk-abc123"))
    assert stream.feed("Hello, ") == "Hello, "
    assert stream.feed("the key is sk-a") == "the key is "  # "sk-a" could be the key: held
    assert stream.feed("bc123 and more") == "*** and more"
    assert stream.feed(" then sk") == " then "
    assert stream.flush() == "sk"  # the end came: it was no secret
    assert stream.flush() == ""
