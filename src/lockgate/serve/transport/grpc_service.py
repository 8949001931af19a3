"""Open Inference Protocol over gRPC (grpc.aio, on the gateway's event loop) with Triton's
extensions (model configuration, statistics, model repository, streaming), plus the standard
`grpc.health.v1.Health` service. Both transports call the same data plane."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lockgate._proto import grpc_service_pb2 as pb
from lockgate._proto import model_config_pb2 as mc
from lockgate.config import MAX_REQUEST_ELEMENTS, TLSConfig
from lockgate.errors import ErrorKind, LockgateError
from lockgate.serve.transport import protobuf_codec, triton
from lockgate.serve.transport.client_keys import INFER, READ, ClientKeys
from lockgate.types import (
    InferencePipeline,
    InferRequest,
    InferResponse,
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

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _guarded(handler: Handler) -> Handler:
    """LockgateError -> its status code; anything else is our bug: log once, INTERNAL."""

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(request, context)
        except LockgateError as exc:
            if exc.retry_after is not None:
                context.set_trailing_metadata((("retry-after", f"{exc.retry_after:.3f}"),))
            await context.abort(STATUS[exc.kind], exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unexpected error in gRPC %s", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")

    call.__name__ = handler.__name__
    return call


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
            self.pipeline.admit(msg.model_name, msg.model_version or None, deadline)
        except LockgateError as exc:
            self.pipeline.count_failure(msg.model_name, "grpc", exc.kind.value)
            raise
        try:
            _, response = await self._admitted(msg, received, remaining, routing_key, client)
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
    ) -> tuple[InferRequest, InferResponse]:
        """Decode, infer and classify a request admitted by `pipeline.admit`."""
        try:
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
                self.pipeline.admit(model, version, deadline)
            except LockgateError as exc:
                self.pipeline.count_failure(model, "grpc", exc.kind.value)
                raise
            try:
                request, response = await self._admitted(
                    msg, received, remaining, routing_key, client
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


def _handlers(service: InferenceService) -> grpc.GenericRpcHandler:
    def unary(name: str, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            _guarded(getattr(service, name)),
            request_deserializer=request_type.FromString if request_type else None,
            response_serializer=response_type.SerializeToString,
        )

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ServerLive": unary("ServerLive", pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary("ServerReady", pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": unary("ModelReady", pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": unary(
                "ServerMetadata", pb.ServerMetadataRequest, pb.ServerMetadataResponse
            ),
            "ModelMetadata": unary(
                "ModelMetadata", pb.ModelMetadataRequest, pb.ModelMetadataResponse
            ),
            "ModelInfer": unary("ModelInfer", None, pb.ModelInferResponse),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                service.ModelStreamInfer,
                request_deserializer=None,  # bytes: a malformed message is answered in-stream
                response_serializer=pb.ModelStreamInferResponse.SerializeToString,
            ),
            "ModelConfig": unary("ModelConfig", pb.ModelConfigRequest, pb.ModelConfigResponse),
            "ModelStatistics": unary(
                "ModelStatistics", pb.ModelStatisticsRequest, pb.ModelStatisticsResponse
            ),
            "RepositoryIndex": unary(
                "RepositoryIndex", pb.RepositoryIndexRequest, pb.RepositoryIndexResponse
            ),
            "RepositoryModelLoad": unary(
                "RepositoryModelLoad",
                pb.RepositoryModelLoadRequest,
                pb.RepositoryModelLoadResponse,
            ),
            "RepositoryModelUnload": unary(
                "RepositoryModelUnload",
                pb.RepositoryModelUnloadRequest,
                pb.RepositoryModelUnloadResponse,
            ),
        },
    )


class _Health(health.aio.HealthServicer):  # type: ignore[misc]
    """Health answers from the pipeline's readiness rather than from stored statuses."""

    def __init__(self, pipeline: InferencePipeline) -> None:
        super().__init__()
        self.pipeline = pipeline

    async def Check(self, request: Any, context: Any) -> Any:
        if request.service not in ("", SERVICE):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        status = health_pb2.HealthCheckResponse
        return status(status=status.SERVING if self.pipeline.ready() else status.NOT_SERVING)


def _credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    ca = tls.client_ca.read_bytes() if tls.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def build_grpc_server(
    pipeline: InferencePipeline,
    host: str,
    port: int,
    *,
    max_message_bytes: int,
    reuse_port: bool = False,
    max_connection_age: float | None = None,
    grace_period: float = 0.0,
    tls: TLSConfig | None = None,
    max_request_elements: int = MAX_REQUEST_ELEMENTS,
    repository: RepositoryControl | None = None,
    clients: ClientKeys | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server bound to host:port (0 = ephemeral); returns it and the bound port.
    `reuse_port` lets worker processes share the port (SO_REUSEPORT). With `max_connection_age`
    (seconds) every connection gets a graceful GOAWAY within that age, and its calls then have
    `grace_period` to finish: how a worker's clients move away (see process/handover.py).
    `max_request_elements` bounds the elements an infer request may declare (TOO_LARGE);
    `repository` loads and unloads versions (Triton's model repository extension); with
    `clients` holding keys, infer and the model reads need an API key in the `authorization`
    metadata (health, readiness and server metadata stay open)."""
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", int(reuse_port)),
    ]
    if max_connection_age is not None:
        options.append(("grpc.max_connection_age_ms", int(max_connection_age * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", int(grace_period * 1000)))
    server = grpc.aio.server(options=options)
    service = InferenceService(pipeline, max_request_elements, repository, clients)
    server.add_generic_rpc_handlers((_handlers(service),))
    health_pb2_grpc.add_HealthServicer_to_server(_Health(pipeline), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, _credentials(tls))
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port} for gRPC")
    return server, bound
