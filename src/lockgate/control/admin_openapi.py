"""The admin API's OpenAPI 3.1 document (served at /openapi.json; a test keeps it and the routes
in step)."""

from __future__ import annotations

from typing import Any

from lockgate import __version__
from lockgate.control.auth import ADMIN, OPERATOR, VIEWER

_ERROR = {"$ref": "#/components/responses/Error"}
_VARIANT = {
    "type": "object",
    "required": ["name", "model", "version"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
        "model": {"type": "string"},
        "version": {"type": ["string", "integer"]},
        "weight": {"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.01},
    },
}
_ENDPOINT = {
    "type": "object",
    "required": ["variants"],
    "properties": {
        "variants": {"type": "array", "minItems": 1, "items": _VARIANT},
        "shadows": {"type": "array", "items": _VARIANT},
    },
    "description": "Variant weights (percent) must sum to 100.",
}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


_FORCE = {
    "force": {
        "type": "boolean",
        "description": "admin only (else 403): go past the gate policy (--ungated-max-percent); "
        "audited as forced",
    },
    "reason": {"type": "string", "description": "why the change is forced (required with force)"},
}


def _forcible(schema: dict[str, Any]) -> dict[str, Any]:
    """A traffic change's body with `force` / `reason`: refused with 409 when it raises a
    version without passed gates above the limit, unless an admin forces it."""
    return {**schema, "properties": {**schema["properties"], **_FORCE}}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


def _op(summary: str, body: dict[str, Any] | None = None, write: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "OK (ETag: the new state revision)"},
            "400": _ERROR,
            "401": _ERROR,
            "404": _ERROR,
        },
    }
    if write:
        op["parameters"] = [{"$ref": "#/components/parameters/IfMatch"}]
        op["responses"] |= {"409": _ERROR, "422": _ERROR}
    if body is not None:
        op["requestBody"] = _body(body)
    return op


def operation_role(path: str, method: str) -> str:
    """The least role an operation needs (control/auth.py): promoting a rollout at once is an
    admin's act; other writes are an operator's; reads a viewer's."""
    if path == "/v1/rollouts/{id}/promote":
        return ADMIN
    return VIEWER if method == "get" else OPERATOR


def _state_roles(paths: dict[str, Any]) -> None:
    for path, item in paths.items():
        for method, op in item.items():
            if method == "parameters" or op.get("security") == []:
                continue
            role = operation_role(path, method)
            op["x-lockgate-role"] = role
            op["description"] = f"Needs a token with the role `{role}` or higher."
            op["responses"]["403"] = _ERROR


def openapi_document() -> dict[str, Any]:
    ep = "/v1/endpoints/{name}"
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    version_ref = {"type": ["string", "integer"]}
    paths: dict[str, Any] = {
        "/healthz": {"get": {"summary": "Liveness of the admin listener", "security": []}},
        "/openapi.json": {"get": {"summary": "This document", "security": []}},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text, OpenMetrics or protobuf, by Accept)",
                "security": [],
            }
        },
        "/v1/monitor/snapshot": {
            "get": _op(
                "Every metrics figure of this host (all workers) as msgpack; replicas' snapshots "
                "merge by addition",
                write=False,
            )
        },
        "/v1/state": {
            "get": _op("Endpoints (stored and implicit), pins, serving status", write=False)
        },
        "/v1/audit": {
            "get": {
                **_op("Audit log, newest first", write=False),
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    {"name": "target", "in": "query", "schema": {"type": "string"}},
                ],
            }
        },
        ep: {
            "parameters": [name],
            "get": _op("One endpoint", write=False),
            "put": _op("Create or replace an endpoint", _forcible(_ENDPOINT)),
            "delete": _op("Delete a stored endpoint"),
        },
        ep + "/weights": {
            "parameters": [name],
            "post": _op(
                "Set variant weights",
                _forcible(
                    _obj(
                        ["weights"],
                        weights={"type": "object", "additionalProperties": {"type": "number"}},
                    )
                ),
            ),
        },
        ep + "/switch": {
            "parameters": [name],
            "post": _op(
                "Blue-green switch: 100% to one variant",
                _forcible(_obj(["variant"], variant={"type": "string"})),
            ),
        },
        ep + "/canary": {
            "parameters": [name],
            "post": _op(
                "Start the canary variant (model, version, weight), or ramp the current one "
                "(weight alone)",
                _forcible(
                    _obj(
                        ["weight"],
                        model={"type": "string"},
                        version=version_ref,
                        weight={"type": "number"},
                    )
                ),
            ),
        },
        ep + "/canary/promote": {
            "parameters": [name],
            "post": {
                **_op("Canary takes all traffic"),
                "requestBody": _body(_forcible(_obj([])), required=False),
            },
        },
        ep + "/canary/rollback": {"parameters": [name], "post": _op("Remove the canary")},
        ep + "/shadows": {
            "parameters": [name],
            "post": _op(
                "Add a shadow variant",
                _obj(
                    ["variant", "version"],
                    variant={"type": "string"},
                    model={"type": "string"},
                    version=version_ref,
                ),
            ),
        },
        ep + "/shadows/{variant}": {
            "parameters": [
                name,
                {"name": "variant", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "delete": _op("Remove a shadow variant"),
        },
    }
    model_version = [
        {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}},
        {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}},
    ]
    for action, summary in (("load", "Pin: keep a version loaded"), ("unload", "Unpin a version")):
        paths[f"/v1/models/{{model}}/versions/{{version}}/{action}"] = {
            "parameters": model_version,
            "post": _op(summary),
        }
    for view, summary in (
        ("drift", "Drift report: alert state per feature and the last window (inputs, outputs)"),
        ("sketches", "Raw latency sketches (msgpack), mergeable across replicas by addition"),
        ("recent", "The newest drained predictions, up to 1,000 (?limit=, default 100)"),
    ):
        paths[f"/v1/models/{{model}}/versions/{{version}}/{view}"] = {
            "parameters": model_version,
            "get": _op(summary, write=False),
        }
    version_path = "/v1/models/{model}/versions/{version}"
    paths[version_path] = {
        "parameters": model_version,
        "get": _op(
            "A registered version: schema (with class labels), conversions, warm-up, config",
            write=False,
        ),
    }
    paths[version_path + "/config"] = {
        "parameters": model_version,
        "get": _op("The version's serving configuration", write=False),
        "post": _op(
            "Change keys of the version's serving configuration (audited; gateways reload it)",
            {"type": "object", "minProperties": 1},
            write=False,
        ),
    }
    rollout = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    paths["/v1/rollouts"] = {
        "get": _op(
            "Rollouts, newest first, each with its endpoint's current aliases (?endpoint=, "
            "?limit=)",
            write=False,
        )
    }
    paths["/v1/rollouts/{id}"] = {
        "parameters": [rollout],
        "get": _op("One rollout: steps, analyses, decisions, aliases", write=False),
    }
    for action in ("pause", "resume", "abort", "promote"):
        paths[f"/v1/rollouts/{{id}}/{action}"] = {
            "parameters": [rollout],
            "post": _op(f"Ask the rollout's worker to {action} it (audited)", write=False),
        }
    _state_roles(paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "lockgate admin API", "version": __version__},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "parameters": {
                "IfMatch": {
                    "name": "If-Match",
                    "in": "header",
                    "description": "The state revision the change is based on; stale -> 409",
                    "schema": {"type": "string"},
                }
            },
            "responses": {
                "Error": {
                    "description": "Error",
                    "content": {
                        "application/json": {"schema": _obj(["error"], error={"type": "string"})}
                    },
                }
            },
        },
    }
