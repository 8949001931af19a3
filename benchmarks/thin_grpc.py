"""The thinnest gRPC server for one ONNX model: the baseline for lockgate's gRPC path.

`inference.GRPCInferenceService/ModelInfer` only, on grpc.aio with lockgate's generated messages:
np.frombuffer on raw_input_contents, session.run, raw_output_contents out. No validation,
batching, routing or deadlines; session options as lockgate's runner.

    python benchmarks/thin_grpc.py --model PATH.onnx --port N [--intra-op-threads 1]
"""

from __future__ import annotations

import argparse
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import uvloop

from lockgate._proto import grpc_service_pb2 as pb
from lockgate.config import RunnerConfig, default_intra_op_threads
from lockgate.serve.runner import session_options
from lockgate.serve.transport.tensors import NUMERIC_DTYPES, datatype_of

SERVICE = "inference.GRPCInferenceService"


def make_session(path: str, intra_op_threads: int) -> ort.InferenceSession:
    """With exactly the options of lockgate's runner."""
    options = session_options(RunnerConfig(intra_op_threads=intra_op_threads))
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def handler(session: ort.InferenceSession) -> grpc.GenericRpcHandler:
    output_names = [o.name for o in session.get_outputs()]

    async def model_infer(request: Any, context: grpc.aio.ServicerContext) -> Any:
        feeds = {
            t.name: np.frombuffer(raw, dtype=NUMERIC_DTYPES[t.datatype]).reshape(tuple(t.shape))
            for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        results: list[Any] = session.run(output_names, feeds)
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        for name, arr in zip(output_names, results, strict=True):
            response.outputs.add(name=name, datatype=datatype_of(arr.dtype), shape=arr.shape)
            response.raw_output_contents.append(arr.tobytes())
        return response

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                model_infer,
                request_deserializer=pb.ModelInferRequest.FromString,
                response_serializer=pb.ModelInferResponse.SerializeToString,
            )
        },
    )


async def serve(model: str, host: str, port: int, intra_op_threads: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(make_session(model, intra_op_threads)),))
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise SystemExit(f"cannot listen on {host}:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the .onnx file")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--intra-op-threads", type=int, default=default_intra_op_threads())
    args = parser.parse_args()
    uvloop.run(serve(args.model, args.host, args.port, args.intra_op_threads))


if __name__ == "__main__":
    main()
