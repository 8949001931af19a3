"""Which commands may use or create a lockgate home, and the messages naming the path."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lockgate.cli_home import existing_home, serve_home
from lockgate.errors import ErrorKind, LockgateError


def test_existing_home_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)
    assert existing_home("home") == tmp_path / "home"
    assert serve_home(Path("home"), create=False) == tmp_path / "home"
    with pytest.raises(LockgateError) as missing:
        existing_home("nope")
    assert missing.value.kind is ErrorKind.NOT_FOUND
    assert f"no lockgate home at {tmp_path / 'nope'}" in missing.value.message


def test_a_file_is_not_a_home(tmp_path: Path) -> None:
    file = tmp_path / "home"
    file.write_text("")
    for check in (lambda: existing_home(file), lambda: serve_home(file, create=True)):
        with pytest.raises(LockgateError) as info:
            check()
        assert info.value.message == f"the lockgate home {file} is not a directory"


def test_serve_creates_only_inside_an_existing_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="lockgate"):
        assert serve_home(tmp_path / "new", create=True) == tmp_path / "new"
    assert (tmp_path / "new").is_dir()
    assert f"new empty home at {tmp_path / 'new'}" in caplog.text
    with pytest.raises(LockgateError) as info:
        serve_home(tmp_path / "missing" / "new", create=True)
    assert f"the folder {tmp_path / 'missing'} does not exist" in info.value.message
    assert not (tmp_path / "missing").exists()
