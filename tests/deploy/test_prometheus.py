"""deploy/prometheus/ with the real tools: promtool accepts the config and the rules and passes
the rules' unit tests, and a real Prometheus scraping a live gateway sees a drift alert switch
on, a finite p99 latency, loads every alert rule and runs every dashboard query."""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from lockgate.config import MonitorConfig
from lockgate.control.registry import Registry
from lockgate.demo import classifier_data, ensure_demo_models
from tests.conftest import RunningGateway, loopback_config
from tests.deploy.conftest import (
    PROMETHEUS_DIR,
    alert_rules,
    dashboard_exprs,
    infer,
    metric_names,
    tool,
)
from tests.deploy.prometheus_server import Prometheus, running_prometheus
from tests.deploy.prometheus_server import value as one_value

# Grafana's variables, as Grafana would expand them for "All" and a short time range.
GRAFANA = {
    "$__rate_interval": "30s",
    "$__interval": "5s",
    "$__range": "5m",
    "$job": ".*",
    "$instance": ".*",
    "$endpoint": ".*",
    "$model": ".*",
}
DRIFT = 'lockgate_drift_alert{model="classifier", side="input", feature="input[0]"}'
P99 = (
    "histogram_quantile(0.99, sum by (le, endpoint, variant) "
    '(rate(lockgate_request_latency_seconds_bucket{endpoint="classifier"}[30s])))'
)
SKETCH_P99 = 'lockgate_request_latency_quantile_seconds{endpoint="classifier", quantile="0.99"}'


def promtool(*args: str) -> str:
    proc = subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=PROMETHEUS_DIR
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output


def test_promtool_checks_the_config_and_its_rule_file() -> None:
    output = promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in output
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_promtool_checks_the_rules() -> None:
    output = promtool("check", "rules", "alerts.yml")
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_every_alert_rule_has_a_unit_test_that_passes() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS_DIR / "alerts_test.yml").read_text()))
    assert tested == alert_rules().keys()


@pytest.fixture(scope="module")
def drift_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    home = tmp_path_factory.mktemp("deploy-prometheus")
    ensure_demo_models(Registry(home))
    # Windows close by rows only, so the few requests of the test decide every window.
    monitor = MonitorConfig(drift_window_seconds=3600.0)
    with RunningGateway(loopback_config(home, monitor=monitor), Registry(home)) as gw:
        yield gw


