"""Progressive rollouts and model aliases, kept in the state database (SQLite or PostgreSQL).

A rollout record is the one place that says where a candidate's ramp stands. The controller
writes each step *before* it moves traffic, so a restarted worker resumes from the record and the
gateway is never at a split nobody recorded. Operators do not move traffic here: they *request*
pause / resume / abort / promote and the controller acts on the request at its next check.

Every write is one transaction together with its audit row (same table and columns as the
traffic changes). The state revision is left unchanged: rollout bookkeeping alone does not change
what the gateways serve, so it must not make them rebuild their route tables.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from lockgate.control.state import StateDB
from lockgate.control.statedb import Tx
from lockgate.errors import ErrorKind, LockgateError, invalid, not_found
from lockgate.specs import RolloutPlan

PENDING, SHADOW, RUNNING, PAUSED = "pending", "shadow", "running", "paused"
PROMOTED, ROLLED_BACK, ABORTED = "promoted", "rolled_back", "aborted"
ACTIVE = (PENDING, SHADOW, RUNNING, PAUSED)
FINAL = (PROMOTED, ROLLED_BACK, ABORTED)
PAUSE, RESUME, ABORT, PROMOTE = "pause", "resume", "abort", "promote"
ACTIONS = (PAUSE, RESUME, ABORT, PROMOTE)
CHAMPION, CHALLENGER = "champion", "challenger"

_COLUMNS = (
    "id, endpoint, model, candidate, champion, plan, status, step, weight, requested, "
    "requested_by, ending, reason, history, created, updated"
)


_NAMES = tuple(c.strip() for c in _COLUMNS.split(","))
_ALIAS = "SELECT model, version FROM aliases WHERE endpoint = ? AND alias = ?"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _dumps(doc: Any) -> bytes | None:
    return None if doc is None else orjson.dumps(doc)


@dataclass(frozen=True, slots=True)
class Rollout:
    """One rollout record; `step` is -1 until the first traffic step is written."""

    id: str
    endpoint: str
    model: str
    candidate: str
    champion: str | None
    plan: RolloutPlan
    status: str
    step: int
    weight: float
    requested: str | None
    requested_by: str | None
    ending: str | None  # the final status the controller committed to, before acting on it
    reason: str | None
    history: tuple[dict[str, Any], ...]
    created: str
    updated: str

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def target(self) -> str:
        return f"{self.endpoint}/{self.id}"

    def to_json(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["plan"] = self.plan.to_doc()
        doc["history"] = list(self.history)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Rollout:
        """The record from its `to_json()` (the admin API's answers may carry more keys)."""
        values = {name: doc[name] for name in _NAMES}
        values["plan"] = RolloutPlan.from_doc(doc["plan"])
        values["history"] = tuple(doc["history"])
        return cls(**values)

    def summary(self) -> dict[str, Any]:
        """What the audit log records before and after a change."""
        keys = ("status", "step", "weight", "requested", "ending", "reason")
        return {k: getattr(self, k) for k in keys}


def _conflict(message: str) -> LockgateError:
    return LockgateError(ErrorKind.CONFLICT, message)


def check_request(rollout: Rollout, action: str) -> str | None:
    """The `requested` value after operator `action`, or CONFLICT naming why it is refused."""
    if action not in ACTIONS:
        raise invalid(f"unknown rollout action {action!r}: use {', '.join(ACTIONS)}")
    rid, status, requested = rollout.id, rollout.status, rollout.requested
    if not rollout.active:
        raise _conflict(f"rollout {rid} has already ended: {status}")
    if rollout.ending is not None:
        raise _conflict(f"rollout {rid} is already ending ({rollout.ending}): {rollout.reason}")
    if requested == action:
        raise _conflict(f"{action} of rollout {rid} is already requested by {rollout.requested_by}")
    if requested == ABORT or (requested == PROMOTE and action != ABORT):
        raise _conflict(f"rollout {rid} has a pending {requested} request: it cannot {action}")
    if action == PAUSE:
        if status == PAUSED:
            raise _conflict(f"rollout {rid} is already paused")
        if status != RUNNING:
            raise _conflict(f"only a running rollout can be paused; {rid} is {status}")
    elif action == RESUME:
        if status == RUNNING and requested == PAUSE:
            return None  # the pause has not been acted on yet: withdraw it
        if status != PAUSED:
            raise _conflict(f"rollout {rid} is not paused (it is {status})")
    elif action == PROMOTE and status not in (RUNNING, PAUSED):
        raise _conflict(f"rollout {rid} is {status}: there is no canary to promote yet")
    return action


class RolloutStore(StateDB):
    """Thread-safe access to the rollout and alias tables; each thread has its own connection.
    `url` as for StateStore: the rollouts live in the same database as the traffic state."""

    def __init__(self, home: Path, url: str | None = None) -> None:
        super().__init__(home, url)

    # -- reading ------------------------------------------------------------------------------
    @staticmethod
    def _row(row: tuple[Any, ...]) -> Rollout:
        doc = dict(zip(_NAMES, row, strict=True))
        doc["plan"], doc["history"] = orjson.loads(doc["plan"]), orjson.loads(doc["history"])
        return Rollout.from_json(doc)

    def _get(self, db: Tx, rollout_id: str) -> Rollout:
        row = db.execute(f"SELECT {_COLUMNS} FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        if row is None:
            raise not_found(f"unknown rollout {rollout_id!r}")
        return self._row(row)

    def get(self, rollout_id: str) -> Rollout:
        return self._get(self._db, rollout_id)

    def rollouts(self, endpoint: str | None = None, limit: int = 100) -> list[Rollout]:
        """Rollouts, newest first (of one endpoint when given)."""
        where, args = ("WHERE endpoint = ?", (endpoint,)) if endpoint else ("", ())
        query = f"SELECT {_COLUMNS} FROM rollouts {where} ORDER BY rowid DESC LIMIT ?"
        return [self._row(r) for r in self._db.execute(query, (*args, limit))]

    def active(self, endpoint: str | None = None) -> list[Rollout]:
        """Rollouts not yet ended (at most one per endpoint), for a restarted worker."""
        return [r for r in self.rollouts(endpoint, limit=10_000) if r.active]

    def alias(self, endpoint: str, alias: str) -> tuple[str, str] | None:
        """(model, version) the alias names, or None."""
        return self._alias_in(self._db, endpoint, alias)

    @staticmethod
    def _alias_in(db: Tx, endpoint: str, alias: str) -> tuple[str, str] | None:
        row = db.execute(_ALIAS, (endpoint, alias)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def aliases(self, endpoint: str) -> dict[str, dict[str, str]]:
        """{alias: {model, version, updated}} of one endpoint, as they are now."""
        rows = self._db.execute(
            "SELECT alias, model, version, updated FROM aliases WHERE endpoint = ?", (endpoint,)
        )
        return {a: {"model": m, "version": v, "updated": u} for a, m, v, u in rows}

    # -- writing ------------------------------------------------------------------------------
    @staticmethod
    def _audit(db: Tx, actor: str, action: str, target: str, b: Any, a: Any) -> None:
        (revision,) = db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        db.execute(
            "INSERT INTO audit (at, actor, action, target, before, after, revision) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (_now(), actor, action, target, _dumps(b), _dumps(a), revision),
        )

    def _set_alias(self, db: Tx, actor: str, endpoint: str, alias: str, to: Any) -> None:
        """Point (or, with `to` None, drop) an alias, audited, inside the caller's transaction."""
        row = db.execute(_ALIAS, (endpoint, alias)).fetchone()
        before = None if row is None else {"model": row[0], "version": row[1]}
        if before == to:
            return
        if to is None:
            db.execute("DELETE FROM aliases WHERE endpoint = ? AND alias = ?", (endpoint, alias))
        else:
            db.execute(
                "INSERT INTO aliases (endpoint, alias, model, version, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (endpoint, alias) DO UPDATE SET "
                "model = excluded.model, version = excluded.version, updated = excluded.updated",
                (endpoint, alias, to["model"], to["version"], _now()),
            )
        action = "alias.set" if to is not None else "alias.delete"
        self._audit(db, actor, action, f"{endpoint}/{alias}", before, to)

    def set_alias(
        self, endpoint: str, alias: str, model: str, version: str, *, actor: str = "retrain"
    ) -> None:
        with self._transaction() as db:
            self._set_alias(db, actor, endpoint, alias, {"model": model, "version": str(version)})

    def start(
        self,
        endpoint: str,
        model: str,
        candidate: str,
        champion: str | None,
        plan: RolloutPlan,
        *,
        actor: str = "retrain",
    ) -> str:
        """Record a pending rollout and the challenger alias; CONFLICT if the endpoint already
        has an active rollout. Returns the rollout id."""
        rid = "r-" + uuid.uuid4().hex[:10]
        now = _now()
        with self._transaction() as db:
            row = db.execute(
                f"SELECT id, status FROM rollouts WHERE endpoint = ? AND status IN {ACTIVE!r}",
                (endpoint,),
            ).fetchone()
            if row is not None:
                raise _conflict(f"endpoint {endpoint!r} already has rollout {row[0]} ({row[1]})")
            champion = None if champion is None else str(champion)
            r = Rollout(
                rid, endpoint, model, str(candidate), champion, plan, PENDING, -1, 0.0,
                None, None, None, None, (), now, now,
            )  # fmt: skip
            doc = {**r.to_json(), "plan": orjson.dumps(plan.to_doc()), "history": b"[]"}
            db.execute(
                f"INSERT INTO rollouts ({_COLUMNS}) VALUES ({', '.join('?' * len(_NAMES))})",
                [doc[n] for n in _NAMES],
            )
            after = {**r.summary(), "model": model, "candidate": r.candidate}
            after.update(champion=champion, plan=plan.to_doc())
            self._audit(db, actor, "rollout.start", r.target, None, after)
            for alias, version in ((CHALLENGER, r.candidate), (CHAMPION, champion)):
                if version is None or (alias == CHAMPION and self._alias_in(db, endpoint, alias)):
                    continue  # an existing champion stays until a promotion moves it
                self._set_alias(db, actor, endpoint, alias, {"model": model, "version": version})
        return rid

    def _update(
        self,
        rollout_id: str,
        actor: str,
        action: str,
        change: Callable[[Rollout], dict[str, Any]],
        entry: dict[str, Any] | None = None,
    ) -> Rollout:
        """Read, change and write one record with its audit row, in one transaction."""
        with self._transaction() as db:
            before = self._get(db, rollout_id)
            after = replace(before, **change(before), updated=_now())
            history = after.history
            if entry is not None:
                entry = {"at": after.updated, "step": after.step, "weight": after.weight, **entry}
                history = (*history, entry)
                after = replace(after, history=history)
            db.execute(
                "UPDATE rollouts SET status = ?, step = ?, weight = ?, requested = ?, "
                "requested_by = ?, ending = ?, reason = ?, history = ?, updated = ? WHERE id = ?",
                (
                    after.status, after.step, after.weight, after.requested, after.requested_by,
                    after.ending, after.reason, orjson.dumps(list(history)), after.updated,
                    rollout_id,
                ),
            )  # fmt: skip
            detail = after.summary() if entry is None else {**after.summary(), "entry": entry}
            self._audit(db, actor, action, after.target, before.summary(), detail)
            if after.status in FINAL and before.status not in FINAL:
                self._move_aliases(db, actor, after)
            return after

    def _move_aliases(self, db: Tx, actor: str, r: Rollout) -> None:
        if r.status == PROMOTED:
            to = {"model": r.model, "version": r.candidate}
            self._set_alias(db, actor, r.endpoint, CHAMPION, to)
        self._set_alias(db, actor, r.endpoint, CHALLENGER, None)

    def request(self, rollout_id: str, action: str, *, actor: str) -> Rollout:
        """An operator's pause/resume/abort/promote, recorded for the controller (audited)."""

        def change(r: Rollout) -> dict[str, Any]:
            requested = check_request(r, action)
            return {"requested": requested, "requested_by": actor if requested else None}

        return self._update(rollout_id, actor, f"rollout.{action}", change)

    def _expect(self, r: Rollout, *statuses: str) -> None:
        if r.status not in statuses:
            raise _conflict(f"rollout {r.id} is {r.status}, expected {' or '.join(statuses)}")

    def enter_shadow(self, rollout_id: str, *, actor: str = "retrain") -> Rollout:
        def change(r: Rollout) -> dict[str, Any]:
            self._expect(r, PENDING, SHADOW)
            return {"status": SHADOW}

        return self._update(rollout_id, actor, "rollout.shadow", change, {"decision": "shadow"})

    def record_step(self, rollout_id: str, step: int, *, actor: str = "retrain") -> Rollout:
        """Write-ahead: the step and its weight, before the controller moves traffic."""

        def change(r: Rollout) -> dict[str, Any]:
            self._expect(r, PENDING, SHADOW, RUNNING)
            if r.ending is not None:
                raise _conflict(f"rollout {r.id} is ending ({r.ending})")
            if not 0 <= step < len(r.plan.steps):
                raise invalid(f"rollout {r.id} has no step {step}")
            return {"status": RUNNING, "step": step, "weight": r.plan.steps[step]}

        return self._update(rollout_id, actor, "rollout.step", change, {"decision": "apply"})

    def acknowledge(self, rollout_id: str, status: str, *, actor: str = "retrain") -> Rollout:
        """The controller acted on a pause (-> paused) or resume (-> running) request."""
        wanted = {PAUSED: PAUSE, RUNNING: RESUME}[status]

        def change(r: Rollout) -> dict[str, Any]:
            if r.requested != wanted:
                raise _conflict(f"rollout {r.id} has no {wanted} request")
            return {"status": status, "requested": None, "requested_by": None}

        entry = {"decision": f"{wanted}d"}  # paused / resumed
        return self._update(rollout_id, actor, f"rollout.{status}", change, entry)

    def note(
        self, rollout_id: str, decision: str, analysis: Any = None, *, actor: str = "retrain"
    ) -> Rollout:
        """A history entry without a status change (a step's analysis passed, ...)."""
        entry = {"decision": decision, "analysis": analysis}
        return self._update(rollout_id, actor, f"rollout.{decision}", lambda r: {}, entry)

    def decide(
        self,
        rollout_id: str,
        ending: str,
        reason: str,
        analysis: Any = None,
        *,
        actor: str = "retrain",
    ) -> Rollout:
        """Commit to an ending before acting on it, so a restart finishes the same ending."""
        if ending not in FINAL:
            raise invalid(f"a rollout ends {', '.join(FINAL)}, not {ending!r}")

        def change(r: Rollout) -> dict[str, Any]:
            if not r.active:
                raise _conflict(f"rollout {r.id} has already ended: {r.status}")
            if r.ending is not None and r.ending != ending:
                raise _conflict(f"rollout {r.id} is already ending {r.ending}")
            return {"ending": ending, "reason": reason}

        entry = {"decision": ending, "reason": reason, "analysis": analysis}
        return self._update(rollout_id, actor, "rollout.decision", change, entry)

    def finish(self, rollout_id: str, *, actor: str = "retrain") -> Rollout:
        """The decided ending is done in traffic: final status, aliases moved."""

        def change(r: Rollout) -> dict[str, Any]:
            if r.ending is None:
                raise _conflict(f"rollout {r.id} has no decided ending")
            weight = 100.0 if r.ending == PROMOTED else 0.0
            return {"status": r.ending, "requested": None, "requested_by": None, "weight": weight}

        rollout = self.get(rollout_id)
        return self._update(rollout_id, actor, f"rollout.{rollout.ending}", change)
