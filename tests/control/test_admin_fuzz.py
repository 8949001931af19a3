"""The admin API's parameters against hostile values: If-Match, limit and the other query
parameters, path parameters, tokens and bodies, on every route of a real gateway's admin listener
(its own home and state database). The answer is a success or a client error with a JSON body
that names it; never a 5xx, and the listener keeps answering."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from lockgate.control.registry import Registry
from tests.conftest import RunningGateway, loopback_config
from tests.serve.transport.strategies import fuzz_settings, json_values

TOKEN = "fuzz-token-0123456789abcdef"
ROUTES = [  # (method, path template): every admin route, and a few that are not
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/v1/state"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/endpoints/{a}"),
    ("PUT", "/v1/endpoints/{a}"),
    ("DELETE", "/v1/endpoints/{a}"),
    ("POST", "/v1/endpoints/{a}/weights"),
    ("POST", "/v1/endpoints/{a}/switch"),
    ("POST", "/v1/endpoints/{a}/canary"),
    ("POST", "/v1/endpoints/{a}/canary/promote"),
    ("POST", "/v1/endpoints/{a}/canary/rollback"),
    ("POST", "/v1/endpoints/{a}/shadows"),
    ("DELETE", "/v1/endpoints/{a}/shadows/{b}"),
    ("GET", "/v1/models/{a}/versions/{b}/drift"),
    ("GET", "/v1/models/{a}/versions/{b}/sketches"),
    ("GET", "/v1/models/{a}/versions/{b}/recent"),
    ("POST", "/v1/models/{a}/versions/{b}/load"),
    ("POST", "/v1/models/{a}/versions/{b}/unload"),
    ("GET", "/v1/rollouts"),
    ("GET", "/v1/rollouts/{a}"),
    ("POST", "/v1/rollouts/{a}/pause"),
    ("PATCH", "/v1/state"),
    ("GET", "/v1/nothing/{a}"),
]
# Header values: printable ASCII and obs-text (what HTTP/1.1 can carry), no edge whitespace.
header_text = st.binary(min_size=1, max_size=24).map(
    lambda b: bytes(c if 0x21 <= c <= 0x7E or c >= 0x80 else 0x41 for c in b)
)
if_match = st.one_of(
    st.none(),
    st.sampled_from(
        [b"*", b'"0"', b'"1"', b'W/"1"', b'""', b'"-1"', b'"\xc2\xb2"', b'"1e3"', b'"+2"']
    ),
    st.just(b'"' + b"9" * 40 + b'"'),
    header_text,
)
query_values = st.one_of(
    st.sampled_from(["0", "1", "100", "10000", "10001", "-1", "²", "1.5", "", "٣", "9" * 40]),
    st.text(max_size=12),
)
path_values = st.one_of(
    st.sampled_from(["classifier", "1", "2", "champion", "default", "..", "%", "a b"]),
    st.text(min_size=1, max_size=12),
)
bodies = st.one_of(
    st.none(),
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "variants": json_values,
            "weights": st.one_of(st.dictionaries(st.text(max_size=6), json_values), json_values),
            "variant": json_values,
            "model": st.sampled_from(["classifier", "nope", ""]),
            "version": st.one_of(st.sampled_from(["1", "2", "99", ""]), json_values),
            "weight": json_values,
        },
    ),
)


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory, demo_home: Path) -> Iterator[httpx.Client]:
    """A gateway on its own home (classifier v1 and v2), admin API behind a token."""
    home = tmp_path_factory.mktemp("admin-fuzz")
    registry = Registry(home)
    model = Registry(demo_home).get("classifier", "1").model_path
    for _ in range(2):
        shutil.copy(model, home / "classifier.onnx")
        registry.register(home / "classifier.onnx", "classifier")
    config = loopback_config(home, admin_tokens=((TOKEN, "fuzz"),))
    with (
        RunningGateway(config, registry) as gw,
        httpx.Client(base_url=f"http://{gw.admin}", timeout=30) as client,
    ):
        yield client


@fuzz_settings(400, seconds=10)
@given(
    route=st.sampled_from(ROUTES),
    a=path_values,
    b=path_values,
    match=if_match,
    limit=st.one_of(st.none(), query_values),
    other=st.one_of(st.none(), query_values),
    token=st.sampled_from([TOKEN] * 8 + [None, "wrong"]),
    body=bodies,
)
@example(  # '²'.isdigit() is true, int('²') raises
    route=("GET", "/v1/rollouts"), a="x", b="x", match=None, limit="²", other=None,
    token=TOKEN, body=None,
)  # fmt: skip
@example(
    route=("PUT", "/v1/endpoints/{a}"), a="classifier", b="x", match=b'"\xc2\xb2"', limit=None,
    other=None, token=TOKEN, body={"variants": []},
)  # fmt: skip
def test_admin_parameters(
    admin: httpx.Client,
    route: tuple[str, str],
    a: str,
    b: str,
    match: bytes | None,
    limit: str | None,
    other: str | None,
    token: str | None,
    body: Any,
) -> None:
    method, template = route
    path = template.format(a=quote(a, safe=""), b=quote(b, safe=""))
    headers = {"authorization": f"Bearer {token}".encode()} if token else {}
    if match is not None:
        headers["if-match"] = match
    params = {k: v for k, v in {"limit": limit, "target": other, "endpoint": other}.items() if v}
    if other is not None:
        params["name[]"] = other
    content = None if body is None else httpx.Request("POST", "/", json=body).read()
    r = admin.request(method, path, params=params, headers=headers, content=content)
    event(f"HTTP {r.status_code}")  # the spread: --hypothesis-show-statistics
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.headers["content-type"] == "application/json" and r.json()["error"]
    assert admin.get("/healthz").status_code == 200