@pytest.fixture(scope="module")
def prometheus(
    drift_gateway: RunningGateway, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """A real Prometheus on a free loopback port that scrapes the gateway every second and
    evaluates deploy/prometheus/alerts.yml every second."""
    tmp = tmp_path_factory.mktemp("prometheus")
    rules = [str(PROMETHEUS_DIR / "alerts.yml")]
    with running_prometheus(tmp, [drift_gateway.admin], rules) as prom:
        yield prom


@pytest.fixture(scope="module")
def drifted(drift_gateway: RunningGateway, prometheus: Prometheus) -> Prometheus:
    """Reference traffic, then traffic with input[0] shifted, until Prometheus has scraped the
    gateway's drift alert for input[0] switching on."""
    prom, gw, rng = prometheus, drift_gateway, np.random.default_rng(11)
    prom.wait("the gateway up", lambda: one_value(prom.query('up{job="lockgate"}')) == 1)
    with httpx.Client(base_url=f"http://{gw.http}", timeout=30) as client:
        for i in range(2):  # two windows (1,000 rows each) from the training distribution
            infer(client, "classifier", classifier_data(rng, 1000)[0], f"calm-{i}")
        gw.call(gw.gateway.monitor.drain())
        windows = 'lockgate_drift_windows_total{model="classifier", side="input"}'
        prom.wait("two calm drift windows", lambda: one_value(prom.query(windows)) == 2)
        assert one_value(prom.query(DRIFT)) == 0
        for i in range(2):  # feature 0 has std 0.5: a one-sigma shift
            x = classifier_data(rng, 1000)[0]
            x[:, 0] += 0.5
            infer(client, "classifier", x, f"shifted-{i}")
        for i in range(20):
            infer(client, "classifier", classifier_data(rng, 1)[0], f"small-{i}")
        gw.call(gw.gateway.monitor.drain())
    prom.wait("the drift alert of input[0] at 1", lambda: one_value(prom.query(DRIFT)) == 1)
    return prom


def test_prometheus_sees_drift_and_latency(drifted: Prometheus) -> None:
    prom = drifted
    assert one_value(prom.query(DRIFT.replace("input[0]", "input[5]"))) == 0

    def finite_p99() -> float | None:
        v = one_value(prom.query(P99))
        return v if v is not None and math.isfinite(v) and v > 0 else None

    p99 = prom.wait("a finite p99 latency", finite_p99)
    assert p99 < 8.0
    sketch = one_value(prom.query(SKETCH_P99))
    assert sketch is not None and 0 < sketch < 8.0

    # The alert rules loaded and evaluate without errors; the feature drift rule matched.
    def evaluated() -> list[dict[str, Any]]:
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else []

    rules = prom.wait("every rule evaluated", evaluated)
    assert {r["name"]: r["health"] for r in rules} == {name: "ok" for name in alert_rules()}
    ours = alert_rules()
    for rule in rules:  # the light reader of alerts.yml agrees with Prometheus's parser
        assert metric_names(rule["query"]) == metric_names(ours[rule["name"]]), rule["name"]

    def drift_alerts() -> list[dict[str, str]]:
        alerts = prom.api("alerts")["alerts"]
        return [a["labels"] | {"state": a["state"]} for a in alerts if "feature" in a["labels"]]

    alerts = prom.wait("the LockgateFeatureDrift alert pending", drift_alerts)
    inputs = [a for a in alerts if a["side"] == "input"]  # outputs move with input[0]
    assert inputs == [
        {
            "alertname": "LockgateFeatureDrift",
            "severity": "warning",
            "model": "classifier",
            "version": "2",
            "side": "input",
            "feature": "input[0]",
            "state": "pending",  # `for: 5m` has not passed yet
        }
    ]


def test_every_dashboard_query_runs(drifted: Prometheus) -> None:
    """Each dashboard expression, with Grafana's variables expanded, is valid PromQL that
    Prometheus evaluates; the panels this traffic feeds have data."""
    with_data = []
    for expr in dashboard_exprs():
        variable = re.fullmatch(r"label_values\((\w+)(?:\{.*\})?, (\w+)\)", expr)
        if variable:  # a Grafana variable query: the metric must carry the label
            metric, label = variable.groups()
            assert any(label in r["metric"] for r in drifted.query(metric)), expr
            continue
        for name, value in sorted(GRAFANA.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(name, value)
        assert "$" not in expr, expr
        if drifted.query(expr):
            with_data.append(expr)
    psi = [e for e in with_data if 'statistic="psi"' in e and 'side="input"' in e]
    assert psi, "the PSI heat map has no data"
    assert any("lockgate_request_latency_seconds_bucket" in e for e in with_data)
    assert any("lockgate_drift_alert" in e for e in with_data)
    assert len(with_data) >= len(dashboard_exprs()) // 2, with_data


def test_prometheus_reads_the_openmetrics_exposition(drifted: Prometheus) -> None:
    """Prometheus asks for OpenMetrics first (its default Accept header): it gets it, parses it
    without error, and keeps what only OpenMetrics carries, the units."""
    (target,) = drifted.api("targets")["activeTargets"]
    assert target["health"] == "up" and target["lastError"] == "", target
    metadata = drifted.api("targets/metadata", metric="lockgate_request_latency_seconds")
    assert [(m["type"], m["unit"]) for m in metadata] == [("histogram", "seconds")]
    delay = drifted.api("targets/metadata", metric="lockgate_label_delay_seconds")
    assert [(m["type"], m["unit"]) for m in delay] == [("histogram", "seconds")]
    # the classic buckets arrive, with the text format's `le` values
    bounds = {
        r["metric"]["le"]
        for r in drifted.query('lockgate_request_latency_seconds_bucket{endpoint="classifier"}')
    }
    assert bounds == {repr(2.0**k) for k in range(-14, 6)} | {"+Inf"}
