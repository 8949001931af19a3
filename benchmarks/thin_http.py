"""The thinnest HTTP server for one ONNX model: the baseline that lockgate's HTTP path is compared
against.

POST /v2/models/{name}/infer takes a KServe V2 JSON body and runs the session once per request:
no validation, no batching, no routing, no deadlines. GET /ceiling returns fixed bytes and so
measures the HTTP stack alone (starlette + uvicorn + httptools + uvloop). The session options
mirror lockgate's runner, so any difference is the gateway, not onnxruntime.

    python benchmarks/thin_http.py --model PATH.onnx --port N [--intra-op-threads 1]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lockgate.config import RunnerConfig, default_intra_op_threads
from lockgate.serve.runner import session_options
from lockgate.serve.transport.tensors import NUMERIC_DTYPES, datatype_of

CEILING = b'{"ceiling":true}'


def make_session(path: str, intra_op_threads: int) -> ort.InferenceSession:
    """With exactly the options of lockgate's runner."""
    options = session_options(RunnerConfig(intra_op_threads=intra_op_threads))
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def build_app(session: ort.InferenceSession) -> Starlette:
    output_names = [o.name for o in session.get_outputs()]

    async def infer(request: Request) -> Response:
        doc = orjson.loads(await request.body())
        feeds = {
            t["name"]: np.asarray(t["data"], dtype=NUMERIC_DTYPES[t["datatype"]]).reshape(
                t["shape"]
            )
            for t in doc["inputs"]
        }
        results: list[Any] = session.run(output_names, feeds)
        outputs = [
            {
                "name": name,
                "datatype": datatype_of(arr.dtype),
                "shape": arr.shape,
                "data": arr.ravel(),
            }
            for name, arr in zip(output_names, results, strict=True)
        ]
        body = {"model_name": request.path_params["model"], "outputs": outputs}
        return Response(
            orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
        )

    async def ceiling(request: Request) -> Response:
        return Response(CEILING, media_type="application/json")

    return Starlette(
        routes=[
            Route("/v2/models/{model}/infer", infer, methods=["POST"]),
            Route("/ceiling", ceiling, methods=["GET"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the .onnx file")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--intra-op-threads", type=int, default=default_intra_op_threads())
    args = parser.parse_args()
    app = build_app(make_session(args.model, args.intra_op_threads))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=2048,
    )


if __name__ == "__main__":
    main()
