"""A rollout holds only the server's failures against a variant: a client's malformed
requests (4xx) are neither its requests nor its errors; 5xx, timeouts and shedding are."""

from __future__ import annotations

from lockgate.errors import SERVER_SIDE_OUTCOMES, ErrorKind
from lockgate.retrain.gateway_metrics import parse, window
from lockgate.web import STATUS

LINE = (
    'lockgate_requests_total{endpoint="e",variant="canary",model="m",version="2",'
    'protocol="http",outcome="%s"} %d'
)


def scrape(at: float, counts: dict[str, int]) -> str:
    lines = ["# TYPE lockgate_requests counter"]
    lines += [LINE % (outcome, n) for outcome, n in counts.items()]
    return "\n".join(lines) + "\n"


def test_client_errors_are_not_held_against_the_canary() -> None:
    zero = dict.fromkeys(["ok", "invalid", "not_found", "too_large", "model_failed"], 0)
    zero |= dict.fromkeys(["overloaded", "deadline", "internal"], 0)
    after = {**zero, "ok": 90, "invalid": 500, "not_found": 7, "too_large": 3}
    after |= {"model_failed": 2, "overloaded": 4, "deadline": 1, "internal": 1}
    w = window(parse(scrape(0, zero), at=0), parse(scrape(1, after), at=1), "e")
    canary = w.variant("canary")
    assert canary.errors == 8  # model_failed + overloaded + deadline + internal
    assert canary.requests == 98  # the 90 answered and the 8 the server failed


def test_server_side_outcomes_are_the_5xx_kinds() -> None:
    five_hundreds = {kind.value for kind, status in STATUS.items() if status >= 500}
    assert five_hundreds | {"internal"} == SERVER_SIDE_OUTCOMES
    assert ErrorKind.INVALID.value not in SERVER_SIDE_OUTCOMES
