"""Steady load: constant concurrency (closed loop) or constant rate (open loop) for N seconds,
to read a gateway's throughput, latency and error mix at one operating point.

    python loadtests/steady.py --url http://127.0.0.1:8000 --model classifier --concurrency 16
    python loadtests/steady.py --rate 500 --duration 30          # open loop, 500 requests/s
"""

from __future__ import annotations

import asyncio

from common import Load, base_parser, loopback_target, prepare, run


async def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0], model="classifier", duration=10.0)
    parser.add_argument(
        "--concurrency", type=int, default=16, help="connections (the cap in --rate mode)"
    )
    parser.add_argument("--rate", type=float, help="open loop: requests per second")
    args = parser.parse_args()
    target = loopback_target(args.url)
    path, body = await prepare(target, args.model, args.rows)
    load = Load(target, path, body, args.timeout)
    mode = f"rate {args.rate:g}/s (<= {args.concurrency} conns)" if args.rate else ""
    mode = mode or f"concurrency {args.concurrency}"
    await asyncio.wait_for(
        load.run(args.duration, args.concurrency, args.rate), args.duration + args.timeout + 5
    )
    s = load.stats
    print(
        f"steady {args.model} x{args.rows} rows, {mode}, {args.duration:g}s: "
        f"{len(s.ok):,} ok, {s.rps(args.duration):,.1f} rps, {s.latency_text()}, "
        f"errors: {s.errors_text()}"
    )


if __name__ == "__main__":
    run(main())
