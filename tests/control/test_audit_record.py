"""Audit records for acts that change no served state (a registration, an evaluation), on both
backends: they carry the current revision without bumping it, and the audit log's revisions stay
in order with the changes around them, also when records and changes race."""

from __future__ import annotations

import threading
from pathlib import Path

from lockgate.control.state import Change, Mutation, State, StateStore, Transition
from lockgate.specs import EndpointSpec


def _set(version: str) -> Mutation:
    def mutation(state: State) -> Transition:
        change = Change("endpoint.set", "e", None, {"version": version})
        return Transition({"e": EndpointSpec.implicit("m", version)}, state.pins, change)

    return mutation


def test_a_record_keeps_the_revision(tmp_path: Path, state_url: str | None) -> None:
    store = StateStore(tmp_path, state_url)
    before = store.revision()
    store.apply(_set("1"), actor="ops", expected_revision=None)
    after = {"sha256": "ab" * 32}
    store.record("version.register", "m/2", after, actor="alice")
    assert store.revision() == before + 1
    newest = store.audit(limit=1)[0]
    assert newest["action"] == "version.register" and newest["target"] == "m/2"
    assert newest["actor"] == "alice" and newest["after"] == after and newest["before"] is None
    assert newest["revision"] == before + 1 and newest["role"] is None
    assert store.audit(target="m/2") == [newest]


def test_records_and_changes_interleave_in_revision_order(
    tmp_path: Path, state_url: str | None
) -> None:
    stores = [StateStore(tmp_path, state_url) for _ in range(2)]
    start = stores[0].revision()

    def changes() -> None:
        for i in range(15):
            stores[0].apply(_set(str(i + 1)), actor="ops", expected_revision=None)

    def records() -> None:
        for i in range(15):
            stores[1].record("version.register", f"m/{i}", {"i": i}, actor="retrain")

    threads = [threading.Thread(target=changes), threading.Thread(target=records)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    rows = list(reversed(stores[0].audit(limit=100)))[-30:]  # oldest first
    assert len([r for r in rows if r["action"] == "version.register"]) == 15
    revisions = [r["revision"] for r in rows]
    assert revisions == sorted(revisions)  # monotonic in the log's order
    assert stores[0].revision() == start + 15  # only the changes moved it
    changed = [r["revision"] for r in rows if r["action"] == "endpoint.set"]
    assert changed == list(range(start + 1, start + 16))
