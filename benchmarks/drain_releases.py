"""How often one monitor drain cycle lets go of the GIL, and so takes it back from the event loop:
calls of CPython's `PyEval_SaveThread` by the drain's thread, counted with a perf uprobe (every
`nogil` kernel, every numpy step over more than 500 values, every large crc32 or write makes
one). A count, not a time: it does not move with the load of a shared machine.

    sudo .venv/bin/python benchmarks/drain_releases.py [--rows 6000] [--cycles 20]

Needs `perf` (Debian: linux-perf) and root (the uprobe is added for the run and removed after).
The demo classifier and its reference data are used, as in drain_gil.py.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from drain_gil import demo_monitor, fill

EVENT = "probe_libpython:PyEval_SaveThread"


def libpython() -> str:
    """The file that holds PyEval_SaveThread: libpython when Python is built shared."""
    name = sysconfig.get_config_var("LDLIBRARY") or ""
    shared = Path(sysconfig.get_config_var("LIBDIR") or "") / name
    return str(shared) if name.endswith(".so") or ".so." in name else sys.executable


def releases(work: Callable[[], None]) -> int:
    """PyEval_SaveThread calls by this thread while `work` runs."""
    tid = str(threading.get_native_id())
    cmd = ["perf", "stat", "-x,", "-e", EVENT, "-t", tid]
    perf = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # perf attaches
    work()
    time.sleep(0.3)
    perf.send_signal(signal.SIGINT)
    _, err = perf.communicate()
    return int(err.strip().splitlines()[-1].split(",")[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=6000, help="rows per cycle")
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args()
    probe = ["perf", "probe", "-x", libpython(), "--add", f"{EVENT}=PyEval_SaveThread"]
    subprocess.run(probe, check=True, capture_output=True)
    try:
        with tempfile.TemporaryDirectory(prefix="lockgate-drain-releases-") as tmp:
            run(args, Path(tmp) / "home")
    finally:
        subprocess.run(["perf", "probe", "--del", EVENT], check=False, capture_output=True)
    return 0


def run(args: argparse.Namespace, home: Path) -> None:
    monitor, [(recorder, runner)] = demo_monitor(home)

    def cycle() -> list[tuple[object, ...]]:
        fill(recorder, runner, args.rows)
        return [(vm, *vm.recorder.ring.swap()) for vm in list(monitor.versions.values())]

    for _ in range(3):  # compile and warm everything first
        monitor.absorb_taken(cycle())
    taken = [cycle() for _ in range(args.cycles)]
    pieces = [[(vm, vm.recorder.ring.assemble(c, d)) for vm, c, d in t] for t in taken]
    parts: dict[str, Callable[[], object]] = {
        "whole cycle": lambda: [monitor.absorb_taken(t) for t in taken],
        "assemble": lambda: [vm.recorder.ring.assemble(c, d) for t in taken for vm, c, d in t],
        "drift windows": lambda: [
            (vm.input_drift.update(p.inputs), vm.output_drift.update(p.outputs))
            for ps in pieces
            for vm, p in ps
        ],
        "prediction log chunk": lambda: [
            monitor._log(monitor.predlog, vm, p) for ps in pieces for vm, p in ps
        ],
    }
    idle = releases(lambda: None)
    print(f"{args.rows} rows a cycle, {args.cycles} cycles\n")
    print("| part | GIL releases per cycle |\n|---|---:|")
    for name, work in parts.items():
        count = releases(lambda work=work: work()) - idle
        print(f"| {name} | {count / args.cycles:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
