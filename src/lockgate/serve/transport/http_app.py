"""Open Inference Protocol REST API (KServe V2 / Triton) on starlette, including the binary tensor
data extension, msgpack bodies and Triton's extensions (model configuration, statistics, model
repository). Errors are `{"error": "..."}` with the status from one table."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lockgate.config import MAX_REQUEST_ELEMENTS
from lockgate.errors import ErrorKind, LockgateError, invalid
from lockgate.serve.transport import codec, triton
from lockgate.serve.transport.client_keys import FEEDBACK, READ, ClientKeys
from lockgate.serve.transport.infer_asgi import InferRoute
from lockgate.types import InferencePipeline, Parameters, RepositoryControl
from lockgate.web import STATUS, BodyBudget, error_body, error_response, is_msgpack, read_body

log = logging.getLogger(__name__)

ROUTING_KEY_HEADER = "x-lockgate-key"
VARIANT_HEADER = "x-lockgate-variant"
CLIENT_SCOPE = "lockgate.client"  # the ASGI scope entry holding the caller's key name
# The challenge of a 401 for a missing or wrong data-plane API key (admin tokens have their own).
API_KEY_CHALLENGE = 'Bearer realm="lockgate"'
ADMIN_CHALLENGE = 'Bearer realm="lockgate-admin"'
Handler = Callable[[Request], Awaitable[Response]]


def _guarded(
    handler: Handler, clients: ClientKeys | None = None, scope: str | None = None
) -> Handler:
    """Expected errors -> their status; anything else is our bug: logged once, 500. With
    `clients` and `scope`, the caller's API key must allow `scope` first (its name goes to
    the handler in `request.scope[CLIENT_SCOPE]`)."""
    checked = clients if clients is not None and clients.enabled and scope else None

    async def run(request: Request) -> Response:
        if checked is not None:
            try:
                authorization = request.headers.get("authorization")
                request.scope[CLIENT_SCOPE] = checked.client(authorization, scope or READ)
            except LockgateError as exc:
                return _refused(request, exc, API_KEY_CHALLENGE)
        try:
            return await handler(request)
        except LockgateError as exc:
            return _refused(request, exc, ADMIN_CHALLENGE)  # load and unload take admin tokens
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.url.path)
            body, media = error_body("internal server error")
            return Response(body, status_code=500, media_type=media)

    return run


def _refused(request: Request, exc: LockgateError, challenge: str) -> Response:
    response = error_response(exc, msgpack_body=is_msgpack(request.headers.get("content-type", "")))
    if exc.kind is ErrorKind.UNAUTHORIZED:
        response.headers["www-authenticate"] = challenge
    return response


def _json(doc: object, status: int = 200) -> Response:
    return Response(codec.dumps(doc), status_code=status, media_type=codec.JSON)


def _options(body: bytes, what: str) -> dict[str, object]:
    """An optional JSON object body (Triton's repository requests may have none)."""
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"malformed JSON body: {exc}") from None
    if not isinstance(doc, dict):
        raise invalid(f"{what} body must be an object")
    return doc


def _parameters(doc: dict[str, object]) -> Parameters:
    raw = doc.get("parameters", {})
    if not isinstance(raw, dict) or not all(
        isinstance(v, bool | int | float | str) for v in raw.values()
    ):
        raise invalid("'parameters' must be an object of bools, numbers and strings")
    return raw


def _no_control() -> RepositoryControl:
    raise LockgateError(ErrorKind.UNAVAILABLE, "model control is not available on this listener")


