"""What a retrain does to serving: the gateway's p99 under steady load, alternating windows
without and with a retrain-and-promote job (dataset, training, gates, registration, and a rollout
whose new version the gateway loads and warms while serving).

    .venv/bin/python benchmarks/retrain_impact.py [--rounds 2] [--seconds 12] [--spawn]

The job runs in a retrain worker started before the first window and asked for each job with
SIGUSR1, as a deployed worker runs (`make demo`, the compose stack and the Kubernetes manifests
start it once). `--spawn` starts a fresh `lockgate retrain --now --once` process per job instead,
so its interpreter start and imports (about 0.4 s of CPU) fall inside the window too.

Prints a table of p50/p99 per window and the ratio of p99 with a retrain to p99 without, and
flags any window whose throughput departs more than 15% from the run's median (on a shared
machine, a disturbance of the machine rather than of the job; it still counts).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Result, wrk

from lockgate.control.registry import Registry
from lockgate.demo import ensure_demo_models, send_traffic

DISTURBED = 0.15  # a window whose rps departs this far from the run's median is flagged
PIPELINE = """
endpoint = "classifier"
[triggers]
drift = false
min_new_labels = 0
poll_seconds = 600
[data]
min_rows = 300
[gates]
p99_latency_ms = 50.0
[rollout]
steps = [50, 100]
analysis_seconds = 2.0
min_requests = 5
max_p99_ratio = 50.0
admin_url = "http://{admin}"
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--spawn", action="store_true", help="a new worker process per job")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lockgate-retrain-impact-") as tmp:
        home = Path(tmp)
        ensure_demo_models(Registry(home))
        http, grpc, admin = (f"127.0.0.1:{free_port()}" for _ in range(3))
        cmd = [sys.executable, "-m", "lockgate.cli", "serve", "--home", str(home)]
        cmd += ["--http", http, "--grpc", grpc, "--admin", admin, "--log-level", "warning"]
        gateway = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return run(home, http, admin, args)
        finally:
            gateway.terminate()
            gateway.wait(30)


def run(home: Path, http: str, admin: str, args: argparse.Namespace) -> int:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://{http}/v2/health/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("gateway did not become ready")
        time.sleep(0.2)
    send_traffic(http, 2000, drifted=True, seed=1)  # labelled data for the jobs
    time.sleep(1.5)  # the gateway flushes its logs every second
    pipeline = home / "pipeline.toml"
    pipeline.write_text(PIPELINE.format(admin=admin))
    body = b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,16],"data":[%s]}]}' % (
        b",".join([b"0.5"] * 16)
    )
    url = f"http://{http}/v2/models/classifier/infer"
    worker_cmd = [sys.executable, "-m", "lockgate.cli", "retrain", "--home", str(home)]
    worker_cmd += ["--pipeline", str(pipeline), "--log-level", "info"]
    log = home / "worker.log"
    worker = None
    if not args.spawn:
        with log.open("w") as out:
            worker = subprocess.Popen(worker_cmd, stdout=out, stderr=out)
        wait_for_line(log, "retrain worker for endpoint", 1, worker)
    try:
        rows = windows(home, url, body, args, worker, worker_cmd, log)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
    print("| window | rps | p50 (ms) | p99 (ms) | retrain job (s) |")
    print("|---|---:|---:|---:|---:|")
    for name, r, seconds in rows:
        job_text = f"{seconds:.1f}" if seconds else "—"
        p50, p99 = r.p50_us / 1000, r.p99_us / 1000
        print(f"| {name} | {r.rps:,.0f} | {p50:.2f} | {p99:.2f} | {job_text} |")
    median_rps = statistics.median(r.rps for _, r, _ in rows)
    for i, (name, r, _) in enumerate(rows):
        if abs(r.rps / median_rps - 1) > DISTURBED:
            # A window far off the run's usual throughput, steady or not: the shared machine
            # itself, most likely; the verdict still counts it, the reader should know.
            print(
                f"\nwindow {i + 1} ({name}) ran at {r.rps:,.0f} rps, the run's median is "
                f"{median_rps:,.0f}: the machine may have been disturbed"
            )
    steady = [r.p99_us for name, r, _ in rows if name == "steady"]
    busy = [r.p99_us for name, r, _ in rows if name != "steady"]
    ratio = (sum(busy) / len(busy)) / (sum(steady) / len(steady))
    verdict = "PASS" if ratio <= 1.1 else "FAIL"
    print(f"\np99 with a retrain / p99 without: {ratio:.2f} (<= 1.10) -> **{verdict}**")
    return 0


def windows(
    home: Path,
    url: str,
    body: bytes,
    args: argparse.Namespace,
    worker: subprocess.Popen[bytes] | None,
    worker_cmd: list[str],
    log: Path,
) -> list[tuple[str, Result, float]]:
    rows: list[tuple[str, Result, float]] = []
    for round_ in range(args.rounds):
        rows.append(("steady", wrk(home, url, body, 16, args.seconds), 0.0))
        job: dict[str, float] = {}

        def retrain(job: dict[str, float] = job, jobs: int = round_ + 1) -> None:
            time.sleep(1.0)
            started = time.monotonic()
            if worker is None:
                cmd = [*worker_cmd, "--now", "--once"]
                subprocess.run(cmd, check=True, capture_output=True, timeout=120)
            else:
                worker.send_signal(signal.SIGUSR1)
                wait_for_line(log, "job finished: promoted", jobs, worker)
            job["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=retrain)
        thread.start()
        result = wrk(home, url, body, 16, args.seconds)
        thread.join()
        rows.append(("with a retrain job", result, job.get("seconds", float("nan"))))
    return rows


def wait_for_line(log: Path, text: str, count: int, worker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while log.read_text().count(text) < count:
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the retrain worker did not log {text!r}:\n{log.read_text()}")
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
