"""How `lockgate rollout status` and `show` describe a rollout from the admin API's answer."""

from __future__ import annotations

from typing import Any

from lockgate.cli_rollout import _aliases, describe
from lockgate.control.rollouts import Rollout
from lockgate.specs import RolloutPlan

PLAN = RolloutPlan(steps=(10, 50, 100))


def answer(status: str, step: int, aliases: dict[str, Any]) -> dict[str, Any]:
    record = Rollout(
        "r-1", "scoring", "fraud", "2", "1", PLAN, status, step, 100.0,
        None, None, None, "every step passed", (), "t0", "t1",
    )  # fmt: skip
    return {**record.to_json(), "aliases": aliases}


def head(doc: dict[str, Any]) -> str:
    return describe(Rollout.from_json(doc), _aliases(doc))[0]


def test_status_names_the_champion_as_it_is_now() -> None:
    promoted = answer("promoted", 2, {"champion": {"model": "fraud", "version": "2"}})
    assert head(promoted) == (
        "r-1  scoring  fraud v2 (champion v2, was v1)  promoted  after step 3/3"
    )
    running = answer("running", 1, {"champion": {"model": "fraud", "version": "1"}})
    assert head(running) == "r-1  scoring  fraud v2 (champion v1)  running  step 2/3 at 100%"
    other_model = answer("running", 1, {"champion": {"model": "legacy", "version": "7"}})
    assert "(champion legacy v7, was v1)" in head(other_model)
    no_aliases = answer("running", 1, {})  # an answer without aliases: the record's champion
    assert "(champion v1)" in head(no_aliases)
