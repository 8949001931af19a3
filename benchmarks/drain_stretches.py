"""How long a monitor drain cycle keeps the event loop waiting, one stall at a time, and where:
a stand-in loop spins on the main thread (checking the clock, as a busy event loop holds the GIL)
while the drain absorbs one cycle of rows on its own thread. Every gap of the spinning loop
longer than `--gap` microseconds is a stretch the drain held the GIL (and the hand-over back);
for the long ones the drain's stack is read right after, i.e. where it let go of the GIL.

    .venv/bin/python benchmarks/drain_stretches.py [--rows 6000] [--cycles 20] [--gap 20]

Prints the stalls per cycle, their total and longest (medians over the cycles), the quantiles
of all stalls, and the places where the drain let go after the stalls over `--long`
microseconds. The demo classifier and its reference data are used, as in drain_gil.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from pathlib import Path

from drain_gil import demo_monitor, fill


def stalls(
    work: threading.Thread, gap: float, long: float
) -> tuple[list[float], list[tuple[float, str]]]:
    """Run `work` and spin meanwhile: the gaps over `gap` seconds, and for each gap over `long`
    seconds where the thread was right after it (its innermost three frames)."""
    gaps: list[float] = []
    places: list[tuple[float, str]] = []
    last = time.perf_counter()
    work.start()
    while work.is_alive():
        now = time.perf_counter()
        if now - last > gap:
            gaps.append(now - last)
            frame = sys._current_frames().get(work.ident or 0) if now - last > long else None
            if frame is not None:
                stack = traceback.extract_stack(frame)[-3:]
                place = " < ".join(f"{f.name}:{f.lineno}" for f in reversed(stack))
                places.append((now - last, place))
        last = now
    work.join()
    return gaps, places


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=6000, help="rows per drain cycle")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--gap", type=float, default=20.0, help="us: shorter gaps are not stalls")
    parser.add_argument("--long", type=float, default=200.0, help="us: stalls to locate")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lockgate-drain-stretches-") as tmp:
        monitor, [(recorder, runner)] = demo_monitor(Path(tmp) / "home")
        per_cycle: list[list[float]] = []
        where: dict[str, list[float]] = defaultdict(list)
        for i in range(args.cycles + 3):  # the first three compile and warm everything
            fill(recorder, runner, args.rows)
            taken = [(vm, *vm.recorder.ring.swap()) for vm in list(monitor.versions.values())]
            work = threading.Thread(target=monitor.absorb_taken, args=(taken,))
            gaps, places = stalls(work, args.gap * 1e-6, args.long * 1e-6)
            for vm, columns, _ in taken:
                vm.recorder.ring.release(columns)
            if i >= 3:
                per_cycle.append(gaps)
                for length, place in places:
                    where[place].append(length)
    every = sorted(g for gaps in per_cycle for g in gaps)
    med = statistics.median
    print(f"{args.rows} rows a cycle, {args.cycles} cycles; stalls over {args.gap:g} us\n")
    print("| stalls per cycle | total ms | longest ms | p50 / p90 / p99 us |")
    print("|---:|---:|---:|---|")
    quantiles = " / ".join(
        f"{every[int(q * (len(every) - 1))] * 1e6:.0f}" for q in (0.5, 0.9, 0.99)
    )
    print(
        f"| {med(len(g) for g in per_cycle):.0f} | {med(sum(g) for g in per_cycle) * 1e3:.2f} "
        f"| {med(max(g, default=0.0) for g in per_cycle) * 1e3:.2f} | {quantiles} |"
    )
    print(f"\nWhere the drain let go after stalls over {args.long:g} us:\n")
    print("| stalls | longest us | drain at |\n|---:|---:|---|")
    for place, lengths in sorted(where.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {len(lengths)} | {max(lengths) * 1e6:.0f} | `{place}` |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
