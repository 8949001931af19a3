"""Open Inference Protocol over gRPC (grpc.aio, on the gateway's event loop) with Triton's
extensions (model configuration, statistics, model repository, streaming): the servicer. The
server around it (handler table, health service, TLS) is in grpc_server.py. Both transports call
the same data plane."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format

from lockgate._proto import grpc_service_pb2 as pb
from lockgate._proto import model_config_pb2 as mc
from lockgate.config import MAX_REQUEST_ELEMENTS
from lockgate.errors import ErrorKind, LockgateError
from lockgate.serve.transport import protobuf_codec, triton
from lockgate.serve.transport.client_keys import INFER, READ, ClientKeys
from lockgate.types import (
    InferencePipeline,
    InferRequest,
    InferResponse,
    ModelSpec,
    Parameters,
    RepositoryControl,
)

log = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
ROUTING_KEY_METADATA = "x-lockgate-key"
AUTHORIZATION_METADATA = "authorization"
# Requests of one ModelStreamInfer call running at once; the stream reads no further meanwhile.
STREAM_WINDOW = 64

STATUS = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNSUPPORTED_MEDIA: grpc.StatusCode.INVALID_ARGUMENT,  # gRPC has one encoding
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.CONFLICT: grpc.StatusCode.ABORTED,
    ErrorKind.UNAUTHORIZED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.UNPROCESSABLE: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.MODEL_FAILED: grpc.StatusCode.INTERNAL,
}


class InferenceService:
    def __init__(
        self,
        pipeline: InferencePipeline,
        max_request_elements: int = MAX_REQUEST_ELEMENTS,
        repository: RepositoryControl | None = None,
        clients: ClientKeys | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.max_elements = max_request_elements
        self.repository = repository
        self.clients = clients if clients is not None and clients.enabled else None

    def _client(self, context: grpc.aio.ServicerContext, scope: str) -> str:
        """The caller's API key name (metadata `authorization: Bearer KEY`), when keys are
        configured; UNAUTHENTICATED or PERMISSION_DENIED otherwise."""
        if self.clients is None:
            return ""
        return self.clients.client(_metadata(context, AUTHORIZATION_METADATA), scope)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.pipeline.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        ready = self.pipeline.model_ready(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        p = self.pipeline
        return pb.ServerMetadataResponse(
            name=p.server_name, version=p.server_version, extensions=p.extensions
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        self._client(context, READ)
        spec = self.pipeline.model_spec(request.name, request.version or None)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name,  # as asked, like HTTP: clients infer on the name they are given
            versions=self.pipeline.model_versions(request.name),
            platform=spec.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in spec.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in spec.outputs],
        )

    async def ModelInfer(self, body: bytes, context: grpc.aio.ServicerContext) -> Any:
        received = time.perf_counter_ns()
        # The request arrives as bytes so that a malformed message is INVALID_ARGUMENT, not the
        # INTERNAL that grpc reports for a failing deserializer.
        msg = protobuf_codec.parse_request(body)
        remaining = context.time_remaining()
        routing_key = authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == ROUTING_KEY_METADATA and isinstance(value, str) and value:
                routing_key = value
            elif key == AUTHORIZATION_METADATA and isinstance(value, str):
                authorization = value
        try:  # the key, then admission, before decoding: a refusal must cost little
            client = self.clients.client(authorization, INFER) if self.clients else ""
            deadline = None if remaining is None else time.monotonic() + remaining
            spec = self.pipeline.admit(msg.model_name, msg.model_version or None, deadline)
        except LockgateError as exc:
            self.pipeline.count_failure(msg.model_name, "grpc", exc.kind.value)
            raise
        try:
            _, response = await self._admitted(msg, received, remaining, routing_key, client, spec)
        finally:
            self.pipeline.release()
        return protobuf_codec.encode_response(response)

    async def _admitted(
        self,
        msg: Any,
        received: int,
        remaining: float | None,
        routing_key: str | None,
        client: str,
        spec: ModelSpec | None,
    ) -> tuple[InferRequest, InferResponse]:
        """Decode, infer and classify a request admitted by `pipeline.admit` (which found
        `spec`, or None: look it up)."""
        try:
            if spec is None:
                spec = self.pipeline.model_spec(msg.model_name, msg.model_version or None)
            request = protobuf_codec.decode_request(
                msg, remaining, spec, max_elements=self.max_elements
            )
            request.protocol, request.received_ns, request.alone = "grpc", received, True
            request.routing_key, request.client = routing_key, client
        except LockgateError as exc:  # infer counts its own outcomes; these never reach it
            self.pipeline.count_failure(msg.model_name, "grpc", exc.kind.value)
            raise
        try:
            response = await self.pipeline.infer(request)
        except LockgateError:
            raise
        except Exception:
            self.pipeline.count_failure(msg.model_name, "grpc", "internal")
            raise
        if request.outputs:
            triton.classify(self.pipeline, request, response)
        return request, response

    # -- Triton's extensions ------------------------------------------------------------------
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        self._client(context, READ)
        served = self.pipeline.served_config(request.name, request.version or None)
        config = json_format.ParseDict(triton.config_doc(request.name, served), mc.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        self._client(context, READ)
        stats = self.pipeline.statistics(request.name or None, request.version or None)
        return json_format.ParseDict(triton.statistics_doc(stats), pb.ModelStatisticsResponse())

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        self._client(context, READ)
        entry = pb.RepositoryIndexResponse.ModelIndex
        index = triton.index_doc(self.pipeline.repository_index(), request.ready)
        return pb.RepositoryIndexResponse(models=[entry(**e) for e in index])

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        control, actor = self._control(context)
        version = triton.load_version(_repository_parameters(request.parameters))
        await control.load(request.model_name, version, actor)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        control, actor = self._control(context)
        version = triton.load_version(_repository_parameters(request.parameters))
        await control.unload(request.model_name, version, actor)
        return pb.RepositoryModelUnloadResponse()

    def _control(self, context: grpc.aio.ServicerContext) -> tuple[RepositoryControl, str]:
        if self.repository is None:
            raise LockgateError(ErrorKind.UNAVAILABLE, "model control is not available here")
        authorization = _metadata(context, "authorization")
        return self.repository, self.repository.actor(authorization, _peer_host(context.peer()))

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """A stream of infer requests, answered in their order (as Triton does for models that
        answer each request once); up to STREAM_WINDOW run at once. A request that fails is
        answered with its error message and the stream goes on."""
        try:
            client = self._client(context, INFER)  # once for the whole stream
        except LockgateError as exc:
            await context.abort(STATUS[exc.kind], exc.message)
        routing_key = _metadata(context, ROUTING_KEY_METADATA) or None
        window: asyncio.Queue[asyncio.Task[Any] | None] = asyncio.Queue(STREAM_WINDOW)

        async def read() -> None:
            try:
                async for body in requests:
                    one = self._stream_one(body, routing_key, client, context.time_remaining())
                    await window.put(asyncio.ensure_future(one))
            finally:
                await window.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (task := await window.get()) is not None:
                yield await task
            await reader  # the client's half of the stream ended, or its error
        finally:
            reader.cancel()
            while not window.empty():
                left = window.get_nowait()
                if left is not None:
                    left.cancel()

    async def _stream_one(
        self, body: bytes, routing_key: str | None, client: str, remaining: Any
    ) -> Any:
        """ModelInfer for one message of a stream, its errors answered in the stream."""
        received = time.perf_counter_ns()
        model = request_id = ""
        try:
            msg = protobuf_codec.parse_request(body)
            model, request_id = msg.model_name, msg.id
            version = msg.model_version or None
            try:
                deadline = None if remaining is None else time.monotonic() + remaining
                spec = self.pipeline.admit(model, version, deadline)
            except LockgateError as exc:
                self.pipeline.count_failure(model, "grpc", exc.kind.value)
                raise
            try:
                request, response = await self._admitted(
                    msg, received, remaining, routing_key, client, spec
                )
            finally:
                self.pipeline.release()
            if request.parameters.get("triton_enable_empty_final_response") is True:
                response.parameters["triton_final_response"] = True  # this one is the last
            return pb.ModelStreamInferResponse(
                infer_response=protobuf_codec.encode_response(response)
            )
        except LockgateError as exc:
            message = exc.message
        except Exception:  # counted by `_admitted`, where anything unexpected happens
            log.exception("unexpected error in a gRPC ModelStreamInfer request")
            message = "internal server error"
        failed = pb.ModelInferResponse(model_name=model, id=request_id)
        return pb.ModelStreamInferResponse(error_message=message, infer_response=failed)


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str):
            return value
    return None


def _peer_host(peer: str) -> str | None:
    """The address in a gRPC peer string (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`)."""
    kind, _, address = urllib.parse.unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    return address.rpartition(":")[0].strip("[]")


def _repository_parameters(params: Any) -> Parameters:
    out: Parameters = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if which == "bytes_param":
            out[key] = param.bytes_param.decode("latin-1")
        elif which is not None:
            out[key] = getattr(param, which)
    return out
