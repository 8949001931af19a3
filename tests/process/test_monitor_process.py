"""The monitor in a process of its own (`--monitor-process`), in real gateways with real child
processes: the same requests give the same figures as the in-process monitor; a killed monitor
process is replaced while serving goes on, with every row counted either as monitored or as
dropped; a clean stop hands the last rows over (the prediction log has every one)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lockgate.config import MonitorConfig
from lockgate.control.registry import Registry
from lockgate.demo import classifier_data, ensure_demo_models
from lockgate.monitor.predlog import PredictionLog
from lockgate.monitor.snapshot import Snapshot, VersionSnapshot
from tests.conftest import RunningGateway, loopback_config
from tests.waiting import wait_until

V2 = ("classifier", "2")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("demo")
    ensure_demo_models(Registry(home))
    return home


def _home(demo: Path, tmp_path: Path, name: str) -> Path:
    home = tmp_path / name
    shutil.copytree(demo, home)
    return home


def _config(home: Path, **monitor: Any) -> Any:
    settings = MonitorConfig(drift_window_seconds=3600.0, **monitor)
    return dataclasses.replace(loopback_config(home), monitor=settings)


def _infer(client: httpx.Client, request_id: str, rows: np.ndarray) -> httpx.Response:
    tensor = {"name": "input", "datatype": "FP32", "shape": list(rows.shape)}
    doc = {"id": request_id, "inputs": [{**tensor, "data": rows.ravel().tolist()}]}
    r = client.post("/v2/models/classifier/infer", json=doc)
    assert r.status_code == 200, r.text
    return r


def _snapshot(gw: RunningGateway) -> Snapshot:
    assert gw.gateway is not None
    snap: Snapshot = gw.call(gw.gateway.controller.snapshot())
    return snap


def _traffic(gw: RunningGateway) -> dict[str, Any]:
    """Two calm drift windows, one shifted, single-row requests with labels; what the gateway
    then reports."""
    rng = np.random.default_rng(23)
    client = httpx.Client(base_url=f"http://{gw.http}", timeout=30)
    for i in range(2):
        _infer(client, f"calm-{i}", classifier_data(rng, 1000)[0])
    shifted = classifier_data(rng, 1000)[0]
    shifted[:, 0] += 0.5
    _infer(client, "shifted", shifted)
    labels = []
    for i in range(40):
        r = _infer(client, f"one-{i}", classifier_data(rng, 1)[0])
        label = next(o for o in r.json()["outputs"] if o["name"] == "label")["data"][0]
        labels.append({"id": f"one-{i}", "label": label if i % 4 else 1 - label})
    labels.append({"id": "nobody", "label": 1})
    answer = client.post("/v2/models/classifier/feedback", json={"labels": labels}).json()
    assert gw.gateway is not None and gw.gateway.monitor is not None
    gw.call(gw.gateway.monitor.drain())
    admin = f"http://{gw.admin}/v1/models/classifier/versions/2"
    recent = httpx.get(f"{admin}/recent", params={"limit": 50}).json()
    for row in recent["rows"]:
        del row["ts"], row["latency_s"]
    drift = httpx.get(f"{admin}/drift").json()
    assert drift["inputs"]["last_window"]["ended"] > 0
    client.close()
    return {"feedback": answer, "snapshot": _snapshot(gw), "recent": recent, "drift": drift}


def _figures(vs: VersionSnapshot) -> dict[str, Any]:
    """Everything of a version's figures that does not depend on timing."""
    out: dict[str, Any] = {
        "rows": vs.rows,
        "dropped": vs.dropped,
        "labelled": vs.labelled,
        "correct": vs.correct,
        "abs_error_sum": vs.abs_error_sum,
        "latency": {route: s.count for route, s in vs.latency.items()},
        "queue": vs.queue.count,
        "label_delay": int(vs.label_delay.sum()),
        "joint": None if vs.joint is None else (vs.joint.windows, vs.joint.score),
    }
    for side, d in vs.drift.items():
        out[side] = (
            d.windows, d.alert.tolist(), np.nan_to_num(d.scores, nan=-1).tolist(),
            d.share, d.dataset_alert, d.counts.tolist(),
        )  # fmt: skip
    return out


def test_the_monitor_process_reports_what_the_in_process_monitor_reports(
    demo: Path, tmp_path: Path
) -> None:
    results, logs = {}, {}
    for process in (False, True):
        home = _home(demo, tmp_path, f"process-{process}")
        with RunningGateway(_config(home, process=process), Registry(home)) as gw:
            assert gw.gateway is not None
            results[process] = _traffic(gw)
            if process:
                pid = gw.gateway.monitor.pid  # type: ignore[union-attr]
                assert pid is not None and pid != os.getpid()
        logs[process] = PredictionLog(home / "predlog").read_predictions(*V2)
    inline, child = results[False], results[True]
    assert child["feedback"] == inline["feedback"] == {"accepted": 41, "matched": 40, "unknown": 1}
    expected = _figures(inline["snapshot"].versions[V2])
    assert expected["rows"] == 3040 and expected["input"][0] == 3 and expected["labelled"] == 40
    assert _figures(child["snapshot"].versions[V2]) == expected
    assert child["snapshot"].feedback_unknown == inline["snapshot"].feedback_unknown == 1
    assert child["recent"] == inline["recent"] and len(child["recent"]["rows"]) == 50
    assert _untimed(child["drift"]) == _untimed(inline["drift"])
    assert child["drift"]["inputs"]["features"]["input[0]"]["alert"] is True
    for name in ("request_id", "inputs", "outputs", "endpoint", "variant"):
        np.testing.assert_array_equal(logs[True][name], logs[False][name], name)


