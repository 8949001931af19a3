"""The progressive rollout controller: ramp a candidate through canary steps, judge each step on
live traffic, promote or roll back. Plain synchronous code; it talks to the gateway only through
the admin API (traffic) and `/metrics` (evidence), and keeps its truth in the rollout record.

Crash safety rests on write-ahead: a step is recorded before traffic moves, and an ending
(promoted / rolled back / aborted) is recorded before it is carried out. So after a restart,
`resume` re-applies the recorded weight (idempotent) and continues, or finishes the recorded
ending; the gateway only ever serves a split the record has named.

Decisions, per step, from the window since the step began (scraped every `scrape_seconds`, so a
breach is acted on within the interval it shows up in):
- error rate of the canary above `max_error_rate`. The gateway labels failed requests with the
  endpoint only, so every server-side failure of the endpoint (model_failed, internal,
  unavailable, deadline) is charged to the canary: an upper bound that can only roll back too
  eagerly, never promote a failing candidate. Client errors and load shedding are not charged;
- canary p99 above `max_p99_ratio` x the stable side's p99 (the last one seen when the canary
  takes all traffic), ignored below `p99_floor_seconds` where ratios are scheduling noise;
- a drift alert on the candidate version (`abort_on_drift`);
- online accuracy of candidate minus champion below `min_accuracy_delta`, once both have
  `min_labels` labels since this controller started watching the rollout.
Rates and latency are judged only with `min_requests` canary requests. A step short of them is
extended by up to `max_extensions` intervals and then *rolled back* as inconclusive: holding a
split nobody can judge leaves users on an unproven model indefinitely, and promoting without
evidence is what the rollout exists to prevent. For the same reason a gateway whose metrics
cannot be read (three tries) rolls the step back ("no evidence"). The optional shadow phase is
advisory: with too few shadow answers it proceeds to the canary steps, which have their own gates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lockgate.control.client import AdminClient
from lockgate.control.rollouts import (
    ABORT,
    ABORTED,
    FINAL,
    PAUSE,
    PAUSED,
    PENDING,
    PROMOTE,
    PROMOTED,
    RESUME,
    ROLLED_BACK,
    RUNNING,
    SHADOW,
    Rollout,
    RolloutStore,
)
from lockgate.errors import ErrorKind, LockgateError
from lockgate.retrain.fleet import Gateways
from lockgate.retrain.gateway_metrics import (
    Snapshot,
    accuracy_window,
    shadow_window,
    window,
)
from lockgate.specs import CANARY, EndpointSpec, RolloutPlan, VersionKey

log = logging.getLogger(__name__)
SHADOW_VARIANT = "challenger"
CHARGED_OUTCOMES = frozenset({"model_failed", "internal", "unavailable", "deadline"})


class NoEvidence(Exception):
    """The gateway's metrics could not be read (after retries): the step cannot be judged."""


@dataclass(frozen=True, slots=True)
class Verdict:
    breach: str | None  # why to roll back now, or None
    conclusive: bool  # enough canary requests to pass the step
    analysis: dict[str, Any]


