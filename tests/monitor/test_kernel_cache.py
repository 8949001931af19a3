"""The kernels' on-disk cache is safe for several processes: a process saves only while no other
reads or writes the cache (which keeps two processes from taking the same data file for
different signatures), and an entry holding another signature's code (what numba's own cache can
be left with after such a race) is compiled anew instead of run. Real processes on a real cache
directory; the expected values are computed by numpy. (Processes racing to save rarely collide
in a test-sized run, so the lock is checked directly: the saver is seen waiting for it.)"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lockgate.monitor.kernels.cache import LOCK_NAME

# A kernel whose result depends on its argument's type, so code compiled for another signature
# gives another value (or reads past the array).
KERNEL = """
from lockgate.monitor.kernels.jit import jit


@jit
def weigh(x):
    total = 0.0
    for i in range(x.shape[0]):
        total += x[i] * 2.0
    return total + x.itemsize
"""


def expected(dtype: str) -> float:
    x = np.arange(3, dtype=dtype)
    return float(x.astype(np.float64).sum() * 2.0 + x.itemsize)


def weigh_all(where: Path, dtypes: list[str]) -> dict[str, Any]:
    """Call the kernel on each dtype in this process: the results and cache hits and misses."""
    sys.path.insert(0, str(where))
    import kernel_module  # from `where`, with NUMBA_CACHE_DIR set

    results = {d: kernel_module.weigh(np.arange(3, dtype=d)) for d in dtypes}
    stats = kernel_module.weigh.stats
    return {
        "results": results,
        "hits": sum(stats.cache_hits.values()),
        "misses": sum(stats.cache_misses.values()),
    }


def start_fresh(where: Path, cache: Path, dtypes: tuple[str, ...]) -> subprocess.Popen[str]:
    """`weigh_all` in a new interpreter on the cache `cache`; it prints the result as JSON."""
    code = (
        "import json, sys; from tests.monitor.test_kernel_cache import weigh_all; "
        "print(json.dumps(weigh_all(__import__('pathlib').Path(sys.argv[1]), sys.argv[2:])))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(where), *dtypes],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "NUMBA_CACHE_DIR": str(cache)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_fresh(where: Path, cache: Path, dtypes: tuple[str, ...]) -> dict[str, Any]:
    process = start_fresh(where, cache, dtypes)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.fixture
def kernel(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "kernel_module.py").write_text(KERNEL)
    return tmp_path, tmp_path / "numba-cache"


def test_a_save_waits_while_another_process_holds_the_cache(kernel: tuple[Path, Path]) -> None:
    where, cache = kernel
    run_fresh(where, cache, ("f4",))
    (index,) = cache.rglob("*.nbi")
    assert len(overloads(index)) == 1

    with (index.parent / LOCK_NAME).open("rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # a reader: the process may load, not save
        saver = start_fresh(where, cache, ("f8",))
        try:
            waiting = lock_waited_for(saver)
            assert waiting == "WRITE", saver.communicate(timeout=300)  # the exclusive lock
            assert len(overloads(index)) == 1  # compiled, and waiting to save
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    out, err = saver.communicate(timeout=300)
    assert saver.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["results"] == {"f8": expected("f8")}
    assert len(overloads(index)) == 2


def overloads(index: Path) -> dict[Any, str]:
    """The signatures a cache index names, with their data files."""
    with index.open("rb") as f:
        pickle.load(f)  # numba's version
        _, entries = pickle.loads(f.read())
    return dict(entries)


def lock_waited_for(process: subprocess.Popen[str]) -> str | None:
    """The kind of file lock (READ or WRITE) `process` comes to wait for, polled until it does
    or ends (Linux lists waiters in /proc/locks: "N: -> FLOCK ADVISORY WRITE pid ...")."""
    while process.poll() is None:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if fields[1:3] == ["->", "FLOCK"] and fields[5] == str(process.pid):
                return fields[4]
        time.sleep(0.01)
    return None


def test_an_entry_holding_another_signatures_code_is_compiled_anew(
    kernel: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    where, cache = kernel
    monkeypatch.syspath_prepend(str(where))  # the data files refer to the kernel's module
    pair = ("f4", "f8")
    first = run_fresh(where, cache, pair)
    assert first["misses"] == 2

    # Swap the two data files: the index now names, for each signature, the other's code.
    (index,) = cache.rglob("*.nbi")
    files = {signature_of(path): path for path in index.parent.glob("*.nbc")}
    assert set(files) == {"float32", "float64"}
    f32, f64 = files["float32"].read_bytes(), files["float64"].read_bytes()
    files["float32"].write_bytes(f64)
    files["float64"].write_bytes(f32)

    mended = run_fresh(where, cache, pair)
    assert mended["results"] == {d: expected(d) for d in pair}
    assert (mended["hits"], mended["misses"]) == (0, 2)

    again = run_fresh(where, cache, pair)
    assert again["results"] == {d: expected(d) for d in pair}
    assert (again["hits"], again["misses"]) == (2, 0)


def signature_of(data_file: Path) -> str:
    """The element type of the array argument a cache data file was compiled for."""
    import numba  # noqa: F401  (unpickling the payload needs numba's types)

    payload = pickle.loads(data_file.read_bytes())
    (signature,) = [p for p in payload if hasattr(p, "args") and hasattr(p, "return_type")]
    return str(signature.args[0].dtype)
