"""The rollout records and aliases in the state database (SQLite and PostgreSQL): transitions,
one active rollout per endpoint, audit rows beside the traffic changes', and the operator
requests that are refused."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lockgate.control.rollouts import (
    ABORTED,
    PAUSED,
    PENDING,
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    Rollout,
    RolloutStore,
)
from lockgate.control.state import StateStore
from lockgate.errors import ErrorKind, LockgateError
from lockgate.specs import RolloutPlan

PLAN = RolloutPlan(steps=(10, 50, 100), analysis_seconds=0.5, min_requests=5)


@pytest.fixture
def store(tmp_path: Path, state_url: str | None) -> RolloutStore:
    return RolloutStore(tmp_path, state_url)


def kind_of(exc: pytest.ExceptionInfo[LockgateError]) -> ErrorKind:
    return exc.value.kind


def test_start_records_pending_rollout_aliases_and_audit(
    tmp_path: Path, state_url: str | None
) -> None:
    state = StateStore(tmp_path, state_url)
    revision = state.revision()
    store = RolloutStore(tmp_path, state_url)
    rid = store.start("scoring", "classifier", "2", "1", PLAN, actor="retrain")
    r = store.get(rid)
    assert (r.status, r.step, r.weight, r.requested, r.candidate, r.champion) == (
        PENDING,
        -1,
        0.0,
        None,
        "2",
        "1",
    )
    assert r.plan == PLAN
    assert store.alias("scoring", "challenger") == ("classifier", "2")
    assert store.alias("scoring", "champion") == ("classifier", "1")
    records = state.audit(target=f"scoring/{rid}")
    assert [a["action"] for a in records] == ["rollout.start"]
    assert records[0]["actor"] == "retrain" and records[0]["after"]["candidate"] == "2"
    assert records[0]["revision"] == revision
    assert state.revision() == revision  # bookkeeping does not make gateways reload
    aliases = {a["target"]: a["after"] for a in state.audit() if a["action"] == "alias.set"}
    assert aliases["scoring/challenger"] == {"model": "classifier", "version": "2"}


def test_records_round_trip_through_their_json(store: RolloutStore) -> None:
    """The admin API's answer (to_json, plus keys such as `aliases`) parses back to the record."""
    rid = store.start("scoring", "classifier", "2", "1", PLAN)
    r = store.record_step(rid, 0)
    assert Rollout.from_json({**r.to_json(), "aliases": {}}) == r
    assert r.to_json()["plan"] == PLAN.to_doc()


def test_one_active_rollout_per_endpoint(store: RolloutStore) -> None:
    rid = store.start("scoring", "classifier", "2", "1", PLAN)
    with pytest.raises(LockgateError, match=rid) as exc:
        store.start("scoring", "classifier", "3", "1", PLAN)
    assert kind_of(exc) is ErrorKind.CONFLICT
    other = store.start("fraud", "fraud", "4", "3", PLAN)  # another endpoint is independent
    assert [r.id for r in store.active()] == [other, rid]  # newest first
    store.decide(rid, ROLLED_BACK, "test")
    store.finish(rid)
    again = store.start("scoring", "classifier", "3", "1", PLAN)  # ended: a new one may start
    assert [r.id for r in store.rollouts("scoring")] == [again, rid]