def _untimed(report: dict[str, Any]) -> dict[str, Any]:
    """A drift report without its windows' clock times (each process reads its own clock)."""
    for side in ("inputs", "outputs"):
        for when in ("started", "ended"):
            del report[side]["last_window"][when]
    return report


def _rows(gw: RunningGateway) -> tuple[int, int]:
    vs = _snapshot(gw).versions[V2]
    return vs.rows, vs.dropped


def test_a_killed_monitor_process_is_replaced_and_every_row_is_counted(
    demo: Path, tmp_path: Path
) -> None:
    home = _home(demo, tmp_path, "killed")
    with RunningGateway(_config(home, process=True), Registry(home)) as gw:
        monitor = gw.gateway.monitor  # type: ignore[union-attr]
        first = monitor.pid
        client = httpx.Client(base_url=f"http://{gw.http}", timeout=30)
        one = np.zeros((1, 16), np.float32)
        for i in range(10):
            _infer(client, f"before-{i}", one)
        wait_until(lambda: _rows(gw) == (10, 0), "the first rows monitored")
        os.kill(first, signal.SIGKILL)
        for i in range(10):  # serving goes on meanwhile
            _infer(client, f"during-{i}", one)
        wait_until(lambda: monitor.pid not in (None, first), "a new monitor process")
        for i in range(10):
            _infer(client, f"after-{i}", one)
        gw.call(monitor.drain())
        rows, dropped = _rows(gw)
        assert monitor.restarts == 1
        assert rows + dropped == 30 and rows >= 20  # the first ten were seen before the kill
        metrics = httpx.get(f"http://{gw.admin}/metrics").text
        restarts = next(
            family
            for family in text_string_to_metric_families(metrics)
            if family.name == "lockgate_monitor_process_restarts"
        )
        assert [sample.value for sample in restarts.samples] == [1.0]
        recent = httpx.get(f"http://{gw.admin}/v1/models/classifier/versions/2/recent").json()
        assert recent["rows"][-1]["id"] == "after-9"
        client.close()


def test_a_clean_stop_hands_the_last_rows_over(demo: Path, tmp_path: Path) -> None:
    """Nothing is drained while serving (a long interval): the rows reach the monitor process
    and its prediction log at the stop."""
    home = _home(demo, tmp_path, "stop")
    config = _config(home, process=True, drain_interval=3600.0)
    with (
        RunningGateway(config, Registry(home)) as gw,
        httpx.Client(base_url=f"http://{gw.http}", timeout=30) as client,
    ):
        for i in range(25):
            _infer(client, f"r{i}", np.full((1, 16), i, np.float32))
        monitor = gw.gateway.monitor  # type: ignore[union-attr]
    assert monitor.pid is None  # it exited with the gateway
    log = PredictionLog(home / "predlog").read_predictions(*V2)
    assert sorted(log["request_id"].tolist()) == sorted(f"r{i}".encode() for i in range(25))
    assert log["inputs"][:, 3].tolist() == [float(i) for i in range(25)]


def _children(pid: int) -> list[int]:
    """Monitor processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and b"lockgate.process.monitor_child" in command:
            found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # exited (a zombie until whoever adopted it reaps it)


def test_the_monitor_process_ends_with_a_killed_gateway(demo: Path, tmp_path: Path) -> None:
    """`lockgate serve --monitor-process`: its monitor process exits when the gateway is
    killed, and its rings' memory is anonymous, so nothing is left behind."""
    from tests.processes import start_gateway

    home = _home(demo, tmp_path, "orphan")
    gw = start_gateway(home, "--monitor-process")
    try:
        children = wait_until(lambda: _children(gw.proc.pid), "the monitor process")
        assert not list(Path("/dev/shm").glob("lockgate*"))
        argv = Path(f"/proc/{children[0]}/cmdline").read_bytes().split(b"\0")
        socket_dir = Path(argv[argv.index(b"lockgate.process.monitor_child") + 1].decode()).parent
        assert socket_dir.name.startswith("lockgate-monitor-") and socket_dir.exists()
        gw.proc.kill()
        gw.proc.wait()
        wait_until(lambda: all(_gone(pid) for pid in children), "the monitor process to exit")
        wait_until(lambda: not socket_dir.exists(), "its socket removed")
    finally:
        gw.stop()


def test_a_hung_monitor_process_times_out_and_is_replaced(demo: Path, tmp_path: Path) -> None:
    """A monitor process that stops answering (stopped by a signal) is killed when a drain
    call times out; a new one takes over and the rows are counted."""
    home = _home(demo, tmp_path, "hung")
    with RunningGateway(_config(home, process=True), Registry(home)) as gw:
        monitor = gw.gateway.monitor  # type: ignore[union-attr]
        first = monitor.pid
        client = httpx.Client(base_url=f"http://{gw.http}", timeout=30)
        os.kill(first, signal.SIGSTOP)
        for i in range(5):  # answered while the monitor hangs
            _infer(client, f"hung-{i}", np.zeros((1, 16), np.float32))
        wait_until(lambda: monitor.pid not in (None, first), "a new monitor process", 120)
        assert _gone(first)
        for i in range(5):
            _infer(client, f"after-{i}", np.zeros((1, 16), np.float32))
        gw.call(monitor.drain())
        rows, dropped = _rows(gw)
        assert rows + dropped == 10 and rows >= 5
        client.close()
