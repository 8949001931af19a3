"""How long the demo's whole loop takes: `make demo`'s gateway and retrain worker on a fresh home
(`lockgate serve --demo --worker examples/pipeline.toml`), then `lockgate demo drift` sending
shifted traffic with labels, as the README tells an operator to. Times, from the first shifted
request: the champion's drift alert, and the moment the endpoint serves the retrained version
alone (the promotion, after every canary step of the pipeline).

    .venv/bin/python benchmarks/demo_loop.py [--timeout 600]
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]


def read_banner(gateway: subprocess.Popen[str]) -> str:
    assert gateway.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = gateway.stdout.readline()
        if not line:
            raise SystemExit("the gateway exited before printing its banner:\n" + "".join(lines))
        lines.append(line)
        if line.startswith("Ctrl-C"):
            return "".join(lines)
    raise SystemExit("no banner within 180 s")


def champion_state(admin: str) -> tuple[bool, dict[str, float]]:
    """(any drift alert of classifier v2 on, {version: weight} the classifier endpoint serves)."""
    text = httpx.get(f"http://{admin}/metrics", timeout=10).text
    alert, weights = False, {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if s.name in ("lockgate_drift_alert", "lockgate_drift_dataset_alert"):
                if labels["model"] == "classifier" and labels["version"] == "2" and s.value >= 1:
                    alert = True
            elif s.name == "lockgate_traffic_weight" and labels["endpoint"] == "classifier":
                weights[labels["version"]] = s.value
    return alert, weights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lockgate-demo-loop-") as tmp:
        cmd = [sys.executable, "-m", "lockgate.cli", "serve", "--demo", "--home", str(tmp)]
        cmd += ["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
        cmd += ["--worker", "examples/pipeline.toml", "--log-level", "warning"]
        gateway = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            return run(read_banner(gateway), args.timeout)
        finally:
            gateway.terminate()
            gateway.wait(60)


def run(banner: str, timeout: float) -> int:
    admin = re.search(r"--admin-url http://(\S+)", banner)
    drift = re.search(r"(\.venv/bin/lockgate demo drift .*)", banner)
    if admin is None or drift is None:
        raise SystemExit(f"unexpected banner:\n{banner}")
    seconds = int(timeout)
    command = shlex.split(drift.group(1).replace("--seconds 180", f"--seconds {seconds}"))
    command[0] = str(Path(sys.executable).with_name("lockgate"))
    start = time.monotonic()
    sender = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    alert_at = promoted_at = None
    try:
        while time.monotonic() - start < timeout:
            alert, weights = champion_state(admin.group(1))
            now = time.monotonic() - start
            if alert and alert_at is None:
                alert_at = now
                print(f"{now:6.1f} s  drift alert on classifier v2", flush=True)
            if len(weights) == 1 and "2" not in weights and weights[next(iter(weights))] == 100:
                promoted_at = now
                version = next(iter(weights))
                print(f"{now:6.1f} s  classifier v{version} serves all traffic", flush=True)
                break
            time.sleep(0.5)
    finally:
        sender.terminate()
        sender.wait(30)
    if alert_at is None or promoted_at is None:
        print(f"no promotion within {timeout:.0f} s")
        return 1
    print("\n| from the first shifted request to | seconds |\n|---|---:|")
    print(f"| the drift alert | {alert_at:.1f} |")
    print(f"| the new champion serving all traffic | {promoted_at:.1f} |")
    loop = promoted_at - alert_at
    verdict = "PASS" if loop < 180 else "FAIL"
    print(f"\ndrift alert -> new champion: {loop:.1f} s (< 180 s) -> **{verdict}**")
    return 0


if __name__ == "__main__":
    sys.exit(main())