def analyse(
    rollout: Rollout,
    before: Snapshot,
    after: Snapshot,
    stable_p99: float | None = None,
    labels_since: Snapshot | None = None,
) -> Verdict:
    """Judge the canary over the window `before` -> `after` against the rollout's plan.
    `stable_p99` is the fallback when the stable side had no traffic in the window."""
    plan, w = rollout.plan, window(before, after, rollout.endpoint)
    canary, stable = w.variant(CANARY), w.others(CANARY)
    charged = sum(n for outcome, n in w.unattributed_errors.items() if outcome in CHARGED_OUTCOMES)
    requests, errors = canary.requests + charged, canary.errors + charged
    error_rate = errors / requests if requests else None
    conclusive = requests >= max(plan.min_requests, 1)
    breaches: list[str] = []
    if conclusive and error_rate is not None and error_rate > plan.max_error_rate:
        breaches.append(
            f"canary error rate {error_rate:.1%} above {plan.max_error_rate:.1%} "
            f"({errors:g} of {requests:g} requests)"
        )
    canary_p99 = canary.p99
    own_p99 = stable.p99 if stable.requests >= max(plan.min_requests, 1) else None
    base_p99 = own_p99 if own_p99 is not None else stable_p99
    if (
        conclusive
        and canary_p99 is not None
        and base_p99 is not None
        and canary_p99 > plan.max_p99_ratio * base_p99
        and canary_p99 > plan.p99_floor_seconds
    ):
        breaches.append(
            f"canary p99 {canary_p99 * 1000:.2f} ms above {plan.max_p99_ratio:g} x the stable "
            f"p99 {base_p99 * 1000:.2f} ms"
        )
    drift = after.drift_alert(rollout.model, rollout.candidate)
    if plan.abort_on_drift and drift:
        breaches.append(f"drift alert on {rollout.model} v{rollout.candidate}")
    accuracy: dict[str, Any] = {}
    if plan.min_accuracy_delta is not None and rollout.champion is not None:
        base = labels_since or before
        n_c, acc_c = accuracy_window(base, after, rollout.model, rollout.candidate)
        n_s, acc_s = accuracy_window(base, after, rollout.model, rollout.champion)
        accuracy = {"candidate": [n_c, acc_c], "champion": [n_s, acc_s]}
        enough = min(n_c, n_s) >= plan.min_labels
        if enough and acc_c is not None and acc_s is not None:
            delta = acc_c - acc_s
            accuracy["delta"] = delta
            if delta < plan.min_accuracy_delta:
                breaches.append(
                    f"online accuracy {acc_c:.3f} vs champion {acc_s:.3f}: delta {delta:+.3f} "
                    f"below {plan.min_accuracy_delta:+.3f}"
                )
    analysis = {
        "seconds": round(w.seconds, 3),
        "canary": {
            **canary.to_json(),
            "charged_errors": charged,
            "judged_requests": requests,
            "error_rate": error_rate,
        },
        "stable": {**stable.to_json(), "p99_baseline_seconds": base_p99},
        "unattributed_errors": w.unattributed_errors,
        "drift_alert": drift,
        "accuracy": accuracy,
        "breaches": breaches,
    }
    return Verdict("; ".join(breaches) or None, conclusive, analysis)


