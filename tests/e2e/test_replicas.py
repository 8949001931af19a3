"""Three gateway replicas (real processes) on one PostgreSQL state database and one shared home:
a change made through any replica reaches the others by themselves, concurrent writes through
different replicas are serialised (one wins, the rest get 409), each replica logs predictions
under its own name, and the replicas' monitor snapshots merge exactly."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from lockgate.control.registry import Registry
from lockgate.monitor.drift import build_profile
from lockgate.monitor.snapshot import Snapshot, merged
from lockgate.retrain.fleet import Gateways
from tests import onnx_models
from tests.monitor.test_kernels import reference_histogram
from tests.processes import GatewayProcess, start_gateway
from tests.waiting import wait_until

REFERENCE = np.random.default_rng(0).normal(size=(2000, 4))
WINDOW_ROWS = 200


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[list[GatewayProcess]]:
    registry = Registry(tmp_path)
    for i in (1, 2):
        registry.register(
            onnx_models.scale_model(tmp_path / f"m{i}.onnx"), "scale", reference=REFERENCE
        )
    started: list[GatewayProcess] = []
    try:
        for i in (1, 2, 3):
            started.append(
                start_gateway(
                    tmp_path,
                    *("--state", postgres_url, "--replica-id", f"r{i}"),
                    *("--drift-window-rows", str(WINDOW_ROWS)),
                    *("--ungated-max-percent", "100"),  # the policy is not the subject here
                )
            )
        yield started
    finally:
        for gw in started:
            gw.stop()


def send(gw: GatewayProcess, rows: np.ndarray, requests: int) -> None:
    """`rows` to scale v2 in `requests` requests."""
    with httpx.Client(base_url=gw.base, timeout=30) as client:
        for chunk in np.array_split(rows.astype(np.float32), requests):
            tensor = {"name": "x", "datatype": "FP32", "shape": list(chunk.shape)}
            body = {"inputs": [{**tensor, "data": chunk.ravel().tolist()}]}
            answer = client.post("/v2/models/scale/versions/2/infer", content=orjson.dumps(body))
            assert answer.status_code == 200, answer.text


def monitor_snapshot(gw: GatewayProcess) -> Snapshot:
    return Snapshot.from_bytes(
        httpx.get(f"http://{gw.admin}/v1/monitor/snapshot", timeout=10).content
    )


def drained(gw: GatewayProcess, rows: int) -> None:
    """Until the replica's monitor has taken `rows` rows of scale v2."""

    def done() -> bool:
        figures = monitor_snapshot(gw).versions.get(("scale", "2"))
        return figures is not None and figures.rows >= rows

    wait_until(done, f"{gw.admin} to drain {rows} rows", interval=0.1)


def _revision(gw: GatewayProcess) -> int:
    return int(httpx.get(f"http://{gw.admin}/v1/state", timeout=10).json()["serving"]["revision"])


def test_a_canary_set_through_one_replica_is_applied_by_all(
    replicas: list[GatewayProcess],
) -> None:
    first, *others = replicas
    answer = httpx.post(
        f"http://{first.admin}/v1/endpoints/scale/canary",
        json={"model": "scale", "version": 1, "weight": 25},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    revision = answer.json()["revision"]
    # each replica's state watcher notices the new revision by itself
    wait_until(lambda: all(_revision(gw) >= revision for gw in others), "every replica to apply it")
    for gw in replicas:  # the split itself, as each replica reports it
        weights = httpx.get(f"http://{gw.admin}/v1/endpoints/scale", timeout=10).json()
        assert {v["name"]: v["weight"] for v in weights["variants"]} == {
            "stable": 75.0,
            "canary": 25.0,
        }


def test_concurrent_writes_through_different_replicas_one_wins(
    replicas: list[GatewayProcess],
) -> None:
    revision = int(httpx.get(f"http://{replicas[0].admin}/v1/state", timeout=10).json()["revision"])

    def canary(gw: GatewayProcess, weight: int) -> httpx.Response:
        return httpx.post(
            f"http://{gw.admin}/v1/endpoints/scale/canary",
            json={"model": "scale", "version": 1, "weight": weight},
            headers={"If-Match": str(revision)},
            timeout=30,
        )

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(canary, replicas, (10, 20, 30)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 409, 409], [a.text for a in answers]
    winner = next(a for a in answers if a.status_code == 200)
    assert winner.json()["revision"] == revision + 1
    audit = httpx.get(f"http://{replicas[2].admin}/v1/audit", timeout=10).json()["records"]
    assert [r["revision"] for r in audit if r["revision"] > revision] == [revision + 1]


def test_replica_snapshots_merge_exactly_and_logs_name_their_replica(
    replicas: list[GatewayProcess], tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    sent = []
    for i, gw in enumerate(replicas):
        rows = rng.normal(loc=0.5 * i, size=(100 * (i + 1), 4)).astype(np.float32)
        sent.append(rows)
        send(gw, rows, requests=10)

    for gw, rows in zip(replicas, sent, strict=True):
        drained(gw, len(rows))
    snaps = [monitor_snapshot(gw) for gw in replicas]
    assert [s.versions[("scale", "2")].rows for s in snaps] == [len(r) for r in sent]
    counts = [s.versions[("scale", "2")].drift["input"].counts for s in snaps]
    total = merged(snaps)
    merged_counts = total.versions[("scale", "2")].drift["input"].counts
    assert np.array_equal(merged_counts, counts[0] + counts[1] + counts[2])
    # and equals numpy's binning of every row sent, on the reference profile's edges
    profile = build_profile(REFERENCE)
    edges = [profile.edges[f, : profile.n_edges[f]] for f in range(profile.n_features)]
    assert np.array_equal(merged_counts, reference_histogram(np.vstack(sent), edges))
    latency = total.versions[("scale", "2")].latency
    assert sum(s.count for s in latency.values()) == 30  # one latency per request
    assert sum(n for k, n in total.requests.items() if k[-1] == "ok") == 30
    # the retrain worker reads all three /metrics as one gateway
    judged = Gateways([f"http://{gw.admin}" for gw in replicas]).scrape()
    route = ("scale", "", "scale", "2")  # explicit-version calls carry no variant
    assert judged.requests[(*route, "ok")] == 30
    assert judged.latency[route][float("inf")] == 30
    # each replica writes its own prediction-log segments, named after it
    for gw in replicas:  # flush on shutdown
        gw.stop()
    names = {p.name for p in (tmp_path / "predlog" / "scale" / "2").glob("*.seg")}
    for i in (1, 2, 3):
        assert any(n.endswith(f"-r{i}.seg") for n in names), names


def test_the_retrain_worker_judges_drift_on_all_replicas_together(
    replicas: list[GatewayProcess],
) -> None:
    """Each replica sees 150 shifted rows: less than one of its own 200-row drift windows, so
    no replica alerts; summed, they fill two windows and the worker's judgement alerts."""
    rng = np.random.default_rng(2)
    for gw in replicas:  # loads v2 everywhere: the first read is the worker's baseline
        send(gw, rng.normal(size=(10, 4)), requests=1)
        drained(gw, 10)
    gateways = Gateways([f"http://{gw.admin}" for gw in replicas])
    assert not gateways.scrape().drift_alert("scale", "2")
    for gw in replicas:
        send(gw, rng.normal(loc=1.0, size=(150, 4)), requests=15)
        drained(gw, 160)
    judged = gateways.scrape()
    assert judged.drift_alert("scale", "2")
    for gw in replicas:  # while each replica alone has not closed a window
        alone = monitor_snapshot(gw)
        assert alone.versions[("scale", "2")].drift["input"].windows == 0
