"""Long fuzz runs, bounded in count and time; each stops by itself.

    python loadtests/fuzz.py properties [--scale 50] [--duration 1800]
    python loadtests/fuzz.py live --url http://127.0.0.1:18000 --grpc 127.0.0.1:18001 \\
        [--model classifier --model multi] [--requests 20000] [--duration 600] [--seed 1]

`properties` runs the fuzz suite's properties (tests/serve/transport/test_fuzz*.py and
tests/control/test_admin_fuzz.py) with `--scale` times their examples. `live` mutates valid
requests (built from each model's metadata) and sends them to a running gateway on loopback over
HTTP (JSON, binary extension, raw, msgpack) and gRPC (raw and typed contents): hostile shapes,
swapped datatypes and names, out-of-range numbers, cut data, hostile headers, flipped bytes. A 5xx
other than 503/504, or a gRPC INTERNAL/UNKNOWN, is a failure: it is printed (with the request,
base64) and the run exits 1. Exit 0 when every answer was a success or a client error.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import msgpack
import numpy as np
from common import fail, loopback_target

from lockgate._proto import grpc_service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
SUITE = [
    "tests/serve/transport/test_fuzz.py",
    "tests/serve/transport/test_fuzz_wire.py",
    "tests/control/test_admin_fuzz.py",
]
HUGE = [0, 1, 65, 2**20, 2**26 + 1, 2**27, 2**31, 2**32, 2**62, 2**63 - 1]
DATATYPES = ["BOOL", "INT8", "INT32", "INT64", "UINT8", "UINT64", "FP16", "FP32", "FP64", "BYTES"]
CONTENT_TYPES = [None, "application/json", "application/octet-stream", "application/msgpack",
                 "text/plain", "application/x-www-form-urlencoded"]  # fmt: skip
NUMPY = {"BOOL": "?", "INT8": "i1", "INT32": "<i4", "INT64": "<i8", "UINT8": "u1",
         "UINT64": "<u8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}  # fmt: skip
TYPED = {"BOOL": "bool_contents", "INT8": "int_contents", "INT32": "int_contents",
         "INT64": "int64_contents", "UINT8": "uint_contents", "UINT64": "uint64_contents",
         "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}  # fmt: skip
GRPC_CLIENT = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"}


def properties(args: argparse.Namespace) -> int:
    env = {**os.environ, "LOCKGATE_FUZZ_SCALE": str(args.scale)}
    # -x: the first failure ends the run, so a run stopped by the time bound had none
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SUITE]
    print(f"{' '.join(cmd)}  (LOCKGATE_FUZZ_SCALE={args.scale}, at most {args.duration:.0f} s)")
    try:
        return subprocess.run(cmd, cwd=ROOT, env=env, timeout=args.duration).returncode
    except subprocess.TimeoutExpired:
        print(f"stopped at the {args.duration:.0f} s bound, with no failure before it")
        return 0


# -- live: valid requests from metadata, then mutated -------------------------------------------
def entries_for(meta: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for t in meta["inputs"]:
        shape = [rng.randint(1, 3) if d < 0 else d for d in t["shape"]]
        count = int(np.prod(shape))
        if t["datatype"] == "BYTES":
            data: list[Any] = ["x" * rng.randint(0, 4) for _ in range(count)]
        elif t["datatype"] == "BOOL":
            data = [rng.random() < 0.5 for _ in range(count)]
        elif t["datatype"].startswith(("INT", "UINT")):
            data = [rng.randint(0, 100) for _ in range(count)]
        else:
            data = [rng.uniform(-3, 3) for _ in range(count)]
        out.append({"name": t["name"], "datatype": t["datatype"], "shape": shape, "data": data})
    return out


def mutate(entries: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    out = [dict(e) for e in entries]
    for _ in range(rng.choice([0, 1, 1, 2])):
        e = rng.choice(out)
        what = rng.choice(["shape", "shape", "datatype", "name", "cut", "range"])
        if what == "shape":
            # each dim kept or made hostile; sometimes more dims than numpy has
            hostile = [d if rng.random() < 0.5 else rng.choice(HUGE) for d in e["shape"]]
            e["shape"] = [1] * 65 if rng.random() < 0.1 else hostile
        elif what == "datatype":
            e["datatype"] = rng.choice(DATATYPES)
        elif what == "name":
            e["name"] = rng.choice(["nope", "", e["name"].upper()])
        elif what == "cut":
            e["data"] = e["data"][: rng.randint(0, len(e["data"]))]
        elif e["data"]:
            beyond = rng.choice([1e39, -1e39, 70000, 2**64 - 1, -(2**63) - 1])
            e["data"] = [beyond, *e["data"][1:]]
    return out


def raw(entry: dict[str, Any]) -> bytes:
    if entry["datatype"] == "BYTES":
        items = [str(x).encode() for x in entry["data"]]
        return b"".join(len(b).to_bytes(4, "little") + b for b in items)
    with np.errstate(all="ignore"):  # out-of-range values wrap or become inf: raw bytes are bytes
        return np.asarray(entry["data"]).astype(NUMPY[entry["datatype"]]).tobytes()


def http_request(
    entries: list[dict[str, Any]], form: str, rng: random.Random
) -> tuple[bytes, dict[str, str]]:
    if form == "json":
        body, headers = json.dumps({"inputs": entries}).encode(), {}
    elif form == "raw":
        body, headers = raw(entries[0]), {"inference-header-content-length": "0"}
    elif form == "msgpack":
        inputs = [{**e, "data": raw(e)} for e in entries]
        body, headers = msgpack.packb({"inputs": inputs}), {"content-type": "application/msgpack"}
    else:
        blobs = [raw(e) for e in entries]
        heads = [
            {**{k: v for k, v in e.items() if k != "data"}, "parameters": {"binary_data_size": n}}
            for e, n in zip(entries, map(len, blobs), strict=True)
        ]
        head = json.dumps({"inputs": heads}).encode()
        body = head + b"".join(blobs)
        headers = {"inference-header-content-length": str(len(head))}
    if rng.random() < 0.2:
        content_type = rng.choice(CONTENT_TYPES)
        headers.pop("content-type", None)
        if content_type is not None:
            headers["content-type"] = content_type
    if rng.random() < 0.05:
        headers["inference-header-content-length"] = rng.choice(["-1", "999999", "²", "0"])
    return flip(body, rng), headers


def grpc_request(
    model: str, entries: list[dict[str, Any]], typed: bool, rng: random.Random
) -> bytes:
    msg = pb.ModelInferRequest(model_name=model)
    for e in entries:
        tensor = msg.inputs.add(name=e["name"], datatype=e["datatype"], shape=e["shape"])
        field = TYPED.get(e["datatype"])
        if typed and field is not None:
            values = [str(x).encode() if field == "bytes_contents" else x for x in e["data"]]
            with contextlib.suppress(TypeError, ValueError):  # else the contents stay empty
                getattr(tensor.contents, field).extend(values)
        else:
            msg.raw_input_contents.append(raw(e))
    return flip(msg.SerializeToString(), rng)


def flip(body: bytes, rng: random.Random) -> bytes:
    if body and rng.random() < 0.15:
        at = rng.randrange(len(body))
        body = body[:at] + bytes([body[at] ^ rng.randint(1, 255)]) + body[at + 1 :]
    return body


def live(args: argparse.Namespace) -> int:
    loopback_target(args.url)  # exits unless the URL is a loopback one
    grpc_target = loopback_target(f"http://{args.grpc}") if args.grpc else None
    rng = random.Random(args.seed)
    client = httpx.Client(base_url=args.url, timeout=args.timeout)
    metas = {}
    for model in args.model:
        r = client.get(f"/v2/models/{model}")
        if r.status_code != 200:
            fail(f"GET /v2/models/{model}: {r.status_code} {r.text[:300]}")
        metas[model] = r.json()
    infer = None
    if grpc_target is not None:
        channel = grpc.insecure_channel(f"{grpc_target.host}:{grpc_target.port}")
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    forms = ["json", "binary", "raw", "msgpack"] + (["grpc-raw", "grpc-typed"] if infer else [])
    outcomes: collections.Counter[str] = collections.Counter()
    failures = 0
    started = time.monotonic()
    end = started + args.duration
    sent = 0
    while sent < args.requests and time.monotonic() < end:
        model = rng.choice(args.model)
        form = rng.choice(forms)
        entries = mutate(entries_for(metas[model], rng), rng)
        try:
            if form.startswith("grpc"):
                body, headers = grpc_request(model, entries, form == "grpc-typed", rng), {}
            else:
                body, headers = http_request(entries, form, rng)
        except (ValueError, TypeError, OverflowError):
            continue  # the mutation made data this form cannot encode
        sent += 1
        if infer is not None and form.startswith("grpc"):
            try:
                infer(body, timeout=args.timeout)
                outcome = "grpc OK"
            except grpc.RpcError as exc:
                outcome = f"grpc {exc.code().name}"
            bad = outcome.split()[1] not in GRPC_CLIENT | {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
        else:
            raw_headers = {k: v.encode() for k, v in headers.items()}  # '²' is not ASCII
            r = client.post(f"/v2/models/{model}/infer", content=body, headers=raw_headers)
            outcome = f"http {r.status_code}"
            bad = r.status_code >= 500 and r.status_code not in (503, 504)
        outcomes[outcome] += 1
        if bad:
            failures += 1
            if failures <= 10:
                print(f"FAILURE {outcome} {model} {form} headers={headers} "
                      f"body(base64)={base64.b64encode(body).decode()}")  # fmt: skip
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))
    elapsed = time.monotonic() - started
    print(f"{sent} mutated requests in {elapsed:.0f} s; {summary}; failures: {failures}")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    props = sub.add_parser("properties", help="the fuzz suite with more examples")
    props.add_argument("--scale", type=int, default=50, help="times each property's examples")
    props.add_argument("--duration", type=float, default=1800.0, help="seconds at most")
    run = sub.add_parser("live", help="mutated requests against a running gateway on loopback")
    run.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway's HTTP URL")
    run.add_argument("--grpc", help="the gateway's gRPC HOST:PORT (loopback); none: HTTP only")
    run.add_argument("--model", action="append", help="models to target (repeatable)")
    run.add_argument("--requests", type=int, default=20_000, help="requests at most")
    run.add_argument("--duration", type=float, default=600.0, help="seconds at most")
    run.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    run.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.mode == "properties":
        return properties(args)
    args.model = args.model or ["classifier"]
    return live(args)


if __name__ == "__main__":
    sys.exit(main())
