"""What one monitor drain cycle takes from the event loop: a stand-in loop (a thread doing short
stretches of Python and letting go of the GIL between them, as the event loop does at each poll
and each onnxruntime call) counts how much of its time it loses while the drain processes one
cycle of rows on its own thread.

    .venv/bin/python benchmarks/drain_gil.py [--rows 6500] [--versions 1] [--cycles 15]

Prints the median drain wall time and the loop's lost time per cycle, then the same for the
drain's parts (assembling the rows, absorbing them into sketches and drift windows, the drift
windows alone, the prediction log's chunk). The demo classifier and its reference data are used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lockgate.config import MonitorConfig, RunnerConfig
from lockgate.control.registry import Registry
from lockgate.demo import ensure_demo_models
from lockgate.monitor.drain import Monitor, VersionMonitor
from lockgate.monitor.record import VersionRecorder
from lockgate.monitor.ring import Columns, RingSlice
from lockgate.serve.runner import ModelRunner
from lockgate.types import new_request_id

BATCH = 4  # requests per recorded batch, as at ~16 connections
Loaded = tuple[VersionRecorder, ModelRunner]


def loop_stretch() -> None:
    """About 0.1 ms of Python, then a GIL release (what a poll or a model call does)."""
    total = 0
    for i in range(300):
        total += i
    time.sleep(0)


def lost_while(work: Callable[[], None], stretch: float) -> tuple[float, float]:
    """(wall seconds of `work` on a thread, seconds the stand-in loop lost meanwhile)."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (work(), done.set()))
    stretches = 0
    start = time.perf_counter()
    thread.start()
    while not done.is_set():
        loop_stretch()
        stretches += 1
    wall = time.perf_counter() - start
    thread.join()
    return wall, wall - stretches * stretch


def fill(recorder: VersionRecorder, runner: ModelRunner, rows: int) -> None:
    x = np.random.default_rng(0).normal(size=(BATCH, 16)).astype(np.float32)
    outputs = runner.run({"input": x})
    for _ in range(rows // BATCH):
        now = time.perf_counter_ns()
        metas = [recorder.meta(new_request_id(), "classifier", "", now) for _ in range(BATCH)]
        recorder.record({"input": x}, outputs, metas, [1] * BATCH, [now] * BATCH, now)


def demo_monitor(home: Path, versions: int = 1) -> tuple[Monitor, list[Loaded]]:
    """A monitor with the demo classifier's versions (2, then 1) attached, each with its
    reference data and a loaded runner to make batches with."""
    registry = Registry(home)
    ensure_demo_models(registry)
    monitor = Monitor(MonitorConfig(), home)
    loaded: list[Loaded] = []
    for version in ("2", "1")[:versions]:
        info = registry.get("classifier", version)
        runner = ModelRunner(info.spec, info.model_path, RunnerConfig(intra_op_threads=1))
        runner.load()
        recorder = monitor.attach(info.spec, registry.load_reference(info), runner.run)
        loaded.append((recorder, runner))
    return monitor, loaded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=6500, help="rows per cycle, all versions")
    parser.add_argument("--versions", type=int, choices=(1, 2), default=1)
    parser.add_argument("--cycles", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lockgate-drain-gil-") as tmp:
        monitor, loaded = demo_monitor(Path(tmp) / "home", args.versions)
        start = time.perf_counter()
        for _ in range(20000):
            loop_stretch()
        stretch = (time.perf_counter() - start) / 20000
        print(f"stand-in loop stretch: {stretch * 1e6:.0f} us; {args.rows} rows a cycle")
        figures: dict[str, list[tuple[float, float]]] = {}
        for _ in range(args.cycles):
            for recorder, runner in loaded:
                fill(recorder, runner, args.rows // args.versions)
            taken = [(vm, *vm.recorder.ring.swap()) for vm in list(monitor.versions.values())]
            for name, work in cycle_parts(monitor, taken).items():
                figures.setdefault(name, []).append(lost_while(work, stretch))
            for vm, columns, _ in taken:
                vm.recorder.ring.release(columns)
        print("| part | drain wall (ms) | loop lost (ms) |\n|---|---:|---:|")
        for name, values in figures.items():
            wall = statistics.median(w for w, _ in values) * 1e3
            lost = statistics.median(lost for _, lost in values) * 1e3
            print(f"| {name} | {wall:.2f} | {lost:.2f} |")
    return 0


def cycle_parts(
    monitor: Monitor, taken: list[tuple[VersionMonitor, Columns, int]]
) -> dict[str, Callable[[], None]]:
    """The whole cycle, then its parts one by one on the same rows."""
    pieces: list[tuple[VersionMonitor, RingSlice]] = []

    def assemble() -> None:
        pieces.extend((vm, vm.recorder.ring.assemble(c, d)) for vm, c, d in taken)

    def absorb() -> None:
        for vm, piece in pieces:
            monitor._absorb(vm, piece)

    def drift() -> None:
        for vm, piece in pieces:
            for monitor_of, values in (
                (vm.input_drift, piece.inputs),
                (vm.output_drift, piece.outputs),
            ):
                if monitor_of is not None:
                    monitor_of.update(values)

    def predlog() -> None:
        if monitor.predlog is not None:
            for vm, piece in pieces:
                monitor._log(monitor.predlog, vm, piece)

    return {
        "whole cycle": lambda: monitor.absorb_taken(taken),
        "assemble": assemble,
        "absorb (sketches, drift, recent)": absorb,
        "drift windows alone": drift,
        "prediction log chunk": predlog,
    }


if __name__ == "__main__":
    sys.exit(main())