def build_http_app(
    pipeline: InferencePipeline,
    *,
    max_body_bytes: int,
    max_buffered_bytes: int = 2**28,
    max_request_elements: int = MAX_REQUEST_ELEMENTS,
    repository: RepositoryControl | None = None,
    clients: ClientKeys | None = None,
) -> InferRoute:
    """The REST API: the infer route as bare ASGI in front of starlette for the rest. Bodies
    still arriving share one budget of `max_buffered_bytes` (web.BodyBudget);
    `max_request_elements` bounds the elements an infer request may declare (TOO_LARGE);
    `repository` loads and unloads versions (Triton's model repository extension); with
    `clients` holding keys, infer, feedback and the model reads need an API key (health,
    readiness and server metadata stay open)."""
    budget = BodyBudget(max_buffered_bytes)

    def keyed(handler: Handler, scope: str = READ) -> Handler:
        return _guarded(handler, clients, scope)

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        ok = pipeline.ready()
        return _json({"ready": ok}, 200 if ok else 503)

    async def server_metadata(request: Request) -> Response:
        return _json(
            {
                "name": pipeline.server_name,
                "version": pipeline.server_version,
                "extensions": pipeline.extensions,
            }
        )

    async def model_metadata(request: Request) -> Response:
        name = request.path_params["model"]
        spec = pipeline.model_spec(name, request.path_params.get("version"))
        return _json(
            {
                "name": name,
                "versions": pipeline.model_versions(name),
                "platform": spec.platform,
                "inputs": [
                    {"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in spec.inputs
                ],
                "outputs": [
                    {"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in spec.outputs
                ],
            }
        )

    async def model_ready(request: Request) -> Response:
        ok = pipeline.model_ready(request.path_params["model"], request.path_params.get("version"))
        return _json({"ready": ok}, 200 if ok else 503)

    async def feedback(request: Request) -> Response:
        body = await read_body(request, max_body_bytes, budget)
        labels = codec.decode_feedback(body, request.headers.get("content-type", ""))
        client = request.scope.get(CLIENT_SCOPE, "")
        return _json(await pipeline.feedback(request.path_params["model"], labels, client))

    async def model_config(request: Request) -> Response:
        name, version = request.path_params["model"], request.path_params.get("version")
        return _json(triton.config_doc(name, pipeline.served_config(name, version)))

    async def statistics(request: Request) -> Response:
        name, version = request.path_params.get("model"), request.path_params.get("version")
        return _json(triton.statistics_doc(pipeline.statistics(name, version)))

    async def repository_index(request: Request) -> Response:
        doc = _options(await read_body(request, max_body_bytes, budget), "index")
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise invalid("'ready' must be true or false")
        return _json(triton.index_doc(pipeline.repository_index(), ready))

    async def load(request: Request) -> Response:
        control = repository or _no_control()
        actor = control.actor(request.headers.get("authorization"), _host(request))
        doc = _options(await read_body(request, max_body_bytes, budget), "load")
        version = triton.load_version(_parameters(doc))
        await control.load(request.path_params["model"], version, actor)
        return Response(b"", media_type=codec.JSON)

    async def unload(request: Request) -> Response:
        control = repository or _no_control()
        actor = control.actor(request.headers.get("authorization"), _host(request))
        doc = _options(await read_body(request, max_body_bytes, budget), "unload")
        version = triton.load_version(_parameters(doc))
        await control.unload(request.path_params["model"], version, actor)
        return Response(b"", media_type=codec.JSON)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal server error"
        if status == 404:
            detail = f"no route for {request.method} {request.url.path}"
        body, media = error_body(str(detail))
        return Response(body, status_code=status, media_type=media)

    model_paths = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
    repo = "/v2/repository"
    routes = [
        Route("/v2/health/live", _guarded(live), methods=["GET"]),
        Route("/v2/health/ready", _guarded(ready), methods=["GET"]),
        Route("/v2", _guarded(server_metadata), methods=["GET"]),
        Route("/v2/models/stats", keyed(statistics), methods=["GET"]),
        Route(repo + "/index", keyed(repository_index), methods=["POST"]),
        Route(repo + "/models/{model}/load", _guarded(load), methods=["POST"]),
        Route(repo + "/models/{model}/unload", _guarded(unload), methods=["POST"]),
    ]
    for base in model_paths:
        routes += [
            Route(base, keyed(model_metadata), methods=["GET"]),
            Route(base + "/ready", _guarded(model_ready), methods=["GET"]),
            Route(base + "/config", keyed(model_config), methods=["GET"]),
            Route(base + "/stats", keyed(statistics), methods=["GET"]),
        ]
    routes.append(Route("/v2/models/{model}/feedback", keyed(feedback, FEEDBACK), methods=["POST"]))
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    return InferRoute(pipeline, app, max_body_bytes, STATUS, budget, max_request_elements, clients)


def _host(request: Request) -> str | None:
    return request.client.host if request.client is not None else None
