"""`POST /v2/models/{m}[/versions/{v}]/infer` as a bare ASGI app.

The infer route is the hot path and the only one: it reads the headers it needs from the ASGI
scope in one pass, the body straight from `receive`, and answers with two `send` calls, skipping
starlette's request objects, middleware and router (together they cost more per request than a
small model does). Every other route goes to the starlette app unchanged. Behaviour and error
bodies are identical to the starlette routes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from lockgate.config import MAX_REQUEST_ELEMENTS
from lockgate.errors import ErrorKind, LockgateError, invalid
from lockgate.serve.transport import codec, compression, triton
from lockgate.serve.transport.client_keys import INFER, ClientKeys
from lockgate.serve.transport.shed import ConnectionBrake, answer_refusal
from lockgate.types import InferencePipeline, InferRequest, ModelSpec
from lockgate.web import (
    BodyBudget,
    check_declared_length,
    digits,
    error_body,
    error_headers,
    is_msgpack,
)

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_WANTED = {
    b"content-type",
    b"content-length",
    b"inference-header-content-length",
    b"accept",
    b"x-lockgate-key",
    b"content-encoding",
    b"accept-encoding",
}
API_KEY_CHALLENGE = (b"www-authenticate", b'Bearer realm="lockgate"')


class InferRoute:
    def __init__(
        self,
        pipeline: InferencePipeline,
        fallback: ASGIApp,
        max_body_bytes: int,
        status: dict[ErrorKind, int],
        budget: BodyBudget,
        max_request_elements: int = MAX_REQUEST_ELEMENTS,
        clients: ClientKeys | None = None,
    ) -> None:
        self.pipeline = pipeline
        # API keys, when any are configured: one dict probe per request (client_keys.py)
        self.clients = clients if clients is not None and clients.enabled else None
        self.fallback = fallback
        self.max_body_bytes = max_body_bytes
        self.status = status
        self.budget = budget
        self.max_elements = max_request_elements
        self.brake = ConnectionBrake()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                model, version = match.group(1), match.group(2)
                # The key, then admission: a refusal is answered before the body is read, and
                # a connection refused for overload is braked (transport/shed.py).
                try:
                    client = self._client(scope) if self.clients is not None else ""
                    spec = self.pipeline.admit(model, version)
                except LockgateError as exc:
                    await self._refuse(scope, send, model, exc)
                    return
                try:
                    await self._infer(scope, receive, send, model, version, client, spec)
                finally:
                    self.pipeline.release()
                return
        await self.fallback(scope, receive, send)

    def _client(self, scope: Scope) -> str:
        """The name of the key the request presents (LockgateError 401/403 otherwise)."""
        assert self.clients is not None
        raw = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        return self.clients.client(None if raw is None else raw.decode("latin-1"), INFER)

    async def _refuse(self, scope: Scope, send: Send, model: str, exc: LockgateError) -> None:
        self.pipeline.count_failure(model, "http", exc.kind.value)
        media = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        msgpack = is_msgpack(media.decode("latin-1"))
        challenge = API_KEY_CHALLENGE if exc.kind is ErrorKind.UNAUTHORIZED else None
        await answer_refusal(send, self.status[exc.kind], exc, msgpack=msgpack, extra=challenge)
        if exc.kind is ErrorKind.OVERLOADED:
            self.brake.refused(send)

    async def _infer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        model: str,
        version: str | None,
        client: str,
        spec: ModelSpec | None,
    ) -> None:
        """`spec`: what admission found the request is for (None: look it up)."""
        received = time.perf_counter_ns()
        headers = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _WANTED
        }
        content_type = headers.get("content-type", "")
        try:
            body, extra = await self._answer(
                receive, headers, model, version, received, client, spec
            )
            status = 200
        except LockgateError as exc:
            body, media = error_body(exc.message, msgpack_body=is_msgpack(content_type))
            status, extra = self.status[exc.kind], {"content-type": media, **error_headers(exc)}
        except Exception:
            self.pipeline.count_failure(model, "http", "internal")
            log.exception("unexpected error serving POST %s", scope["path"])
            body, media = error_body("internal server error")
            status, extra = 500, {"content-type": media}
        raw = [(k.encode(), v.encode()) for k, v in extra.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def _answer(
        self,
        receive: Receive,
        headers: dict[str, str],
        model: str,
        version: str | None,
        received: int,
        client: str,
        spec: ModelSpec | None,
    ) -> tuple[bytes, dict[str, str]]:
        try:
            req = await self._request(receive, headers, model, version, spec)
        except LockgateError as exc:  # infer counts its own outcomes; these never reach it
            self.pipeline.count_failure(model, "http", exc.kind.value)
            raise
        req.received_ns, req.client = received, client
        resp = await self.pipeline.infer(req)
        if req.outputs:
            triton.classify(self.pipeline, req, resp)
        content_type = headers.get("content-type", "")
        as_msgpack = is_msgpack(content_type) or is_msgpack(headers.get("accept", ""))
        out, extra = codec.encode_response(resp, req, msgpack_body=as_msgpack)
        variant = resp.parameters.get("variant")
        if variant is not None:
            extra["x-lockgate-variant"] = str(variant)
        accept_encoding = headers.get("accept-encoding")
        if accept_encoding:
            return compression.encode_response(out, extra, accept_encoding)
        return out, extra

    async def _request(
        self,
        receive: Receive,
        headers: dict[str, str],
        model: str,
        version: str | None,
        spec: ModelSpec | None,
    ) -> InferRequest:
        """Read and decode: everything before the request reaches the data plane."""
        content_type = headers.get("content-type", "")
        codec.media_type(content_type, codec.INFER_MEDIA)  # refused before the body is read
        if spec is None:  # the decoders check inputs against it
            spec = self.pipeline.model_spec(model, version)
        header_length = _header_length(headers.get("inference-header-content-length"))
        body = await self._body(receive, headers.get("content-length"))
        coding = headers.get("content-encoding")
        if coding:
            body = compression.decompress(body, coding, self.max_body_bytes)
        limit = self.max_elements
        if header_length == 0 and body:
            req = codec.decode_raw_input(body, spec, model, version, max_elements=limit)
        else:
            req = codec.decode_request(
                body, content_type, header_length, model, version, spec=spec, max_elements=limit
            )
        req.routing_key = headers.get("x-lockgate-key") or None
        return req

    async def _body(self, receive: Receive, declared: str | None) -> bytes:
        """The body, refusing more than the limit before reading it when the length is known."""
        limit = self.max_body_bytes
        check_declared_length(declared, limit)
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body)
        # More is coming: hold the body's bytes against the process's budget while it does.
        chunks, total = [body], len(body)
        held = max(total, digits(declared, "Content-Length") if declared is not None else 0)
        self.budget.reserve(held)
        try:
            while message.get("more_body", False):
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise invalid("client disconnected before sending the whole body")
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > limit:
                    raise LockgateError(ErrorKind.TOO_LARGE, f"body exceeds the {limit}-byte limit")
                if total > held:
                    self.budget.reserve(total - held)
                    held = total
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            self.budget.release(held)


def _header_length(raw: str | None) -> int | None:
    if raw is None:
        return None
    return digits(raw, "Inference-Header-Content-Length")
