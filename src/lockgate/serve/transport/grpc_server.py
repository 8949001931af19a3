"""The gRPC server around :class:`InferenceService`: the handler table, errors as status codes,
the standard `grpc.health.v1.Health` service, TLS and the listening socket."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lockgate._proto import grpc_service_pb2 as pb
from lockgate.config import MAX_REQUEST_ELEMENTS, TLSConfig
from lockgate.errors import LockgateError
from lockgate.serve.transport.client_keys import ClientKeys
from lockgate.serve.transport.grpc_service import SERVICE, STATUS, InferenceService
from lockgate.types import InferencePipeline, RepositoryControl

log = logging.getLogger(__name__)
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
