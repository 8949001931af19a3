"""The controller and the data plane in one process, without listeners: a real registry, state
database and onnxruntime sessions; every answer is checked against the model's own function."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from lockgate.config import MonitorConfig
from lockgate.control import traffic
from lockgate.control.registry import Registry
from lockgate.control.state import StateStore
from lockgate.errors import ErrorKind, LockgateError
from lockgate.monitor.metrics import render_metrics
from lockgate.serve.controller import Controller
from lockgate.types import InferRequest, Tensor
from tests import onnx_models
from tests.conftest import catalog, loopback_config


def request(
    model: str, x: np.ndarray, version: str | None = None, **params: object
) -> InferRequest:
    return InferRequest(
        model,
        version,
        "r1",
        [Tensor("x", "FP32", x)],
        parameters=dict(params),  # type: ignore[arg-type]
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    registry = Registry(tmp_path)
    model = onnx_models.scale_model(tmp_path / "scale.onnx")
    registry.register(model, "scale")
    registry.register(model, "scale")
    return tmp_path


@pytest.fixture
async def controller(home: Path) -> AsyncIterator[Controller]:
    config = dataclasses.replace(loopback_config(home), monitor=MonitorConfig(enabled=False))
    ctl = Controller(Registry(home), config, StateStore(home))
    await ctl.start()
    yield ctl
    await ctl.drain(5.0)


def change(home: Path, mutation: traffic.Mutation) -> None:
    StateStore(home).apply(mutation, actor="tests", expected_revision=None)


async def test_an_implicit_endpoint_serves_the_latest_version(controller: Controller) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    answer = await controller.dataplane.infer(request("scale", x))
    assert answer.version == "2"
    np.testing.assert_array_equal(answer.outputs[0].data, 2 * x)
    variant = controller.dataplane.routes.resolve("scale").primary.name
    assert answer.parameters["variant"] == variant
    assert controller.dataplane.requests[("scale", variant, "scale", "2", "http", "ok")] == 1
    assert controller.dataplane.ready()


async def test_every_failure_is_counted_once_with_what_is_known(controller: Controller) -> None:
    plane = controller.dataplane
    with pytest.raises(LockgateError) as unknown:
        await plane.infer(request("nope", np.ones((1, 4), np.float32)))
    assert unknown.value.kind is ErrorKind.NOT_FOUND
    assert plane.requests[("_unknown", "", "", "", "http", "not_found")] == 1
    with pytest.raises(LockgateError) as wrong_shape:
        await plane.infer(request("scale", np.ones((1, 3), np.float32)))
    assert wrong_shape.value.kind is ErrorKind.INVALID and "shape [1, 3]" in str(wrong_shape.value)
    variant = plane.routes.resolve("scale").primary.name
    assert plane.requests[("scale", variant, "scale", "2", "http", "invalid")] == 1
    with pytest.raises(LockgateError) as bad_timeout:
        await plane.infer(request("scale", np.ones((1, 4), np.float32), timeout=-5))
    assert "timeout" in str(bad_timeout.value)
    assert sum(plane.requests.values()) == 3


async def test_an_explicit_version_is_served_even_without_traffic(controller: Controller) -> None:
    pin = traffic.pin("scale", "1", catalog(controller.models.registry))
    change(controller.state.home, pin)
    await controller.apply(controller.state.read())
    x = np.ones((3, 4), np.float32)
    answer = await controller.dataplane.infer(request("scale", x, version="1"))
    assert answer.version == "1" and "variant" not in answer.parameters
    np.testing.assert_array_equal(answer.outputs[0].data, 2 * x)


async def test_a_split_swaps_the_route_table_and_releases_nothing_in_use(
    controller: Controller,
) -> None:
    home = controller.state.home
    cat = catalog(controller.models.registry)
    change(home, traffic.canary("scale", None, "1", 50, cat))
    state = controller.state.read()
    assert await controller.apply(state) == {}
    route = controller.dataplane.routes.resolve("scale")
    assert {v.version: v.weight for v in route.variants} == {"2": 50.0, "1": 50.0}
    assert controller.models.loaded.keys() == {("scale", "1"), ("scale", "2")}
    snap = controller.serving_snapshot()
    assert snap.revision == state.revision and snap.loaded == {("scale", "1"), ("scale", "2")}
    assert sorted(snap.weights.values()) == [50.0, 50.0]
    # sticky keys stay on one variant
    x = np.ones((1, 4), np.float32)
    seen = set()
    for _ in range(5):
        req = request("scale", x)
        req.routing_key = "user-7"
        seen.add((await controller.dataplane.infer(req)).version)
    assert len(seen) == 1


async def test_an_older_state_never_replaces_a_newer_one(controller: Controller) -> None:
    old = controller.state.read()
    change(
        controller.state.home,
        traffic.canary("scale", None, "1", 10, catalog(controller.models.registry)),
    )
    await controller.apply(controller.state.read())
    newer = controller.dataplane.routes
    assert await controller.apply(old) == {}
    assert controller.dataplane.routes is newer


async def test_a_version_that_fails_to_load_keeps_the_previous_route(
    controller: Controller,
) -> None:
    registry = controller.models.registry
    broken = registry.register(onnx_models.scale_model(controller.state.home / "s3.onnx"), "scale")
    broken.model_path.write_bytes(b"damaged")
    await controller.refresh_registry()
    change(controller.state.home, traffic.canary("scale", None, "3", 20, catalog(registry)))
    failures = await controller.apply(controller.state.read())
    assert ("scale", "3") in failures and "checksum" in failures[("scale", "3")]
    route = controller.dataplane.routes.resolve("scale")
    assert [v.version for v in route.variants] == ["2"]  # the serving route stays
    status = await controller.serving_status()
    assert status["failed"][0]["version"] == "3"


async def test_shutdown_turns_readiness_off_then_refuses(controller: Controller) -> None:
    plane = controller.dataplane
    controller.begin_shutdown()
    assert not plane.ready()
    x = np.ones((1, 4), np.float32)
    assert (await plane.infer(request("scale", x))).version == "2"  # still answering
    assert await controller.drain(5.0)
    with pytest.raises(LockgateError) as refused:
        await plane.infer(request("scale", x))
    assert refused.value.kind is ErrorKind.UNAVAILABLE


async def test_a_variant_that_cannot_load_has_its_share_served_by_the_others(home: Path) -> None:
    """A restarted gateway whose canary version is damaged serves every request from the
    stable variant, and says so (status, metrics) instead of failing the canary's share."""
    registry = Registry(home)
    change(home, traffic.canary("scale", None, "1", 30, catalog(registry)))
    registry.get("scale", "1").model_path.write_bytes(b"damaged")
    config = dataclasses.replace(loopback_config(home), monitor=MonitorConfig(enabled=False))
    ctl = Controller(Registry(home), config, StateStore(home))
    await ctl.start()
    try:
        x = np.ones((1, 4), np.float32)
        versions = {(await ctl.dataplane.infer(request("scale", x))).version for _ in range(50)}
        assert versions == {"2"}
        route = ctl.dataplane.routes.resolve("scale")
        assert [(v.version, v.weight) for v in route.variants] == [("2", 100.0)]
        status = await ctl.serving_status()
        assert [(f["variant"], f["version"]) for f in status["fallback"]] == [("canary", "1")]
        snap = ctl.serving_snapshot()
        (fallback,) = snap.fallback
        assert fallback[0] == "scale" and fallback[2:] == ("scale", "1")
        page = render_metrics(snap).decode()
        labels = 'endpoint="scale",model="scale",variant="canary",version="1"'
        assert f"lockgate_variant_fallback{{{labels}}} 1.0" in page
    finally:
        await ctl.drain(5.0)


async def test_requests_are_decoded_against_the_served_schema(controller: Controller) -> None:
    # The transports decode against what admission or `model_spec` gives, and the data plane
    # checks again only what spans inputs when that is the very spec it serves
    # (`validate_inputs`): the served one, which the runner may have adjusted at load.
    dp = controller.dataplane
    served = dp.models.get("scale", "2").spec
    assert dp.model_spec("scale", None) is served
    assert dp.model_spec("scale", "2") is served
    assert dp.admit("scale", None) is served
    dp.release()
    assert dp.admit("no-such-model", None) is None  # left to `infer` to refuse, and count
    dp.release()
