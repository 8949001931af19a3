"""Call the demo classifier with the stock Triton clients, over HTTP and gRPC.

.venv/bin/python examples/client.py [--host localhost] [--http-port 8000] [--grpc-port 8001]
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    args = parser.parse_args()
    rows = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)

    http = httpclient.InferenceServerClient(f"{args.host}:{args.http_port}")
    inp = httpclient.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)  # binary tensor extension by default
    result = http.infer("classifier", [inp])
    print("HTTP  probability:", result.as_numpy("probability").ravel())

    grpc = grpcclient.InferenceServerClient(f"{args.host}:{args.grpc_port}")
    ginp = grpcclient.InferInput("input", list(rows.shape), "FP32")
    ginp.set_data_from_numpy(rows)
    gresult = grpc.infer("classifier", [ginp])
    print("gRPC  probability:", gresult.as_numpy("probability").ravel())
    print(
        "model:",
        grpc.get_model_metadata("classifier").name,
        "version",
        gresult.get_response().model_version,
    )


if __name__ == "__main__":
    main()
