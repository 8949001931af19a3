"""Data snapshots are named by their content (stored once, checked when read), and labelled
files for `models evaluate` load from .npz and .csv with clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from lockgate.errors import ErrorKind, LockgateError
from lockgate.retrain.dataset import content_hash
from lockgate.retrain.datastore import DataStore, load_labelled


def test_snapshots_are_content_addressed_and_deduplicated(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    y = (rng.random(50) < 0.5).astype(np.float64)
    store = DataStore(tmp_path)
    digest = store.put(x, y)
    assert digest == content_hash(x, y)
    assert store.put(x.copy(), y.copy()) == digest  # the same data: the same file
    assert [p.name for p in (tmp_path / "data").iterdir()] == [f"{digest}.npz"]
    back_x, back_y = store.get(digest)
    assert back_x.dtype == np.float32 and back_y.dtype == np.float64
    assert np.array_equal(back_x, x) and np.array_equal(back_y, y)
    other = store.put(x[:10], y[:10])
    assert other != digest and len(list((tmp_path / "data").iterdir())) == 2


def test_a_changed_or_missing_snapshot_is_refused(tmp_path: Path) -> None:
    store = DataStore(tmp_path)
    x, y = np.ones((4, 2), np.float32), np.zeros(4)
    digest = store.put(x, y)
    buf = io.BytesIO()
    np.savez(buf, x=x * 2, y=y)
    store.path(digest).write_bytes(buf.getvalue())
    with pytest.raises(LockgateError, match="does not match its hash") as changed:
        store.get(digest)
    assert changed.value.kind is ErrorKind.UNAVAILABLE
    with pytest.raises(LockgateError) as missing:
        store.get("0" * 64)
    assert missing.value.kind is ErrorKind.NOT_FOUND
    with pytest.raises(LockgateError, match="not a sha256"):
        store.get("../../etc/passwd")


def test_labelled_npz_and_csv(tmp_path: Path) -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.5], [5.0, 6.0]])
    y = np.array([0.0, 1.0, 1.0])
    np.savez(tmp_path / "upper.npz", X=x, y=y)
    np.savez(tmp_path / "lower.npz", x=x, y=y.reshape(-1, 1))
    (tmp_path / "data.csv").write_text("a,label,b\n1,0,2\n3,1,4.5\n5,1,6\n")
    (tmp_path / "target.csv").write_text("a,b,target\n1,2,0\n3,4.5,1\n5,6,1\n")
    for path, column in (
        (tmp_path / "upper.npz", "label"),
        (tmp_path / "lower.npz", "label"),
        (tmp_path / "data.csv", "label"),
        (tmp_path / "target.csv", "target"),
    ):
        got_x, got_y = load_labelled(path, column)
        assert got_x.dtype == np.float32 and got_y.dtype == np.float64, path
        assert np.array_equal(got_x, x.astype(np.float32)) and np.array_equal(got_y, y), path


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.txt", b"1,2", "must be .npz"),
        ("d.csv", b"a,b\n1,2\n", "no column 'label'"),
        ("d.csv", b"a,label\n1,2,3\n", "3 columns of numbers, 2 in the header"),
        ("d.csv", b"a,label\nx,1\n", "cannot read"),
        ("d.csv", b"a,label\nnan,1\n", "must be finite"),
        ("d.npz", b"not a zip", "cannot read"),
    ],
)
def test_bad_labelled_files(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LockgateError, match=message) as caught:
        load_labelled(path)
    assert caught.value.kind is ErrorKind.INVALID


def test_npz_needs_x_and_y(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", features=np.ones((2, 2)), y=np.ones(2))
    with pytest.raises(LockgateError, match="needs arrays 'X' and 'y'"):
        load_labelled(tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", X=np.ones((2, 2)), y=np.ones(3))
    with pytest.raises(LockgateError, match="X must be"):
        load_labelled(tmp_path / "e.npz")
