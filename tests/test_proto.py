"""The generated gRPC code is fresh, and our protocol matches the published one field for field
(tritonclient ships code generated from the published grpc_service.proto)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tritonclient.grpc import service_pb2 as published

from lockgate._proto import grpc_service_pb2 as ours

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_proto.py"), "--out", str(tmp_path)], check=True
    )
    generated = tmp_path / "lockgate" / "_proto"
    committed = ROOT / "src" / "lockgate" / "_proto"
    names = sorted(p.name for p in generated.iterdir())
    assert names == sorted(p.name for p in committed.iterdir() if p.suffix in (".py", ".pyi"))
    for name in names:
        assert (generated / name).read_text() == (committed / name).read_text(), (
            f"src/lockgate/_proto/{name} is stale: run `make proto`"
        )


def _fields(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in message.fields:
        kind = f.message_type.full_name if f.message_type else f.type
        out[f.name] = (
            f.number,
            kind,
            f.is_repeated,
            f.containing_oneof and f.containing_oneof.name,
        )
    for nested in message.nested_types:
        out[nested.name] = _fields(nested)
    return out


MESSAGES = sorted(ours.DESCRIPTOR.message_types_by_name)


@pytest.mark.parametrize("name", MESSAGES)
def test_message_matches_the_published_protocol(name: str) -> None:
    assert ours.DESCRIPTOR.package == published.DESCRIPTOR.package == "inference"
    mine = ours.DESCRIPTOR.message_types_by_name[name]
    theirs = published.DESCRIPTOR.message_types_by_name[name]
    assert _fields(mine) == _fields(theirs)


def test_service_methods_match_the_published_protocol() -> None:
    mine = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = published.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert mine.full_name == theirs.full_name
    for method in mine.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            other.input_type.full_name,
            other.output_type.full_name,
        )