def test_concurrent_starts_admit_exactly_one(tmp_path: Path, state_url: str | None) -> None:
    RolloutStore(tmp_path, state_url)  # schema first, so the racers only race the insert
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def racer(version: str) -> None:
        store = RolloutStore(tmp_path, state_url)
        barrier.wait()
        try:
            store.start("scoring", "classifier", version, "1", PLAN)
            outcomes.append("started")
        except LockgateError as exc:
            outcomes.append(exc.kind.name)

    threads = [threading.Thread(target=racer, args=(str(v),)) for v in range(2, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["CONFLICT"] * 3 + ["started"]


def test_steps_pause_resume_and_promotion_move_the_champion(
    tmp_path: Path, state_url: str | None
) -> None:
    store, state = RolloutStore(tmp_path, state_url), StateStore(tmp_path, state_url)
    rid = store.start("scoring", "classifier", "2", "1", PLAN)
    r = store.record_step(rid, 0)
    assert (r.status, r.step, r.weight) == (RUNNING, 0, 10.0)
    assert r.history[-1]["decision"] == "apply" and r.history[-1]["weight"] == 10.0
    r = store.request(rid, "pause", actor="alice")
    assert (r.status, r.requested, r.requested_by) == (RUNNING, "pause", "alice")
    r = store.acknowledge(rid, PAUSED)
    assert (r.status, r.requested) == (PAUSED, None)
    store.request(rid, "resume", actor="bob")
    r = store.acknowledge(rid, RUNNING)
    assert (r.status, r.requested) == (RUNNING, None)
    store.note(rid, "pass", {"canary": {"requests": 9}})
    r = store.record_step(rid, 1)
    assert (r.step, r.weight) == (1, 50.0)
    r = store.decide(rid, PROMOTED, "every step passed")
    assert (r.status, r.ending) == (RUNNING, PROMOTED)  # decided, not yet carried out
    r = store.finish(rid)
    assert (r.status, r.weight, r.reason) == (PROMOTED, 100.0, "every step passed")
    assert store.alias("scoring", "champion") == ("classifier", "2")
    assert store.alias("scoring", "challenger") is None
    records = state.audit(target=f"scoring/{rid}")
    assert [(a["action"], a["actor"]) for a in reversed(records)] == [
        ("rollout.start", "retrain"),
        ("rollout.step", "retrain"),
        ("rollout.pause", "alice"),
        ("rollout.paused", "retrain"),
        ("rollout.resume", "bob"),
        ("rollout.running", "retrain"),
        ("rollout.pass", "retrain"),
        ("rollout.step", "retrain"),
        ("rollout.decision", "retrain"),
        ("rollout.promoted", "retrain"),
    ]
    assert records[0]["before"]["status"] == RUNNING and records[0]["after"]["status"] == PROMOTED
    moved = [a for a in state.audit(target="scoring/champion") if a["action"] == "alias.set"]
    assert moved[0]["before"] == {"model": "classifier", "version": "1"}
    assert moved[0]["after"] == {"model": "classifier", "version": "2"}


def test_rollback_keeps_the_champion(store: RolloutStore) -> None:
    rid = store.start("scoring", "classifier", "2", "1", PLAN)
    store.record_step(rid, 0)
    store.decide(rid, ROLLED_BACK, "canary error rate 100%")
    r = store.finish(rid)
    assert (r.status, r.weight, r.reason) == (ROLLED_BACK, 0.0, "canary error rate 100%")
    assert store.alias("scoring", "champion") == ("classifier", "1")
    assert store.alias("scoring", "challenger") is None


@pytest.mark.parametrize(
    ("status", "requested", "action", "message"),
    [
        (PENDING, None, "pause", "only a running rollout can be paused"),
        (PENDING, None, "promote", "no canary to promote"),
        (RUNNING, None, "resume", "is not paused"),
        (PAUSED, None, "pause", "already paused"),
        (RUNNING, "abort", "abort", "already requested"),
        (RUNNING, "abort", "promote", "pending abort request"),
        (RUNNING, "promote", "pause", "pending promote request"),
        (ROLLED_BACK, None, "abort", "already ended"),
    ],
)
def test_invalid_operator_requests_are_conflicts(
    store: RolloutStore, status: str, requested: str | None, action: str, message: str
) -> None:
    rid = store.start("scoring", "classifier", "2", "1", PLAN)
    if status in (RUNNING, PAUSED, ROLLED_BACK):
        store.record_step(rid, 0)
    if status == PAUSED:
        store.request(rid, "pause", actor="alice")
        store.acknowledge(rid, PAUSED)
    if status == ROLLED_BACK:
        store.decide(rid, ROLLED_BACK, "test")
        store.finish(rid)
    if requested is not None:
        store.request(rid, requested, actor="alice")
    before = store.get(rid)
    with pytest.raises(LockgateError, match=message) as exc:
        store.request(rid, action, actor="bob")
    assert kind_of(exc) is ErrorKind.CONFLICT
    assert store.get(rid) == before  # a refused request changes nothing


def test_resume_withdraws_a_pause_not_yet_acted_on(store: RolloutStore) -> None:
    rid = store.start("scoring", "classifier", "2", "1", PLAN)
    store.record_step(rid, 0)
    store.request(rid, "pause", actor="alice")
    r = store.request(rid, "resume", actor="alice")
    assert (r.status, r.requested) == (RUNNING, None)


def test_abort_overrides_a_pending_pause(store: RolloutStore) -> None:
    rid = store.start("scoring", "classifier", "2", "1", PLAN)
    store.record_step(rid, 0)
    store.request(rid, "pause", actor="alice")
    r = store.request(rid, "abort", actor="bob")
    assert (r.requested, r.requested_by) == ("abort", "bob")
    store.decide(rid, ABORTED, "aborted by bob")
    assert store.finish(rid).status == ABORTED


def test_unknown_rollout_and_action(store: RolloutStore) -> None:
    with pytest.raises(LockgateError) as exc:
        store.get("r-missing")
    assert kind_of(exc) is ErrorKind.NOT_FOUND
    rid = store.start("scoring", "classifier", "2", "1", PLAN)
    with pytest.raises(LockgateError) as exc:
        store.request(rid, "explode", actor="alice")
    assert kind_of(exc) is ErrorKind.INVALID


def test_aliases_are_per_endpoint_and_audited(tmp_path: Path, state_url: str | None) -> None:
    store, state = RolloutStore(tmp_path, state_url), StateStore(tmp_path, state_url)
    store.set_alias("scoring", "champion", "classifier", "1", actor="alice")
    store.set_alias("fraud", "champion", "fraud", "7")
    store.set_alias("scoring", "champion", "classifier", "1")  # unchanged: no audit row
    assert store.alias("scoring", "champion") == ("classifier", "1")
    assert store.alias("fraud", "champion") == ("fraud", "7")
    assert store.alias("scoring", "challenger") is None
    assert set(store.aliases("scoring")) == {"champion"}
    rows = state.audit(target="scoring/champion")
    assert [(r["action"], r["actor"]) for r in rows] == [("alias.set", "alice")]


def test_records_survive_a_new_store(tmp_path: Path, state_url: str | None) -> None:
    rid = RolloutStore(tmp_path, state_url).start("scoring", "classifier", "2", "1", PLAN)
    RolloutStore(tmp_path, state_url).record_step(rid, 1)
    r = RolloutStore(tmp_path, state_url).get(rid)
    assert (r.status, r.step, r.weight) == (RUNNING, 1, 50.0)
