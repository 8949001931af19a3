"""Parsing the API keys file and LOCKGATE_API_KEYS, and checking a presented key: errors name
the line and the key's name, never the key; `lockgate serve` refuses to start on them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lockgate.cli import main
from lockgate.errors import ErrorKind, LockgateError
from lockgate.serve.transport.client_keys import (
    FEEDBACK,
    INFER,
    READ,
    ClientKeys,
    load_keys,
    parse_keys,
)

KEY = "k" * 16
OTHER = "o" * 20


def lines(*texts: str) -> list[tuple[str, str]]:
    return [(f"line {i}", t) for i, t in enumerate(texts, 1)]


def test_a_file_of_keys_with_comments_blank_lines_and_default_scope(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(
        f"# clients\n\napp:{KEY}:infer\n  labeller : {OTHER} : feedback \nops:{'z' * 30}\n"
    )
    assert load_keys(path, None) == (
        ("app", KEY, "infer"),
        ("labeller", OTHER, "feedback"),
        ("ops", "z" * 30, "all"),
    )


def test_the_environment_variable_adds_entries_by_comma_or_newline(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"app:{KEY}\n")
    env = f"b:{OTHER}:infer,c:{'c' * 16}\nd:{'d' * 16}:feedback"
    assert [n for n, _, _ in load_keys(path, env)] == ["app", "b", "c", "d"]
    assert load_keys(None, None) == ()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([f"app:{'s' * 15}"], "line 1: key 'app' is shorter than 16 characters"),
        ([f"app:{KEY}:write"], "line 1: key 'app' has the unknown scope 'write'"),
        (["# c", f"app:{KEY}", f"app:{OTHER}"], "line 3: the name 'app' is given twice"),
        ([f"app:{KEY}", f"ops:{KEY}"], "line 2: key 'ops' is the same key as 'app'"),
        ([f"{KEY}"], "line 1: expected name:key[:scope]"),
        ([f"app:{KEY}:infer:x"], "line 1: expected name:key[:scope] (a key may not contain ':')"),
        ([f"bad name:{KEY}"], "line 1: the name must be 1-64 letters"),
        ([f"app:{'é' * 16}"], "line 1: key 'app' must be printable ASCII without spaces"),
    ],
    ids=["short", "scope", "dup-name", "dup-key", "bare", "colons", "name", "ascii"],
)
def test_a_bad_entry_is_refused_naming_its_line_never_the_key(
    entries: list[str], message: str
) -> None:
    with pytest.raises(LockgateError) as info:
        parse_keys(lines(*entries))
    assert info.value.kind is ErrorKind.INVALID
    assert message in info.value.message
    for secret in (KEY, OTHER, "s" * 15, "é" * 16):
        assert secret not in info.value.message


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LockgateError, match="cannot read the API keys file"):
        load_keys(tmp_path / "missing", None)


def test_serve_refuses_to_start_on_a_bad_keys_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys"
    path.write_text(f"app:{KEY}\n# short one:\nweak:short-secret\n")
    home = tmp_path / "home"
    home.mkdir()
    assert main(["serve", "--home", str(home), "--api-keys-file", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path} line 3: key 'weak' is shorter than 16 characters" in err
    assert "short-secret" not in err
    monkeypatch.setenv("LOCKGATE_API_KEYS", f"app:{KEY},app:{OTHER}")
    assert main(["serve", "--home", str(home)]) == 1
    assert "LOCKGATE_API_KEYS entry 2: the name 'app' is given twice" in capsys.readouterr().err


def test_a_presented_key_is_checked_against_its_scope() -> None:
    keys = ClientKeys(parse_keys(lines(f"app:{KEY}:infer", f"lab:{OTHER}:feedback")))
    assert keys.client(f"Bearer {KEY}", INFER) == "app"
    assert keys.client(f"Bearer {OTHER}", READ) == "lab"
    assert keys.client(f"  BEARER   {OTHER} ", FEEDBACK) == "lab"
    with pytest.raises(LockgateError) as info:
        keys.client(f"Bearer {KEY}", FEEDBACK)
    assert info.value.kind is ErrorKind.FORBIDDEN and "'feedback'" in info.value.message
    for header, message in [
        (None, "an API key is required"),
        ("", "malformed"),
        (f"Basic {KEY}", "malformed"),
        (f"Bearer {KEY}x", "invalid API key"),
        (f"Bearer {KEY[:-1]}", "invalid API key"),
        ("Bearer " + "\udcff" * 16, "invalid API key"),  # undecodable bytes from the wire
    ]:
        with pytest.raises(LockgateError) as info:
            keys.client(header, INFER)
        assert info.value.kind is ErrorKind.UNAUTHORIZED and message in info.value.message
    assert keys.requests == {"app": 1, "lab": 2}


def test_without_keys_every_caller_is_anonymous() -> None:
    keys = ClientKeys()
    assert not keys.enabled and keys.client(None, INFER) == "" and not keys.requests


def test_keys_are_found_by_digest_and_compared_whole() -> None:
    """A digest collision cannot let a different key in: the stored key is compared too."""
    keys = ClientKeys([("app", KEY, "all")])
    (digest,) = keys._by_digest
    assert digest == hashlib.sha256(KEY.encode()).digest()
    keys._by_digest[hashlib.sha256(OTHER.encode()).digest()] = keys._by_digest[digest]
    with pytest.raises(LockgateError, match="invalid API key"):
        keys.client(f"Bearer {OTHER}", INFER)


def test_a_keys_file_without_a_key_is_refused(tmp_path: Path) -> None:
    """Given a file, the operator means to require keys: an empty one must not open the gateway."""
    path = tmp_path / "keys"
    path.write_text("# nobody yet\n\n")
    with pytest.raises(LockgateError, match="holds no key"):
        load_keys(path, None)
