"""A real Prometheus (Debian's package) on a free loopback port, for the deploy tests: started
with a generated configuration, queried through its HTTP API, stopped at the end."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.deploy.conftest import tool
from tests.processes import free_port
from tests.waiting import wait_until

TIMEOUT = 30.0  # seconds for Prometheus to see what the gateway exports


@dataclass
class Prometheus:
    base: str
    log: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.base}/api/v1/query", params={"query": promql}, timeout=10)
        doc = r.json()
        assert doc["status"] == "success", (promql, doc)
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def api(self, path: str, **params: str) -> Any:
        doc = httpx.get(f"{self.base}/api/v1/{path}", params=params, timeout=10).json()
        assert doc["status"] == "success", doc
        return doc["data"]

    def wait(self, what: str, check: Callable[[], Any]) -> Any:
        """Poll `check` until it returns something truthy (bounded by TIMEOUT); the failure
        shows the end of Prometheus's log."""
        try:
            return wait_until(check, what, timeout=TIMEOUT, interval=0.25)
        except AssertionError as exc:
            tail = self.log.read_text()[-3000:]
            raise AssertionError(f"Prometheus did not see {what}: {exc}\n{tail}") from None


def value(result: list[dict[str, Any]]) -> float | None:
    """The value of a one-element instant vector (None when there is not exactly one)."""
    return float(result[0]["value"][1]) if len(result) == 1 else None


@contextmanager
def running_prometheus(
    tmp: Path,
    targets: list[str],
    rule_files: list[str] = (),  # type: ignore[assignment]
    features: list[str] = (),  # type: ignore[assignment]
) -> Iterator[Prometheus]:
    """Prometheus scraping `targets` (job `lockgate`) and evaluating `rule_files` every second,
    with `--enable-feature` for `features`."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": list(rule_files),
        "scrape_configs": [{"job_name": "lockgate", "static_configs": [{"targets": targets}]}],
    }
    (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    address = f"127.0.0.1:{free_port()}"
    log = tmp / "prometheus.log"
    args = [
        tool("prometheus"),
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address={address}",
        "--log.level=warn",
    ]
    if features:
        args.append("--enable-feature=" + ",".join(features))
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                output = log.read_text()
                raise AssertionError(f"prometheus exited with {proc.returncode}:\n{output}")
            try:
                return httpx.get(f"http://{address}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, "prometheus ready", timeout=TIMEOUT, interval=0.1)
        yield Prometheus(f"http://{address}", log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