class RolloutController:
    """Drives one rollout at a time from its record; any process may resume it later."""

    def __init__(
        self,
        admin: AdminClient,
        store: RolloutStore,
        gateways: Gateways,
        *,
        actor: str = "retrain",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        poll_seconds: float = 0.5,
        scrape_seconds: float = 5.0,
    ) -> None:
        self.admin = admin
        self.store = store
        self.gateways = gateways
        self.actor = actor
        self.clock = clock
        self.sleep = sleep
        self.poll_seconds = poll_seconds
        self.scrape_seconds = scrape_seconds
        self._stable_p99: float | None = None
        self._labels_since: Snapshot | None = None

    # -- entry points -------------------------------------------------------------------------
    def start(
        self,
        endpoint: str,
        model: str,
        candidate: str,
        champion: str | None,
        plan: RolloutPlan,
    ) -> str:
        """Record a pending rollout (and the challenger alias); `run` carries it out."""
        return self.store.start(endpoint, model, candidate, champion, plan, actor=self.actor)

    def run(self, rollout_id: str) -> str:
        """Carry the rollout from wherever its record stands to a final status (returned)."""
        self._stable_p99 = None
        self._labels_since = None
        return self._drive(rollout_id)

    def resume(self, rollout_id: str) -> str:
        """After a restart: re-apply the recorded step and continue, or finish the recorded
        ending (an abort request included). Never moves traffic to an unrecorded split."""
        r = self.store.get(rollout_id)
        log.info("rollout %s: resuming (%s, step %d at %g%%)", r.id, r.status, r.step, r.weight)
        return self.run(rollout_id)

    # -- the state machine --------------------------------------------------------------------
    def _drive(self, rid: str) -> str:
        r = self.store.get(rid)
        if r.status in FINAL:
            return r.status
        if r.ending is not None:
            return self._end(r, r.ending, r.reason or "resumed")
        first = max(r.step, 0)
        if r.status in (PENDING, SHADOW):
            if r.requested == ABORT:
                return self._end(r, ABORTED, f"aborted by {r.requested_by} before any traffic")
            if r.plan.shadow_seconds > 0:
                try:
                    ended = self._shadow_phase(r)
                except NoEvidence as exc:
                    ended = self._end(self.store.get(rid), ROLLED_BACK, f"no evidence: {exc}")
                if ended is not None:
                    return ended
            first = 0
        for step in range(first, len(r.plan.steps)):
            ended = self._step(rid, step)
            if ended is not None:
                return ended
        return self._end(self.store.get(rid), PROMOTED, "every step passed")

    def _step(self, rid: str, step: int) -> str | None:
        """Record the step, move traffic to it, watch it. A final status, or None if it passed."""
        r = self.store.get(rid)
        if r.requested in (ABORT, PROMOTE):
            return self._requested_end(r)
        if r.step == step and r.status in (RUNNING, PAUSED):
            self.store.note(rid, "reapplied", actor=self.actor)  # after a restart
        else:
            r = self.store.record_step(rid, step, actor=self.actor)
        log.info("rollout %s: step %d, canary %g%%", rid, step + 1, r.weight)
        try:
            self._set_canary(r)
        except LockgateError as exc:
            if exc.kind is ErrorKind.UNAVAILABLE:
                raise  # the gateway is unreachable: the record stands, resume later
            return self._end(r, ROLLED_BACK, f"step {step + 1} could not be applied: {exc.message}")
        try:
            return self._watch(rid)
        except NoEvidence as exc:  # judging blind is not an option: back to the champion
            return self._end(self.store.get(rid), ROLLED_BACK, f"no evidence: {exc}")

    def _watch(self, rid: str) -> str | None:
        r = self.store.get(rid)
        plan = r.plan
        before = self._scrape()
        if self._labels_since is None:
            self._labels_since = before
        deadline = self.clock() + plan.analysis_seconds
        next_check = self.clock() + self.scrape_seconds
        extensions = 0
        while True:
            r = self.store.get(rid)
            if r.requested in (ABORT, PROMOTE):
                return self._requested_end(r)
            if r.requested in (PAUSE, RESUME):
                status = PAUSED if r.requested == PAUSE else RUNNING
                try:
                    r = self.store.acknowledge(rid, status, actor=self.actor)
                except LockgateError as exc:
                    if exc.kind is not ErrorKind.CONFLICT:
                        raise
                    continue  # the request changed meanwhile: read it again
                log.info("rollout %s: %s at %g%%", rid, status, r.weight)
                if status == RUNNING:  # a fresh window: the paused time is not evidence
                    before = self._scrape()
                    deadline = self.clock() + plan.analysis_seconds
                    next_check = self.clock() + self.scrape_seconds
                    extensions = 0
            if r.status == PAUSED:
                self.sleep(self.poll_seconds)
                continue
            now = self.clock()
            if now >= next_check or now >= deadline:
                verdict = self._analyse(r, before)
                if verdict.breach is not None:
                    return self._end(r, ROLLED_BACK, verdict.breach, verdict.analysis)
                next_check = now + self.scrape_seconds
                if now >= deadline:
                    if verdict.conclusive:
                        self.store.note(rid, "pass", verdict.analysis, actor=self.actor)
                        return None
                    extensions += 1
                    if extensions > plan.max_extensions:
                        requests = verdict.analysis["canary"]["judged_requests"]
                        reason = (
                            f"inconclusive: {requests:g} canary requests in "
                            f"{extensions * plan.analysis_seconds:g} s, "
                            f"{plan.min_requests} needed"
                        )
                        return self._end(r, ROLLED_BACK, reason, verdict.analysis)
                    self.store.note(rid, "extend", verdict.analysis, actor=self.actor)
                    deadline += plan.analysis_seconds
            wait = min(self.poll_seconds, deadline - self.clock(), next_check - self.clock())
            self.sleep(max(wait, 0.001))

    def _analyse(self, r: Rollout, before: Snapshot) -> Verdict:
        after = self._scrape()
        verdict = analyse(r, before, after, self._stable_p99, self._labels_since)
        stable = verdict.analysis["stable"]
        if stable["requests"] >= max(r.plan.min_requests, 1) and stable["p99_seconds"]:
            self._stable_p99 = stable["p99_seconds"]
        return verdict

    def _shadow_phase(self, r: Rollout) -> str | None:
        """Mirror traffic to the candidate; roll back on shadow failures or disagreement."""
        plan = r.plan
        r = self.store.enter_shadow(r.id, actor=self.actor)
        if not self._shadow_of(r, self._endpoint(r)):
            body = {"variant": SHADOW_VARIANT, "model": r.model, "version": r.candidate}
            self.admin.call("POST", f"/v1/endpoints/{r.endpoint}/shadows", body)
        log.info("rollout %s: shadow phase, %g s", r.id, plan.shadow_seconds)
        before = self._scrape()
        deadline = self.clock() + plan.shadow_seconds
        while (left := deadline - self.clock()) > 0:
            if self.store.get(r.id).requested == ABORT:
                return self._requested_end(self.store.get(r.id))
            self.sleep(min(self.poll_seconds, left))
        sw = shadow_window(before, self._scrape(), r.endpoint, SHADOW_VARIANT)
        self.admin.call("DELETE", f"/v1/endpoints/{r.endpoint}/shadows/{SHADOW_VARIANT}")
        analysis = {"shadow": sw.to_json()}
        if sw.requests + sw.failed < max(plan.min_requests, 1):
            self.store.note(r.id, "shadow-inconclusive", analysis, actor=self.actor)
            return None
        breaches = []
        if (sw.failure_rate or 0.0) > plan.max_error_rate:
            breaches.append(f"shadow failure rate {sw.failure_rate:.1%}")
        if plan.max_disagreement is not None and (sw.disagreement or 0.0) > plan.max_disagreement:
            breaches.append(
                f"shadow disagreement {sw.disagreement:.1%} above {plan.max_disagreement:.1%}"
            )
        if breaches:
            return self._end(r, ROLLED_BACK, "; ".join(breaches), analysis)
        self.store.note(r.id, "shadow-pass", analysis, actor=self.actor)
        return None

    # -- endings ------------------------------------------------------------------------------
    def _requested_end(self, r: Rollout) -> str:
        if r.requested == PROMOTE:
            return self._end(r, PROMOTED, f"promoted by {r.requested_by} at {r.weight:g}%")
        return self._end(r, ABORTED, f"aborted by {r.requested_by} at {r.weight:g}%")

    def _end(self, r: Rollout, ending: str, reason: str, analysis: Any = None) -> str:
        """Record the ending, carry it out in traffic, then mark the rollout final."""
        if r.ending is None:
            r = self.store.decide(r.id, ending, reason, analysis, actor=self.actor)
        log.info("rollout %s: %s (%s)", r.id, r.ending, r.reason)
        self._settle(r)
        return self.store.finish(r.id, actor=self.actor).status

    def _settle(self, r: Rollout) -> None:
        """Traffic as the ending says; every call checks the endpoint first (idempotent)."""
        spec = self._endpoint(r)
        if self._shadow_of(r, spec):
            self.admin.call("DELETE", f"/v1/endpoints/{r.endpoint}/shadows/{SHADOW_VARIANT}")
        candidate = VersionKey(r.model, r.candidate)
        canary = spec.variant(CANARY)
        ours = canary is not None and canary.key == candidate
        if r.ending != PROMOTED:
            if ours:
                self.admin.call("POST", f"/v1/endpoints/{r.endpoint}/canary/rollback")
            return
        if not ours and [v.key for v in spec.variants] == [candidate]:
            return  # already promoted
        if not ours:
            self._set_canary(r, 100.0)
        self.admin.call("POST", f"/v1/endpoints/{r.endpoint}/canary/promote")

    # -- gateway calls ------------------------------------------------------------------------
    def _endpoint(self, r: Rollout) -> EndpointSpec:
        return self.admin.endpoint(r.endpoint).spec

    @staticmethod
    def _shadow_of(r: Rollout, spec: EndpointSpec) -> bool:
        shadow = spec.shadow(SHADOW_VARIANT)
        return shadow is not None and shadow.key == (r.model, r.candidate)

    def _set_canary(self, r: Rollout, weight: float | None = None) -> None:
        """The admin API loads and warms the version before it takes any traffic."""
        body = {"model": r.model, "version": r.candidate, "weight": weight or r.weight}
        self.admin.call("POST", f"/v1/endpoints/{r.endpoint}/canary", body)

    def _scrape(self, attempts: int = 3) -> Snapshot:
        for attempt in range(1, attempts + 1):
            try:
                return self.gateways.scrape()
            except LockgateError as exc:
                log.warning("metrics scrape %d of %d failed: %s", attempt, attempts, exc.message)
                if attempt == attempts:
                    raise NoEvidence(exc.message) from None
                self.sleep(self.poll_seconds)
        raise AssertionError("unreachable")
