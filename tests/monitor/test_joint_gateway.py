"""Joint drift through a real gateway: the profile stored at registration, windows of served
rows, and /metrics showing the score cross its threshold when features that were independent
start to move together (every feature's own distribution unchanged). Also the snapshot's
joint figures across processes."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import numpy as np
import pytest

from lockgate.control.registry import Registry
from lockgate.demo import CLASSIFIER_FEATURES, classifier_data, ensure_demo_models
from lockgate.monitor.metrics import render_metrics
from lockgate.monitor.snapshot import JointSnapshot, Snapshot, VersionSnapshot, merged
from tests.conftest import RunningGateway, loopback_config
from tests.monitor.test_gateway_monitor import _infer, metrics, value
from tests.waiting import wait_until

V2 = {"model": "classifier", "version": "2"}


def paired(x: np.ndarray) -> np.ndarray:
    """Each odd feature becomes its even neighbour, rescaled to its own mean and scale: every
    marginal is unchanged (the demo's features are normal), the pairs are now correlated 1."""
    means = np.linspace(-1.0, 1.0, CLASSIFIER_FEATURES)
    scales = np.linspace(0.5, 2.0, CLASSIFIER_FEATURES)
    z = (x - means) / scales
    z[:, 1::2] = z[:, 0::2]
    return (means + scales * z).astype(np.float32)


def joint_figures(gw: RunningGateway) -> tuple[float, float, float, float]:
    samples = metrics(gw)
    windows = value(samples, "lockgate_joint_drift_windows_total", **V2)
    if not windows:
        return windows, math.nan, math.nan, value(samples, "lockgate_joint_drift_alarm", **V2)
    return (
        windows,
        value(samples, "lockgate_joint_drift_score", **V2),
        value(samples, "lockgate_joint_drift_threshold", **V2),
        value(samples, "lockgate_joint_drift_alarm", **V2),
    )


def test_joint_drift_moves_on_metrics_when_features_start_moving_together(tmp_path: Path) -> None:
    ensure_demo_models(Registry(tmp_path))
    registry = Registry(tmp_path)
    profiles = registry.load_profiles(registry.get("classifier", "2"))
    assert profiles is not None and profiles.joint is not None  # stored at registration
    assert len(profiles.joint.names) == CLASSIFIER_FEATURES
    rng = np.random.default_rng(17)
    with RunningGateway(loopback_config(tmp_path), Registry(tmp_path)) as gw:
        assert joint_figures(gw)[0] == 0  # exported before the first window, no score yet
        with httpx.Client(base_url=f"http://{gw.http}", timeout=10) as client:
            for i in range(10):  # one window (1,000 rows) of clean traffic
                _infer(client, f"clean-{i}", classifier_data(rng, 100)[0])
            _, score, threshold, alarm = wait_until(
                lambda: (f := joint_figures(gw))[0] == 1 and f, "the first joint window"
            )
            assert score < threshold and alarm == 0
            for i in range(10):  # one window of paired features
                _infer(client, f"paired-{i}", paired(classifier_data(rng, 100)[0]))
            _, score, threshold, alarm = wait_until(
                lambda: (f := joint_figures(gw))[0] == 2 and f, "the second joint window"
            )
            assert score > 2 * threshold and alarm == 1
        report = httpx.get(f"http://{gw.admin}/v1/models/classifier/versions/2/drift").json()
        assert report["joint"]["alarm"] is True
        assert report["joint"]["last_window"]["rows"] == 1000


def test_joint_figures_merge_across_processes_and_cross_the_wire() -> None:
    def snap(score: float, threshold: float, alarm: bool, windows: int) -> Snapshot:
        vs = VersionSnapshot(joint=JointSnapshot(score, threshold, alarm, windows))
        return Snapshot(monitored=True, versions={("m", "1"): vs})

    quiet, loud, fresh = (
        snap(0.001, 0.002, False, 3),
        snap(0.009, 0.003, True, 2),
        snap(math.nan, math.nan, False, 0),
    )
    total = merged([quiet, Snapshot.from_bytes(loud.to_bytes()), fresh])
    joint = total.versions[("m", "1")].joint
    assert joint is not None
    # the pair of the process furthest past its threshold; any alarm; windows add
    assert (joint.score, joint.threshold, joint.alarm, joint.windows) == (0.009, 0.003, True, 5)
    text = render_metrics(total).decode()
    assert 'lockgate_joint_drift_score{model="m",version="1"} 0.009' in text
    assert 'lockgate_joint_drift_alarm{model="m",version="1"} 1.0' in text
    # what an exited process leaves behind: its windows, no point-in-time figures
    gone = total.counters().versions[("m", "1")].joint
    assert gone is not None and gone.windows == 5 and not gone.alarm and math.isnan(gone.score)
    before = Snapshot.from_bytes(Snapshot(versions={("m", "1"): VersionSnapshot()}).to_bytes())
    assert before.versions[("m", "1")].joint is None
    assert "lockgate_joint_drift_score{" not in render_metrics(merged([fresh])).decode()


@pytest.mark.parametrize("windows", [0, 1])
def test_a_version_without_a_window_exports_no_score(windows: int) -> None:
    score = math.nan if windows == 0 else 0.5
    vs = VersionSnapshot(joint=JointSnapshot(score, score, False, windows))
    text = render_metrics(Snapshot(monitored=True, versions={("m", "1"): vs})).decode()
    assert ('lockgate_joint_drift_score{model="m",version="1"}' in text) == (windows == 1)
    assert 'lockgate_joint_drift_windows_total{model="m",version="1"}' in text
