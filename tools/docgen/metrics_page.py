"""docs/reference/metrics.md from what `GET /metrics` exports (`lockgate.monitor.metrics`).

The gateway renders every metric from a `Snapshot`. The page renders one built here with one
of everything (a loaded and a failed version, a route, a shadow, both drift sides, labels) and
reads the families back from the text exposition, as a scraper would: names, types, help and
label names are exactly what a gateway serves. So that the page cannot silently miss a family
that needs a figure the snapshot lacks, every field of the snapshot must be set here (a new
field fails `make docs` until it is), and every family must have samples.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from docgen.markdown import code, header, table

FULL_NAME = {"counter": "{}_total"}  # the sample name a family's type adds to it
SERIES = {
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


def full_snapshot() -> Any:
    """A snapshot with every figure present once."""
    from lockgate.monitor.drift import SCORE_NAMES, build_profile
    from lockgate.monitor.sketch import LatencySketch
    from lockgate.monitor.snapshot import (
        BATCH_FIELDS,
        SHADOW_FIELDS,
        DriftSnapshot,
        JointSnapshot,
        Snapshot,
        VersionSnapshot,
        label_delay_counts,
    )

    key = ("model", "1")
    sketch = LatencySketch()
    sketch.add([0.001])
    reference = np.column_stack([np.linspace(0.0, 1.0, 100), np.arange(100) % 4])
    profile = build_profile(reference, names=["feature", "category"], categorical=[1])
    drift = DriftSnapshot(
        names=profile.names,
        alert=np.ones(2, dtype=np.bool_),
        scores=np.zeros((2, len(SCORE_NAMES))),
        windows=1,
        share=1.0,
        dataset_alert=True,
        counts=np.asarray(profile.counts).copy(),
        profile=profile,
        window_rows=1000,
        window_seconds=60.0,
        categorical=np.array([False, True]),
    )
    version = VersionSnapshot(
        latency={("endpoint", "variant"): sketch, ("endpoint", "shadow"): sketch.copy()},
        queue=sketch.copy(),
        rows=1,
        dropped=1,
        labelled=1,
        correct=1,
        abs_error_sum=1.0,
        unfollowed=1,
        mismatched=1,
        label_delay=label_delay_counts(np.array([1.0, 60.0])),
        label_delay_sum=61.0,
        drift={"input": drift, "output": dataclasses.replace(drift)},
        joint=JointSnapshot(score=0.01, threshold=0.002, alarm=True, windows=1),
    )
    snap = Snapshot(
        revision=1,
        requests=Counter({("endpoint", "variant", *key, "http", "ok"): 1}),
        clients=Counter({"client": 1}),
        weights={("endpoint", "variant", *key): 100.0},
        loaded={key},
        failed={("model", "2")},
        fallback={("endpoint", "canary", "model", "2")},
        batch={key: Counter(dict.fromkeys(BATCH_FIELDS, 1))},
        queued_rows=Counter({key: 1}),
        shadows={("endpoint", "shadow"): Counter(dict.fromkeys(SHADOW_FIELDS, 1))},
        monitored=True,
        versions={key: version},
        feedback_unknown=1,
        process={
            "cpu_seconds": 1.0,
            "resident_memory_bytes": 1.0,
            "virtual_memory_bytes": 1.0,
            "open_fds": 1.0,
        },
        processes=2,
        restarts=1,
        monitor_restarts=1,
    )
    for obj in (snap, version, drift):
        _check_complete(obj)
    return snap


def _check_complete(obj: Any) -> None:
    """Every field that has a default is set to something else."""
    for f in dataclasses.fields(obj):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue
        value = getattr(obj, f.name)
        if type(value) is type(default) and _same(value, default):
            raise ValueError(
                f"{type(obj).__name__}.{f.name} is not set in the snapshot of "
                "tools/docgen/metrics_page.py: set it, so the metrics it feeds are documented"
            )


def _same(a: Any, b: Any) -> bool:
    if hasattr(a, "state") and hasattr(b, "state"):  # latency sketches
        return bool(np.array_equal(a.state, b.state))
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    return bool(a == b)


def families(text: str) -> list[dict[str, Any]]:
    """The families of an exposition: name as scraped, type, help, labels, bucket bounds."""
    out = []
    for family in text_string_to_metric_families(text):
        if not family.samples:
            raise ValueError(
                f"{family.name} has no samples in the snapshot of tools/docgen/metrics_page.py: "
                "add the figure it reads, so its labels are documented"
            )
        labels = sorted({k for s in family.samples for k in s.labels} - {"le"})
        bounds = sorted({s.labels["le"] for s in family.samples if "le" in s.labels}, key=float)
        out.append(
            {
                "name": FULL_NAME.get(family.type, "{}").format(family.name),
                "base": family.name,
                "type": family.type,
                "help": family.documentation,
                "labels": labels,
                "bounds": bounds,
            }
        )
    return sorted(out, key=lambda f: f["name"])


INTRO = """\
Every metric family the gateway exports at `GET /metrics` on its admin listener, read from the
exposition the gateway renders. With `--workers N` the figures are the sum of all workers. The
families marked "monitor" come from the online monitor and are absent with `--no-monitor`.
`GET /metrics?name[]=NAME&name[]=...` returns only the samples named."""


def metrics_page() -> str:
    """The page's Markdown."""
    from lockgate.monitor.metrics import render_metrics

    snap = full_snapshot()
    found = families(render_metrics(snap).decode())
    unmonitored = dataclasses.replace(snap, monitored=False)
    served = {f["name"] for f in families(render_metrics(unmonitored).decode())}
    lines = header("Metrics reference", "`lockgate.monitor.metrics`", INTRO)
    rows = [
        [
            code(f["name"]),
            f["type"],
            ", ".join(code(x) for x in f["labels"]),
            "gateway" if f["name"] in served else "monitor",
            f["help"],
        ]
        for f in found
    ]
    lines += table(["metric", "type", "labels", "source", "description"], rows)
    series = [f for f in found if f["type"] in SERIES]
    if series:
        lines += ["## Histogram series", ""]
    for f in series:
        names = ", ".join(code(f["base"] + s) for s in SERIES[f["type"]])
        lines += [f"- {code(f['name'])}: {names}."]
        if f["bounds"]:
            lines += [f"  Bucket upper bounds (`le`): {', '.join(f['bounds'])}."]
    return "\n".join(lines).rstrip() + "\n"
