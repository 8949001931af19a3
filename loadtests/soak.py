"""Soak: moderate steady load for a long time (default 10 minutes), watching for errors and for
memory growth of the gateway process (a leak shows as RSS that keeps climbing after warm-up).

    python loadtests/soak.py --url http://127.0.0.1:8000 --pid $(pgrep -n lockgate) [--duration 600]

Every `--report` seconds a progress line shows that window's rps, p99, errors and the RSS.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from common import Load, Stats, base_parser, fail, loopback_target, ms, prepare, run


def rss_reader(pid: int | None) -> Any:
    """A function returning the gateway's RSS in MB (None without --pid)."""
    if pid is None:
        return lambda: None
    import psutil

    try:
        proc = psutil.Process(pid)
        proc.memory_info()
    except (psutil.Error, OSError) as exc:
        fail(f"cannot read process {pid}: {exc}")
    return lambda: proc.memory_info().rss / 2**20


async def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0], model="classifier", duration=600.0)
    parser.add_argument("--concurrency", type=int, default=8, help="connections (closed loop)")
    parser.add_argument("--rate", type=float, help="open loop: requests per second")
    parser.add_argument("--pid", type=int, help="gateway process id, for RSS")
    parser.add_argument("--report", type=float, default=60.0, help="seconds between progress")
    args = parser.parse_args()
    target = loopback_target(args.url)
    rss = rss_reader(args.pid)
    path, body = await prepare(target, args.model, args.rows)
    load = Load(target, path, body, args.timeout)
    # RSS growth is measured from the end of warm-up: first allocations are not a leak.
    warmup = min(30.0, args.duration / 10)
    interval = min(args.report, args.duration)
    total, p99s, samples = Stats(), [], []
    started = time.monotonic()
    task = asyncio.create_task(load.run(args.duration, args.concurrency, args.rate))
    rss_warm = None
    while not task.done():
        await asyncio.wait({task}, timeout=min(interval, warmup) if rss_warm is None else interval)
        window, load.stats = load.stats, Stats()
        elapsed = time.monotonic() - started
        if rss_warm is None and elapsed >= warmup - 0.5:
            rss_warm = rss()
        mb = rss()
        samples.append(mb)
        total.ok.extend(window.ok)
        total.counts.update(window.counts)
        p99s.append(window.pct(window.ok, 99))
        print(
            f"[{elapsed:6.0f}s] {window.rps():8,.0f} rps, p99 {ms(p99s[-1])}, "
            f"errors: {window.errors_text()}" + (f", RSS {mb:.0f} MB" if mb else ""),
            flush=True,
        )
    await task
    growth = ""
    if rss_warm and samples[-1]:
        delta = samples[-1] - rss_warm
        growth = (
            f", RSS {rss_warm:.0f} -> {samples[-1]:.0f} MB after warm-up "
            f"({delta:+.0f} MB, {delta / rss_warm:+.1%}), max {max(samples):.0f} MB"
        )
    print(
        f"soak {args.model} x{args.rows} rows, {args.duration:g}s: {len(total.ok):,} ok, "
        f"{total.rps(args.duration):,.1f} rps, {total.latency_text()}, worst window p99 "
        f"{ms(max(p99s, default=0.0))}, errors: {total.errors_text()}{growth}"
    )


if __name__ == "__main__":
    run(main())
