"""What a gateway process adds to a :class:`Snapshot` besides its serving counters: its OS
figures and the monitor's arrays. Both read shared state (/proc, the monitor's lock), so they
run off the event loop.
"""

from __future__ import annotations

from prometheus_client import ProcessCollector

from lockgate.monitor.drain import Monitor
from lockgate.monitor.snapshot import DriftSnapshot, JointSnapshot, Snapshot, VersionSnapshot

PROCESS_FIGURES = {
    "process_cpu_seconds_total": "cpu_seconds",
    "process_resident_memory_bytes": "resident_memory_bytes",
    "process_virtual_memory_bytes": "virtual_memory_bytes",
    "process_open_fds": "open_fds",
}


def capture_process(snap: Snapshot) -> None:
    """This process's OS figures (read from /proc: call it off the event loop)."""
    for family in ProcessCollector(registry=None).collect():
        for sample in family.samples:
            name = PROCESS_FIGURES.get(sample.name)
            if name is not None:
                snap.process[name] = sample.value


def capture_monitor(snap: Snapshot, monitor: Monitor) -> None:
    """Add the monitor's figures to `snap`. Takes the monitor's lock, which the drain holds
    while it absorbs a batch of rows (milliseconds): call it off the event loop."""
    with monitor.lock:
        snap.feedback_unknown = monitor.feedback_unknown
        for key, vm in monitor.versions.items():
            routes = vm.recorder.ring.routes
            vs = snap.versions[key] = VersionSnapshot(
                latency={routes[code]: s.copy() for code, s in vm.latency.items()},
                queue=vm.queue.copy(),
                rows=vm.rows,
                dropped=vm.dropped,
                unfollowed=len(vm.recorder.unfollowed),
                mismatched=vm.recorder.ring.mismatched,
                labelled=vm.accuracy.labelled,
                correct=vm.accuracy.correct,
                abs_error_sum=vm.accuracy.abs_error_sum,
                label_delay=vm.accuracy.delay_counts.copy(),
                label_delay_sum=vm.accuracy.delay_sum,
            )
            for side, drift in (("input", vm.input_drift), ("output", vm.output_drift)):
                if drift is not None:
                    st = drift.state
                    vs.drift[side] = DriftSnapshot(
                        names=drift.profile.names,
                        alert=st.feature_alert,
                        scores=st.last_scores,  # NaN before the first window
                        windows=st.windows,
                        share=st.share,
                        dataset_alert=st.dataset_alert,
                        counts=drift.cumulative_counts,
                        profile=drift.profile,
                        window_rows=drift.config.window_rows,
                        window_seconds=drift.config.window_seconds,
                        categorical=drift.profile.categorical,
                    )
            if vm.joint_drift is not None:
                js = vm.joint_drift.state
                vs.joint = JointSnapshot(js.score, js.threshold, js.alarm, js.windows)
