"""The admin API's model-version routes on a real gateway: the version view (labels,
conversions, config) and an audited configuration change that the gateway applies at once."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from lockgate.control.registry import Registry
from lockgate.model_config import ModelConfig
from tests.compat import exports
from tests.conftest import RunningGateway, loopback_config
from tests.waiting import wait_until

TOKEN = "ops-token-0123456789abcdef"


def test_show_a_version_and_change_its_config(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    model, _ = exports.skl_classifier(zipmap=True)
    registry.register(model, "clf")
    config = loopback_config(tmp_path, admin_tokens=((TOKEN, "alice"),))
    with RunningGateway(config, registry) as gw:
        admin = httpx.Client(
            base_url=f"http://{gw.admin}", headers={"authorization": f"Bearer {TOKEN}"}
        )
        view = admin.get("/v1/models/clf/versions/1").json()
        (prob,) = [o for o in view["outputs"] if o["name"] == "output_probability"]
        assert prob["datatype"] == "FP32" and sorted(prob["labels"]) == [0, 1, 2]
        assert view["conversions"] and view["config"] == ModelConfig().to_json()
        assert admin.get("/v1/models/clf/versions/9/config").status_code == 404
        assert httpx.get(f"http://{gw.admin}/v1/models/clf/versions/1").status_code == 401

        refused = admin.post("/v1/models/clf/versions/1/config", json={"sessions": 0})
        assert refused.status_code == 400 and "'sessions'" in refused.json()["error"]
        assert registry.get("clf", "1").config == ModelConfig()  # nothing changed

        before = int(admin.get("/v1/state").json()["revision"])
        changed = admin.post(
            "/v1/models/clf/versions/1/config", json={"batchable": "false", "sessions": 2}
        )
        assert changed.status_code == 200, changed.text
        doc = changed.json()
        assert doc["config"]["sessions"] == 2 and doc["revision"] == before + 1
        assert admin.get("/v1/models/clf/versions/1/config").json()["batchable"] == "false"
        (record,) = admin.get("/v1/audit", params={"target": "clf/1"}).json()["records"]
        assert record["action"] == "model.config" and record["actor"] == "alice"
        assert record["before"]["sessions"] == 1 and record["after"]["sessions"] == 2
        assert gw.gateway is not None
        models = gw.gateway.controller.models
        wait_until(
            lambda: models.loaded[("clf", "1")].runner.sessions == 2, "the reload with 2 sessions"
        )
        assert not models.loaded[("clf", "1")].spec.batchable
        x = np.ones((2, 4), np.float32).tolist()
        answer = httpx.post(
            f"http://{gw.http}/v2/models/clf/infer",
            json={"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 4], "data": x}]},
        )
        assert answer.status_code == 200
        (probs,) = [o for o in answer.json()["outputs"] if o["name"] == "output_probability"]
        assert probs["shape"] == [2, 3] and abs(sum(probs["data"][:3]) - 1) < 1e-5
