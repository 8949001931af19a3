"""The retrain worker's pipeline file: one TOML file per endpoint the worker owns, read once and
validated completely at start-up, so that a typo fails before any job runs instead of in the
middle of a rollout. Every message names the key path (``gates.tolerance``, ``rollout.steps[2]``)
and unknown keys are errors. ``examples/pipeline.toml`` documents every key with its default.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lockgate.errors import ErrorKind, LockgateError
from lockgate.retrain.fleet import DNS_SCHEME
from lockgate.specs import NAME_PATTERN, RolloutPlan

DEFAULT_TRAINER = "lockgate.retrain.train:logistic_regression"
TASKS = ("classification", "regression")
METRICS = {"classification": "accuracy", "regression": "mae"}  # the metric each task is gated on
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class TrainerSpec:
    """`[trainer]`: what produces a candidate."""

    function: str = DEFAULT_TRAINER  # "module:function", a `lockgate.retrain.train.Trainer`
    params: dict[str, Any] = field(default_factory=dict)  # passed to the trainer unchanged
    retries: int = 1  # extra attempts when the trainer raises


@dataclass(frozen=True, slots=True)
class TriggersSpec:
    """`[triggers]`: when a job starts (any one trigger is enough)."""

    drift: bool = True  # the champion's dataset drift alert is on
    min_new_labels: int = 500  # this many labels arrived since the last job; 0 disables
    schedule_seconds: float | None = None  # at most this long between jobs; None: no schedule
    poll_seconds: float = 5.0  # how often the triggers are checked
    # the champion's online accuracy over its last `accuracy_labels` labels fell this far below
    # its gated (holdout) accuracy; None: not checked (classification only)
    accuracy_drop: float | None = None
    accuracy_labels: int = 200


@dataclass(frozen=True, slots=True)
class DataSpec:
    """`[data]`: the training set, from the prediction log joined with feedback labels."""

    window_seconds: float = 3600.0  # predictions of the last this-many seconds
    max_rows: int = 200_000  # the newest labelled rows kept
    holdout_fraction: float = 0.2  # share held out to compare candidate and champion
    seed: int = 0  # holdout split and trainer seed
    min_rows: int = 200  # fewer labelled rows: no job (wait for more labels)
    # the API key names whose labels are trained on; None: labels from any source
    label_sources: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class GatesSpec:
    """`[gates]`: what a candidate must pass on the holdout before it is registered."""

    metric: str = "accuracy"  # "accuracy" (classification) or "mae" (regression)
    tolerance: float = 0.0  # accuracy >= champion - tolerance; mae <= champion + tolerance
    slice_feature: int | None = None  # input feature index whose quantile bins are compared
    slice_bins: int = 4  # quantile bins of that feature
    max_slice_gap: float = 0.05  # per slice, worse than the champion by at most this
    p99_latency_ms: float = 5.0  # candidate p99 of batch-1 calls, measured by the worker
    # fairness: the groups of this input feature (exact values when it has few distinct values,
    # else `group_bins` quantile bins); None: no fairness gate
    group_by: int | None = None
    group_bins: int = 4
    max_group_gap_increase: float = 0.01  # the between-group gaps may widen by at most this
    min_group_rows: int = 30  # smaller groups are reported, not judged


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """`[rollout]`: the progressive rollout of a candidate that passed the gates. Its keys are
    the plan's (lockgate.specs.RolloutPlan, stored with each rollout) plus how the worker
    reaches the gateways."""

    plan: RolloutPlan = field(default_factory=RolloutPlan)
    token_env: str = "LOCKGATE_ADMIN_TOKEN"  # env var holding the worker's admin token
    admin_url: str = "http://127.0.0.1:8002"
    # the gateways whose traffic is judged (replicas; dns+http://name:port for every address
    # of a name); empty: the one at admin_url
    metrics_urls: tuple[str, ...] = ()

    @property
    def gateways(self) -> tuple[str, ...]:
        return self.metrics_urls or (self.admin_url,)


_CONNECTION_KEYS = ("token_env", "admin_url", "metrics_urls")


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    """One pipeline file: the endpoint the worker owns and how it retrains and promotes."""

    endpoint: str  # required: the endpoint whose champion is retrained and replaced
    model: str  # registry name of candidates; defaults to the endpoint
    task: str = "classification"  # or "regression"
    trainer: TrainerSpec = TrainerSpec()
    triggers: TriggersSpec = TriggersSpec()
    data: DataSpec = DataSpec()
    gates: GatesSpec = GatesSpec()
    rollout: RolloutSpec = RolloutSpec()


def load_pipeline(path: Path) -> PipelineSpec:
    """Read and validate a pipeline file; any problem is INVALID naming the key (NOT_FOUND when
    the file is missing)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LockgateError(ErrorKind.NOT_FOUND, f"pipeline file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LockgateError(ErrorKind.INVALID, f"cannot read pipeline file {path}: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LockgateError(ErrorKind.INVALID, f"{path}: not valid TOML: {exc}") from None
    return parse_pipeline(doc, source=str(path))


def parse_pipeline(doc: Mapping[str, Any], source: str = "pipeline") -> PipelineSpec:
    """Validate an already parsed pipeline document (see :func:`load_pipeline`)."""
    r = _Reader(source)
    r.keys(doc, "", ("endpoint", "model", "task", *_SECTIONS))
    if "endpoint" not in doc:
        raise r.error("missing key 'endpoint'")
    endpoint = r.name(doc, "endpoint")
    model = r.name(doc, "model") if "model" in doc else endpoint
    task = r.choice(doc, "task", "classification", TASKS)
    sections = {name: r.table(doc, name) for name in _SECTIONS}
    return PipelineSpec(
        endpoint=endpoint,
        model=model,
        task=task,
        trainer=_trainer(r, sections["trainer"]),
        triggers=_triggers(r, sections["triggers"], task),
        data=_data(r, sections["data"]),
        gates=_gates(r, sections["gates"], task),
        rollout=_rollout(r, sections["rollout"]),
    )


def _trainer(r: _Reader, t: Mapping[str, Any]) -> TrainerSpec:
    from lockgate.retrain.train import load_trainer

    r.keys(t, "trainer.", ("function", "params", "retries"))
    function = r.string(t, "trainer.function", DEFAULT_TRAINER)
    try:
        load_trainer(function)
    except LockgateError as exc:
        raise r.error(f"trainer.function: {exc.message}") from None
    params = dict(r.table(t, "params", "trainer.params"))
    return TrainerSpec(function, params, r.integer(t, "trainer.retries", 1, 0))


def _triggers(r: _Reader, t: Mapping[str, Any], task: str) -> TriggersSpec:
    r.keys(t, "triggers.", tuple(TriggersSpec.__dataclass_fields__))
    accuracy_drop = r.optional(t, "triggers.accuracy_drop", _OPEN_UNIT)
    if accuracy_drop is not None and task != "classification":
        raise r.error("triggers.accuracy_drop applies to classification only")
    return TriggersSpec(
        drift=r.boolean(t, "triggers.drift", True),
        min_new_labels=r.integer(t, "triggers.min_new_labels", 500, 0),
        schedule_seconds=r.optional(t, "triggers.schedule_seconds", _POSITIVE),
        poll_seconds=r.number(t, "triggers.poll_seconds", 5.0, _POSITIVE),
        accuracy_drop=accuracy_drop,
        accuracy_labels=r.integer(t, "triggers.accuracy_labels", 200, 1),
    )


def _data(r: _Reader, t: Mapping[str, Any]) -> DataSpec:
    r.keys(
        t,
        "data.",
        ("window_seconds", "max_rows", "holdout_fraction", "seed", "min_rows", "label_sources"),
    )
    data = DataSpec(
        window_seconds=r.number(t, "data.window_seconds", 3600.0, _POSITIVE),
        max_rows=r.integer(t, "data.max_rows", 200_000, 1),
        holdout_fraction=r.number(t, "data.holdout_fraction", 0.2, _OPEN_UNIT),
        seed=r.integer(t, "data.seed", 0, 0),
        min_rows=r.integer(t, "data.min_rows", 200, 2),
        label_sources=_label_sources(r, t),
    )
    if data.min_rows > data.max_rows:
        raise r.error(f"data.min_rows ({data.min_rows}) must be <= data.max_rows ({data.max_rows})")
    return data


def _label_sources(r: _Reader, t: Mapping[str, Any]) -> tuple[str, ...] | None:
    """`data.label_sources`: a non-empty list of API key names (absent: every source)."""
    if "label_sources" not in t:
        return None
    value = t["label_sources"]
    names = value if isinstance(value, list) else None
    if not names or not all(isinstance(n, str) and NAME_PATTERN.fullmatch(n) for n in names):
        raise r.error(
            "data.label_sources must be a non-empty list of API key names (1-64 letters, "
            f"digits, '_', '.' or '-'), got {value!r}"
        )
    return tuple(dict.fromkeys(names))


def _gates(r: _Reader, t: Mapping[str, Any], task: str) -> GatesSpec:
    r.keys(t, "gates.", tuple(GatesSpec.__dataclass_fields__))
    metric = t.get("metric", METRICS[task])
    if metric != METRICS[task]:
        raise r.error(f"gates.metric must be {METRICS[task]!r} for task {task!r}, got {metric!r}")
    features = {
        key: r.integer(t, f"gates.{key}", 0, 0) if key in t else None
        for key in ("slice_feature", "group_by")
    }
    return GatesSpec(
        metric=metric,
        tolerance=r.number(t, "gates.tolerance", 0.0, _NON_NEGATIVE),
        slice_feature=features["slice_feature"],
        slice_bins=r.integer(t, "gates.slice_bins", 4, 2),
        max_slice_gap=r.number(t, "gates.max_slice_gap", 0.05, _NON_NEGATIVE),
        p99_latency_ms=r.number(t, "gates.p99_latency_ms", 5.0, _POSITIVE),
        group_by=features["group_by"],
        group_bins=r.integer(t, "gates.group_bins", 4, 2),
        max_group_gap_increase=r.number(t, "gates.max_group_gap_increase", 0.01, _NON_NEGATIVE),
        min_group_rows=r.integer(t, "gates.min_group_rows", 30, 1),
    )


def _rollout(r: _Reader, t: Mapping[str, Any]) -> RolloutSpec:
    r.keys(t, "rollout.", (*RolloutPlan.keys(), *_CONNECTION_KEYS))
    try:
        plan = RolloutPlan.from_doc(
            {k: v for k, v in t.items() if k not in _CONNECTION_KEYS}, "rollout"
        )
    except LockgateError as exc:
        raise r.error(exc.message) from None
    token_env = r.string(t, "rollout.token_env", "LOCKGATE_ADMIN_TOKEN")
    if not _ENV_NAME.fullmatch(token_env):
        raise r.error(f"rollout.token_env must be an environment variable name, got {token_env!r}")
    admin_url = r.string(t, "rollout.admin_url", "http://127.0.0.1:8002")
    check_url(admin_url, "rollout.admin_url", r.error)
    metrics_urls = t.get("metrics_urls", [])
    if not isinstance(metrics_urls, list) or not all(isinstance(u, str) for u in metrics_urls):
        raise r.error(f"rollout.metrics_urls must be a list of URLs, got {metrics_urls!r}")
    for url in metrics_urls:
        check_url(url, "rollout.metrics_urls", r.error, dns=True)
    return RolloutSpec(
        plan=plan,
        token_env=token_env,
        admin_url=admin_url.rstrip("/"),
        metrics_urls=tuple(u.rstrip("/") for u in metrics_urls),
    )


def check_url(
    url: str, where: str, error: Callable[[str], LockgateError], *, dns: bool = False
) -> None:
    """An http(s)://host:port URL (with `dns`, also dns+http(s)://name:port, port required)."""
    named = dns and url.startswith(DNS_SCHEME)
    parts = urlsplit(url.removeprefix(DNS_SCHEME))
    if parts.scheme not in ("http", "https") or not parts.hostname or (named and not parts.port):
        form = "[dns+]http(s)://host:port" if dns else "http(s)://host:port"
        raise error(f"{where} must be an {form} URL, got {url!r}")


# -- typed getters ----------------------------------------------------------------------------
# A rule is (predicate, text for the message), e.g. (lambda v: v >= 0, ">= 0").
Rule = tuple[Callable[[float], bool], str]
_POSITIVE: Rule = (lambda v: v > 0, "> 0")
_NON_NEGATIVE: Rule = (lambda v: v >= 0, ">= 0")
_OPEN_UNIT: Rule = (lambda v: 0 < v < 1, "with 0 < value < 1")
_SECTIONS = ("trainer", "triggers", "data", "gates", "rollout")


def _is_number(value: object) -> bool:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return ok and math.isfinite(value)  # type: ignore[arg-type]


class _Reader:
    """Typed reads of one key each, raising INVALID with the key's full path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, message: str) -> LockgateError:
        return LockgateError(ErrorKind.INVALID, f"{self.source}: {message}")

    def keys(self, table: Mapping[str, Any], prefix: str, allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                raise self.error(f"unknown key '{prefix}{key}' (known: {', '.join(allowed)})")

    def table(self, doc: Mapping[str, Any], key: str, path: str | None = None) -> dict[str, Any]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            raise self.error(f"{path or key} must be a table, got {value!r}")
        return value

    def name(self, doc: Mapping[str, Any], key: str) -> str:
        value = doc[key]
        if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
            raise self.error(
                f"{key} must be a name of 1-64 letters, digits, '_', '.' or '-', got {value!r}"
            )
        return value

    def string(self, t: Mapping[str, Any], path: str, default: str) -> str:
        value = t.get(_leaf(path), default)
        if not isinstance(value, str) or not value:
            raise self.error(f"{path} must be a non-empty string, got {value!r}")
        return value

    def choice(
        self, t: Mapping[str, Any], path: str, default: str, allowed: tuple[str, ...]
    ) -> str:
        value = t.get(_leaf(path), default)
        if value not in allowed:
            options = " or ".join(repr(a) for a in allowed)
            raise self.error(f"{path} must be {options}, got {value!r}")
        return str(value)

    def boolean(self, t: Mapping[str, Any], path: str, default: bool) -> bool:
        value = t.get(_leaf(path), default)
        if not isinstance(value, bool):
            raise self.error(f"{path} must be true or false, got {value!r}")
        return value

    def integer(self, t: Mapping[str, Any], path: str, default: int, minimum: int | None) -> int:
        value = t.get(_leaf(path), default)
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok or (minimum is not None and value < minimum):
            rule = f" >= {minimum}" if minimum is not None else ""
            raise self.error(f"{path} must be an integer{rule}, got {value!r}")
        return int(value)

    def number(self, t: Mapping[str, Any], path: str, default: float, rule: Rule) -> float:
        value = t.get(_leaf(path), default)
        check, text = rule
        if not _is_number(value) or not check(value):
            raise self.error(f"{path} must be a number {text}".rstrip() + f", got {value!r}")
        return float(value)

    def optional(self, t: Mapping[str, Any], path: str, rule: Rule) -> float | None:
        """A number that may be absent (TOML has no null: leave the key out)."""
        return self.number(t, path, 0.0, rule) if _leaf(path) in t else None


def _leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1]
