"""What the serving side uses of a monitor, whichever runs it: the in-process drain
(:class:`lockgate.monitor.drain.Monitor`) or the monitor process's gateway side
(:class:`lockgate.process.monitor_remote.MonitorProcess`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from lockgate.monitor.drain import FeedbackResult
from lockgate.monitor.layout import RowLayout
from lockgate.monitor.profiles import Predict, VersionProfiles
from lockgate.monitor.record import VersionRecorder
from lockgate.monitor.ring import Array
from lockgate.monitor.snapshot import Snapshot
from lockgate.types import ModelSpec


class MonitorHandle(Protocol):
    def attach(
        self,
        spec: ModelSpec,
        reference: Array | Mapping[str, Array] | None = None,
        predict: Predict | None = None,
        profiles: VersionProfiles | None = None,
        layout: RowLayout | None = None,
    ) -> VersionRecorder: ...
    def detach(self, key: tuple[str, str]) -> None: ...
    def start(self) -> None: ...
    async def drain(self) -> None: ...
    async def close(self) -> None: ...
    async def submit_feedback(
        self, labels: list[tuple[str, float]], source: str = ""
    ) -> FeedbackResult: ...
    async def drift_report(self, model: str, version: str) -> dict[str, Any]: ...
    async def recent(self, model: str, version: str, limit: int) -> dict[str, Any]: ...
    def capture(self, snap: Snapshot) -> None: ...
