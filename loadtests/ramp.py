"""Ramp: step concurrency up past the gateway's capacity and show what happens to the excess.

A gateway with bounded queues answers the excess with fast 503s (shed) while the accepted
requests keep a bounded latency; an unbounded one lets every request's latency grow until they
time out (collapse). Each step prints rps, p99 and the 503 share; the last line is the verdict.
The defaults (mlp, 16 rows per request) fill lockgate's default queue (2048 rows) at about 128
requests in flight, so the top steps are past capacity.

    python loadtests/ramp.py --url http://127.0.0.1:8000 [--steps 8,16,32,64,128,256,512]
"""

from __future__ import annotations

import asyncio

from common import Load, Stats, base_parser, loopback_target, ms, prepare, run


def row(conc: int, s: Stats, seconds: float) -> str:
    total = sum(s.counts.values())
    share = s.counts["503"] / total if total else 0.0
    other = {k: v for k, v in s.errors.items() if k != "503"}
    return (
        f"{conc:>6} {s.rps(seconds):>10,.0f} {ms(s.pct(s.ok, 50)):>11} {ms(s.pct(s.ok, 99)):>11} "
        f"{share:>7.1%} {ms(s.pct(s.shed, 99)):>11}  {other or ''}"
    )


def verdict(steps: list[tuple[int, Stats]], seconds: float) -> str:
    """Shedding works when, past capacity, goodput holds (>= 70% of the peak), accepted
    requests keep their latency (p99 <= 3x the peak step's), and nothing times out."""
    peak_c, peak = max(steps, key=lambda cs: len(cs[1].ok))
    top_c, top = steps[-1]
    failed = sum(v for _, s in steps for k, v in s.errors.items() if k != "503")
    goodput = len(top.ok) / max(len(peak.ok), 1)
    growth = top.pct(top.ok, 99) / max(peak.pct(peak.ok, 99), 1e-9)
    facts = (
        f"peak {peak.rps(seconds):,.0f} ok rps at c={peak_c}; at c={top_c}: {goodput:.0%} of "
        f"that goodput, ok p99 {ms(top.pct(top.ok, 99))} ({growth:.1f}x the peak step's), "
        f"503 p99 {ms(top.pct(top.shed, 99))}, {failed} timeouts/other errors"
    )
    if not top.counts["503"]:
        return f"{facts} -> no 503 at the top step: capacity not exceeded (raise --steps/--rows)"
    if failed or goodput < 0.7 or growth > 3:
        return f"{facts} -> COLLAPSE: past capacity the gateway loses goodput or latency"
    return f"{facts} -> SHEDS: excess load gets fast 503s, accepted requests keep their latency"


async def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0], model="mlp", duration=4.0)
    parser.set_defaults(rows=16)
    parser.add_argument("--steps", default="8,16,32,64,128,256,512", help="concurrency per step")
    parser.add_argument(
        "--backoff-ms", type=float, default=0.0, help="pause after a 503 (0: retry at once)"
    )
    args = parser.parse_args()
    args.duration = max(args.duration, 1.0)  # --duration is per step here
    steps = [int(x) for x in args.steps.split(",")]
    target = loopback_target(args.url)
    path, body = await prepare(target, args.model, args.rows)
    print(f"ramp {args.model} x{args.rows} rows, {args.duration:g}s per step")
    print(f"{'conc':>6} {'ok rps':>10} {'ok p50':>11} {'ok p99':>11} {'503':>7} {'503 p99':>11}")
    done: list[tuple[int, Stats]] = []
    for conc in steps:
        load = Load(target, path, body, args.timeout, args.backoff_ms / 1000)
        await asyncio.wait_for(load.run(args.duration, conc), args.duration + args.timeout + 5)
        done.append((conc, load.stats))
        print(row(conc, load.stats, args.duration), flush=True)
    print("ramp: " + verdict(done, args.duration))


if __name__ == "__main__":
    run(main())
