"""Frozen configuration objects, built once by the CLI and passed down (no globals)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Elements (all inputs together) one infer request may declare; more is TOO_LARGE. A bound on
# what decoding may allocate, independent of the body limit (a tiny body can declare a huge shape).
MAX_REQUEST_ELEMENTS = 2**26


def default_intra_op_threads() -> int:
    """One compute thread per spare core: the event loop keeps one core, the model gets the rest."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True, slots=True)
class BatchConfig:
    max_batch_rows: int = 64  # rows (not requests) per model run
    max_queue_delay: float = 0.0  # seconds a busy-period batch may wait to fill; 0 = purely greedy
    max_queue_rows: int = 2048  # queued rows per version beyond which requests are shed
    # The longest a request may wait for the model, in seconds (0 = no bound): admission refuses
    # one expected to wait longer, a queued one that did is shed without running, and while the
    # oldest has waited over half of it the queue is served newest first (see serve/queue.py).
    # Not below a second: a refused client is told to retry after at least one (Retry-After).
    max_queue_wait: float = 1.0
    inline_threshold: float = 150e-6  # run on the event loop when the predicted compute is below
    # The longest a request from a transport that hands requests over one at a time (gRPC)
    # waits for batch-mates when its model is idle; 0 = never (see serve/gather.py).
    gather_delay: float = 0.001


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    intra_op_threads: int = default_intra_op_threads()
    inter_op_threads: int = 1
    warmup_runs: int = 5  # the cost model keeps the fastest, least disturbed run


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    enabled: bool = True
    # Rows per set of ring columns (each loaded version has two: requests fill one while the
    # drain reads the other). The drain swaps them every `drain_interval` seconds, or sooner
    # when the filling set passes half its rows. Each drain costs the event loop a few GIL
    # hand-overs whatever its rows: fewer, larger drains cost the tail less and hold more
    # memory (docs/design/monitor-tail-cost.md#drain-cadence).
    ring_rows: int = 16384
    drain_interval: float = 0.5
    predlog: bool = True  # write every prediction to <home>/predlog segment files
    segment_bytes: int = 64 * 1024 * 1024
    retention_bytes: int = 4 * 1024 * 1024 * 1024
    flush_interval: float = 1.0  # seconds; a crash loses this much of the log, and the rings
    drift_window_rows: int = 1000
    drift_window_seconds: float = 60.0
    feedback_window: int = 50_000  # recent request ids kept for joining labels online (~12 MB)
    # Run the drain and every statistic in a child process fed through shared memory, so that
    # the event loop never hands the GIL to a drain (docs/design/monitor-tail-cost.md).
    process: bool = False


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """The listeners' certificate and key (PEM); with `client_ca`, clients must present a
    certificate that CA signed (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class ServeConfig:
    home: Path = Path("lockgate-home")
    http_host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 8001
    admin_host: str = "127.0.0.1"
    admin_port: int = 8002
    default_timeout: float = 30.0  # seconds, when the client sends no deadline
    max_body_bytes: int = 64 * 1024 * 1024
    # Request-body bytes this process buffers at once for bodies still arriving; beyond it new
    # bodies are shed (503), so stalled uploads cannot take the memory.
    max_buffered_body_bytes: int = 256 * 1024 * 1024
    header_timeout: float = 10.0  # seconds from a request's first byte to its last header
    body_timeout: float = 30.0  # seconds between two reads of a request body
    idle_timeout: float = 30.0  # seconds a connection may wait with no request in progress
    max_request_elements: int = MAX_REQUEST_ELEMENTS
    # Infer requests admitted and not yet answered, per process (both transports): beyond it a
    # request is refused (503 / RESOURCE_EXHAUSTED) before its body is read.
    max_in_flight: int = 1024
    grace_period: float = 20.0  # seconds to finish in-flight work on SIGTERM
    demo: bool = False
    state_url: str | None = None  # None: SQLite in `home`; postgresql://... for replicas
    replica: str = ""  # names this gateway's prediction-log segments among replicas
    # (token, principal or bare admin name) pairs for the admin API (control/auth.py)
    admin_tokens: tuple[tuple[str, Any], ...] = field(default=(), repr=False)
    # (name, key, scope) of each data-plane API key (serve/transport/client_keys.py); none:
    # the inference listeners are open. Never in a repr: the config may be logged.
    client_keys: tuple[tuple[str, str, str], ...] = field(default=(), repr=False)
    client_keys_file: Path | None = None  # read again on SIGHUP (key rotation)
    tls: TLSConfig | None = None  # HTTP, gRPC and admin listeners speak TLS when set
    # Most traffic share (percent) a version without passed gates may be given (100: no limit;
    # control/policy.py); an admin may force past it, audited.
    ungated_max_percent: float = 5.0
    batch: BatchConfig = BatchConfig()
    runner: RunnerConfig = RunnerConfig()
    monitor: MonitorConfig = MonitorConfig()
