"""Our model_config.proto is a subset of Triton's published one (tritonclient ships code generated
from it): every message, enum and field we declare has the published name, number and type, so
what we write reads the same to clients compiled from the published file. (grpc_service.proto's
messages are compared whole in tests/test_proto.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as published

from lockgate._proto import model_config_pb2 as ours
from lockgate.config import BatchConfig
from lockgate.serve.transport.triton import DATA_TYPES, config_doc
from lockgate.types import NUMERIC_DTYPES, ModelSpec, ServedConfig, TensorSpec


def _field(f: Any) -> tuple[Any, ...]:
    kind = f.message_type or f.enum_type
    return (
        f.number,
        f.type,
        f.is_repeated,
        kind.full_name if kind else None,
        f.containing_oneof.name if f.containing_oneof else None,
    )


def _messages(descriptor: Any) -> dict[str, Any]:
    out = {}
    for message in descriptor.message_types_by_name.values():
        stack = [message]
        while stack:
            m = stack.pop()
            out[m.full_name] = m
            stack.extend(m.nested_types)
    return out


def _enums(descriptor: Any) -> dict[str, Any]:
    out = dict(descriptor.enum_types_by_name)
    for message in _messages(descriptor).values():
        out.update({e.full_name: e for e in message.enum_types})
    return {getattr(e, "full_name", name): e for name, e in out.items()}


@pytest.mark.parametrize("name", sorted(_messages(ours.DESCRIPTOR)))
def test_every_message_field_is_published(name: str) -> None:
    mine, theirs = _messages(ours.DESCRIPTOR)[name], _messages(published.DESCRIPTOR)[name]
    for field in mine.fields:
        assert _field(field) == _field(theirs.fields_by_name[field.name]), field.name


@pytest.mark.parametrize("name", sorted(_enums(ours.DESCRIPTOR)))
def test_every_enum_value_is_published(name: str) -> None:
    mine, theirs = _enums(ours.DESCRIPTOR)[name], _enums(published.DESCRIPTOR)[name]
    assert {v.name: v.number for v in mine.values} == {v.name: v.number for v in theirs.values}


def test_every_datatype_has_its_triton_type() -> None:
    assert set(DATA_TYPES) == {*NUMERIC_DTYPES, "BYTES"}
    names = {v.name for v in published.DESCRIPTOR.enum_types_by_name["DataType"].values}
    assert set(DATA_TYPES.values()) <= names


def test_a_configuration_reads_the_same_through_the_published_messages() -> None:
    spec = ModelSpec(
        "m",
        "3",
        (TensorSpec("x", "FP16", (-1, 2, 5)), TensorSpec("s", "BYTES", (-1, 1))),
        (TensorSpec("y", "UINT8", (-1, 7)),),
    )
    batch = BatchConfig()
    doc = config_doc("m", ServedConfig(spec, batch.max_batch_rows, 1500, 1))
    wire = json_format.ParseDict(doc, ours.ModelConfig()).SerializeToString()
    read = published.ModelConfig.FromString(wire)
    assert read.name == "m" and read.max_batch_size == batch.max_batch_rows
    assert [(i.name, i.data_type, list(i.dims)) for i in read.input] == [
        ("x", published.TYPE_FP16, [2, 5]),
        ("s", published.TYPE_STRING, [1]),
    ]
    assert (read.output[0].data_type, list(read.output[0].dims)) == (published.TYPE_UINT8, [7])
    assert read.dynamic_batching.max_queue_delay_microseconds == 1500
    assert read.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert read.instance_group[0].kind == published.ModelInstanceGroup.KIND_CPU
    assert not read.model_transaction_policy.decoupled
