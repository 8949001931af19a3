"""The exposition formats `/metrics` serves, and the choice among them by the scraper's Accept
header (content negotiation with q-values, as Prometheus sends it).

- Prometheus text 0.0.4: the default (no Accept header, `*/*`, `text/plain`).
- OpenMetrics 1.0 text: what Prometheus asks for first unless told otherwise; adds units.
- Protobuf (`io.prometheus.client.MetricFamily`, delimited): what Prometheus asks for first when
  native histograms are on; the only format that carries the latency sketches as native
  histograms (next to the same classic buckets).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client.core import Metric

from lockgate.monitor.exposition import encode_openmetrics, encode_text
from lockgate.monitor.exposition_protobuf import encode_protobuf


@dataclass(frozen=True, slots=True)
class Format:
    name: str
    content_type: str
    encode: Callable[[Iterable[Metric]], bytes]
    native_histograms: bool  # whether the collector should add native-histogram samples


TEXT = Format("text", "text/plain; version=0.0.4; charset=utf-8", encode_text, False)
OPENMETRICS = Format(
    "openmetrics",
    "application/openmetrics-text; version=1.0.0; charset=utf-8",
    encode_openmetrics,
    False,
)
PROTOBUF = Format(
    "protobuf",
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited",
    encode_protobuf,
    True,
)


def _format(media: str, params: dict[str, str]) -> Format | None:
    """The format one media range of an Accept header names, if we serve it."""
    version = params.get("version")
    if media == "application/vnd.google.protobuf":
        wanted = params.get("proto") == "io.prometheus.client.MetricFamily"
        return PROTOBUF if wanted and params.get("encoding") == "delimited" else None
    if media == "application/openmetrics-text":
        return OPENMETRICS if version in (None, "1.0.0", "0.0.1") else None
    if media == "text/plain":  # 1.0.0 differs from 0.0.4 only for names we never write
        return TEXT if version in (None, "0.0.4", "1.0.0") else None
    return TEXT if media in ("*/*", "text/*") else None


def negotiate(accept: str | None) -> Format:
    """The format to answer a scrape with: the acceptable one of highest q (the first listed
    among equals); the text format when the header names none we serve."""
    best, best_q = TEXT, 0.0
    for part in (accept or "").split(","):
        media, *rest = (piece.strip() for piece in part.split(";"))
        params = {}
        for item in rest:
            key, _, value = item.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            continue
        found = _format(media.lower(), params)
        if found is not None and q > best_q:
            best, best_q = found, q
    return best
