"""The retrain-and-promote worker: a plain synchronous loop, one job at a time.

    triggers (drift alert, new labels, schedule, online accuracy drop, --now or SIGUSR1)
      -> dataset (prediction log joined with labels; content-hashed manifest)
      -> train (the pipeline's trainer, retried per policy)
      -> evaluate (candidate vs champion on the same holdout; declarative gates)
      -> register (data snapshots + lineage + model card + reference profile data, then the
         gate results and an audit record)
      -> progressive rollout through the admin API (resumed after a restart)

A job that fails a gate stops with a report and registers nothing. SIGTERM stops the worker
between steps; a rollout in progress is resumed (or aborted, as recorded) by the next start.
SIGUSR1 asks a running worker for a job now (after the one it runs, if any), as `--now` does at
start: the way to retrain on demand without a new process's start-up.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from lockgate.control.client import AdminClient
from lockgate.control.registry import Registry, VersionInfo
from lockgate.control.rollouts import RolloutStore
from lockgate.control.state import StateStore
from lockgate.errors import ErrorKind, LockgateError
from lockgate.monitor.predlog import FeedbackLog, PredictionLog
from lockgate.retrain import dataset as datasets
from lockgate.retrain.datastore import DataStore
from lockgate.retrain.evaluate import evaluate
from lockgate.retrain.fleet import Gateways
from lockgate.retrain.gateway_metrics import Snapshot
from lockgate.retrain.lineage import (
    code_identity,
    environment,
    gates_record,
    lineage_record,
    model_card,
)
from lockgate.retrain.pipeline import PipelineSpec
from lockgate.retrain.rollout import RolloutController
from lockgate.retrain.train import TrainedModel, run_trainer
from lockgate.retrain.triggers import AccuracyWatch, gated_accuracy

log = logging.getLogger(__name__)
ACTOR = "retrain"  # who the worker's registrations and rollouts are by, in the audit log


@dataclass(frozen=True, slots=True)
class JobResult:
    outcome: str  # "promoted", "rolled_back", "gates_failed", "no_data", ...
    version: str | None
    detail: dict[str, Any]


class RetrainWorker:
    def __init__(
        self, spec: PipelineSpec, home: Path, admin: AdminClient, state_url: str | None = None
    ) -> None:
        self.spec = spec
        self.home = home
        self.admin = admin
        self.registry = Registry(home)
        self.rollouts = RolloutStore(home, state_url)
        self.state = StateStore(home, state_url)
        self.gateways = Gateways(spec.rollout.gateways, token=admin.token)
        self.stop = threading.Event()
        self._wake = threading.Event()  # stop or SIGUSR1: end the wait between trigger polls
        self._asked = False  # SIGUSR1 arrived: run a job now
        self._marks = home / "retrain" / f"{spec.endpoint}.json"
        t = spec.triggers
        self.accuracy = AccuracyWatch(t.accuracy_labels, t.accuracy_drop or 0.0)

    # -- the loop -------------------------------------------------------------------------------
    def run_forever(self, *, now: bool = False, once: bool = False) -> None:
        """Poll the triggers and run jobs until SIGTERM (or after one job with `once`)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop())
        signal.signal(signal.SIGUSR1, lambda *_: self.ask())
        self.own_endpoint()
        self.resume_rollouts()
        log.info("retrain worker for endpoint %s started", self.spec.endpoint)
        while not self.stop.is_set():
            asked, self._asked = self._asked, False
            reason = "manual" if now or asked else self.trigger()
            now = False
            if reason is not None:
                try:
                    result = self.run_job(reason)
                except LockgateError as exc:  # reported; the next trigger tries again
                    log.error("job failed: %s", exc.message)
                    result = JobResult("failed", None, {"error": exc.message})
                log.info("job finished: %s %s", result.outcome, result.version or "")
                if once:
                    return
            elif once:
                return
            if not self._asked:
                self._wake.wait(self.spec.triggers.poll_seconds)
            self._wake.clear()

    def ask(self) -> None:
        """Run a job as soon as the worker is between jobs (SIGUSR1)."""
        self._asked = True
        self._wake.set()

    def _stop(self) -> None:
        self.stop.set()
        self._wake.set()

    def own_endpoint(self) -> None:
        """Store the endpoint if it is still implicit: an implicit endpoint follows the latest
        registered version, and the candidates this worker registers must not take traffic
        before their rollout says so."""
        endpoint = self.admin.endpoint(self.spec.endpoint)
        if endpoint.implicit:
            self.admin.call("PUT", f"/v1/endpoints/{self.spec.endpoint}", endpoint.spec.to_doc())
            log.info("stored endpoint %s at its current split", self.spec.endpoint)

    def resume_rollouts(self) -> None:
        """Finish (or abort, as recorded) a rollout a previous worker left in progress."""
        for record in self.rollouts.active(self.spec.endpoint):
            log.info("resuming rollout %s of %s", record.id, self.spec.endpoint)
            self._controller().resume(record.id)

    def trigger(self) -> str | None:
        """Why a job should run now, or None."""
        t = self.spec.triggers
        marks = self._read_marks()
        if t.schedule_seconds and time.time() - marks.get("last_job", 0.0) >= t.schedule_seconds:
            return "schedule"
        if t.min_new_labels:
            labels = FeedbackLog(self.home / "feedback").read_labels(
                marks.get("last_job"), None, self.spec.data.label_sources
            )
            if len(labels.get("label", ())) >= t.min_new_labels:
                return "labels"
        if t.drift or t.accuracy_drop is not None:
            try:
                snapshot = self.gateways.scrape()
            except LockgateError as exc:
                log.warning("cannot read gateway metrics: %s", exc.message)
                return None
            champion = self._champion()
            if champion is None:
                return None
            if t.drift and snapshot.drift_alert(self.spec.model, champion):
                return "drift"
            if t.accuracy_drop is not None and self._accuracy_dropped(snapshot, champion):
                return "accuracy"
        return None

    def _accuracy_dropped(self, snapshot: Snapshot, champion: str) -> bool:
        """Whether the champion's online accuracy over its last labels fell too far below its
        gated accuracy (a champion without recorded gate results is not watched)."""
        try:
            info = self.registry.get(self.spec.model, champion)
        except LockgateError:
            return False
        gated = gated_accuracy(self.registry.gates(info), info.lineage)
        if gated is None:
            return False
        reading = self.accuracy.observe(snapshot, self.spec.model, champion, gated)
        if reading is None or not self.accuracy.dropped(reading):
            return False
        log.warning("%s v%s: %s", self.spec.model, champion, reading.describe())
        return True

    # -- one job --------------------------------------------------------------------------------
    def run_job(self, reason: str) -> JobResult:
        spec = self.spec
        started = time.time()
        log.info("job: %s triggered for endpoint %s", reason, spec.endpoint)
        champion = self._champion()
        if champion is None:
            return JobResult("no_champion", None, {"reason": "the endpoint serves no version"})
        champion_info = self.registry.get(spec.model, champion)
        self.accuracy.reset()  # the next accuracy verdict rests on labels after this job
        log.info("step 1/5: building the dataset (window %.0f s)", spec.data.window_seconds)
        data = datasets.build_dataset(
            PredictionLog(self.home / "predlog"),
            FeedbackLog(self.home / "feedback"),
            spec.model,
            [v.version for v in self.registry.versions(spec.model)],
            started - spec.data.window_seconds,
            started,
            spec.data.max_rows,
            label_sources=spec.data.label_sources,
        )
        try:
            datasets.require_rows(data, spec.data.min_rows)
        except LockgateError as exc:
            self._mark(started)  # wait for new labels (or the schedule) before trying again
            log.info("%s", exc.message)
            return JobResult("no_data", None, {"rows": data.rows, "reason": exc.message})
        train, holdout = datasets.split(data, spec.data.holdout_fraction, spec.data.seed)
        log.info("step 2/5: training on %d rows (%s)", len(train.y), spec.trainer.function)
        model = self._train(train.x, train.y)
        log.info("step 3/5: evaluating against champion v%s on %d rows", champion, len(holdout.y))
        report = evaluate(
            model.onnx,
            champion_info.model_path.read_bytes(),
            holdout.x,
            holdout.y,
            spec.gates,
            spec.task,
        )
        self._mark(started)
        if not report.passed:
            log.warning("gates failed; nothing registered: %s", orjson.dumps(report.to_dict()))
            return JobResult("gates_failed", None, report.to_dict())
        log.info("step 4/5: registering the candidate")
        info = self._register(model, (train, holdout), data.manifest, champion, report.to_dict())
        log.info("step 5/5: rolling out %s v%s", info.name, info.version)
        rollout_id = self.rollouts.start(
            spec.endpoint, spec.model, info.version, champion, spec.rollout.plan
        )
        status = self._controller().run(rollout_id)
        return JobResult(status, info.version, {"rollout": rollout_id, "gates": report.to_dict()})

    def _train(self, x: Any, y: Any) -> TrainedModel:
        t = self.spec.trainer
        attempts = t.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return run_trainer(t.function, x, y, dict(t.params), self.spec.data.seed)
            except LockgateError as exc:
                if exc.kind is ErrorKind.INVALID:  # a configuration mistake: retrying won't help
                    raise
                log.warning("trainer failed (attempt %d of %d): %s", attempt, attempts, exc)
                if attempt == attempts:
                    raise
            except Exception as exc:
                log.warning("trainer failed (attempt %d of %d): %s", attempt, attempts, exc)
                if attempt == attempts:
                    raise LockgateError(
                        ErrorKind.UNPROCESSABLE, f"trainer failed {attempts} times: {exc}"
                    ) from exc
        raise AssertionError("unreachable")

    def _register(
        self,
        model: TrainedModel,
        parts: tuple[datasets.Dataset, datasets.Dataset],
        manifest: dict[str, Any],
        champion: str,
        report: dict[str, Any],
    ) -> VersionInfo:
        """Snapshot the data, publish the version with its lineage and card, then record its
        gate results and audit the registration."""
        spec = self.spec
        train, holdout = parts
        store = DataStore(self.home)
        snapshot = {
            "train": store.put(train.x, train.y),
            "holdout": store.put(holdout.x, holdout.y),
        }
        lineage = lineage_record(
            manifest,
            champion,
            spec.trainer.function,
            model.params,
            report["metrics"],
            report,
            seed=spec.data.seed,
            code=code_identity(spec.trainer.function),
            environment=environment(spec.trainer.function),
            snapshot=snapshot,
        )
        next_version = str(len(self.registry.versions(spec.model)) + 1)
        card = model_card(
            spec.model,
            next_version,
            spec.task,
            manifest,
            report,
            intended_use=f"Serves endpoint {spec.endpoint!r}; retrained by lockgate.",
            limitations=["Trained only on traffic the gateway logged with labels."],
            parent=champion,
            lineage=lineage,
        )
        info = self.registry.register(
            model.onnx,
            spec.model,
            metadata={"trigger": "retrain", "endpoint": spec.endpoint},
            reference=train.x,
            lineage=lineage,
            card=card,
        )
        data = {"hash": holdout.manifest["hash"], "rows": holdout.rows, "snapshot": "holdout"}
        self.registry.write_gates(
            info, gates_record(report, against=champion, data=data, actor=ACTOR)
        )
        self.state.record(
            "version.register",
            f"{info.name}/{info.version}",
            {"sha256": info.sha256, "endpoint": spec.endpoint, "gates_passed": report["passed"]},
            actor=ACTOR,
        )
        return info

    # -- helpers --------------------------------------------------------------------------------
    def _controller(self) -> RolloutController:
        return RolloutController(self.admin, self.rollouts, self.gateways)

    def _champion(self) -> str | None:
        """The champion alias, else the endpoint's version with the most traffic."""
        alias = self.rollouts.alias(self.spec.endpoint, "champion")
        if alias is not None:
            return alias[1]
        spec = self.admin.endpoint(self.spec.endpoint).spec
        variants = [v for v in spec.variants if v.model == self.spec.model]
        if not variants:
            return None
        return max(variants, key=lambda v: v.weight).version

    def _read_marks(self) -> dict[str, float]:
        try:
            marks: dict[str, float] = orjson.loads(self._marks.read_bytes())
            return marks
        except (OSError, orjson.JSONDecodeError):
            return {}

    def _mark(self, started: float) -> None:
        self._marks.parent.mkdir(parents=True, exist_ok=True)
        temp = self._marks.with_suffix(".tmp")
        temp.write_bytes(orjson.dumps({"last_job": started}))
        temp.replace(self._marks)
