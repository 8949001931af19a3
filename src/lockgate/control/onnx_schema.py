"""What lockgate serves of an ONNX file: its tensor inputs and outputs, read at registration.

Converters' default classifier exports end in a ZipMap (a sequence of {class: probability} maps
per row), which no tensor protocol can carry and which costs a Python object per row. The
registry rewrites it to what it wraps, the probability tensor `[N, classes]` in class order,
and publishes the class labels with the output (`TensorSpec.labels`). Anything else that is
not a tensor of a supported element type is refused, naming the tensor, its ONNX type and what
to change in the export.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lockgate.errors import invalid
from lockgate.types import TensorSpec

log = logging.getLogger(__name__)

# onnx TensorProto element types -> Open Inference Protocol datatypes
ONNX_DATATYPES = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
}
ZIPMAP_FIX = (
    "export the classifier without ZipMap: skl2onnx `to_onnx(model, X, "
    "options={'zipmap': False})`, onnxmltools `convert_lightgbm(..., zipmap=False)`"
)


@dataclass(frozen=True, slots=True)
class Inspected:
    """A model as lockgate will store and serve it."""

    model_bytes: bytes  # the file to store: the original, or rewritten (see `conversions`)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    conversions: tuple[str, ...]  # what the registry changed, for meta.json and the log


def inspect_model(model_bytes: bytes) -> Inspected:
    """Check an ONNX file (onnx's checker), rewrite ZipMap outputs, read the tensor schema.
    INVALID with the reason when the file is not a model lockgate can serve."""
    import onnx

    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception as exc:  # DecodeError, ...
        raise invalid(f"not a valid ONNX model: {first_line(exc)}") from None
    checked = _checked(model, model_bytes)
    labels, conversions = _remove_zipmaps(model)
    if conversions:
        model_bytes = model.SerializeToString()
        try:
            if checked:
                onnx.checker.check_model(model)
        except Exception as exc:
            raise invalid(f"the model without its ZipMap is not valid: {first_line(exc)}") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(
        _tensor_spec(i, "input") for i in model.graph.input if i.name not in initializers
    )
    outputs = tuple(_tensor_spec(o, "output", labels.get(o.name, ())) for o in model.graph.output)
    if not inputs or not outputs:
        raise invalid("the model has no inputs or no outputs")
    return Inspected(model_bytes, inputs, outputs, tuple(conversions))


def _checked(model: Any, model_bytes: bytes) -> bool:
    """onnx's checker passes the model (True); or it objects to what onnxruntime accepts, as
    with files of IR version < 4 whose initializers are not graph inputs (False, logged);
    otherwise INVALID with the checker's reason. onnxruntime is what serves the model."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(model)
        return True
    except Exception as exc:  # ValidationError, ...
        reason = first_line(exc)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception:
        raise invalid(f"not a valid ONNX model: {reason}") from None
    log.info("onnx's checker objects to the model (%s); onnxruntime loads it", reason)
    return False


def _tensor_spec(value_info: Any, kind: str, labels: tuple[int | str, ...] = ()) -> TensorSpec:
    what = value_info.type.WhichOneof("value")
    if what != "tensor_type":
        raise invalid(_refusal(kind, value_info))
    tensor_type = value_info.type.tensor_type
    datatype = ONNX_DATATYPES.get(tensor_type.elem_type)
    if datatype is None:
        raise invalid(_refusal(kind, value_info))
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
    return TensorSpec(value_info.name, datatype, shape, labels)


def _refusal(kind: str, value_info: Any) -> str:
    """Why a tensor cannot be served, and what to change in the export."""
    onnx_type = type_name(value_info.type)
    head = f"{kind} {value_info.name!r} has ONNX type {onnx_type}, which lockgate cannot serve"
    what = value_info.type.WhichOneof("value")
    if what == "tensor_type":
        supported = ", ".join(ONNX_DATATYPES.values())
        return (
            f"{head} (element types served: {supported}): cast it in the graph "
            "(a Cast node) or export it with a supported element type"
        )
    if kind == "output" and _is_sequence_of_maps(value_info.type):
        return f"{head} (a ZipMap-style sequence of maps that is not a plain ZipMap): {ZIPMAP_FIX}"
    return (
        f"{head} (it serves tensors only): export the model so that this {kind} is a tensor "
        "(e.g. concatenate a sequence in the graph) or leave it out of the graph's outputs"
    )


def _is_sequence_of_maps(type_proto: Any) -> bool:
    return bool(
        type_proto.WhichOneof("value") == "sequence_type"
        and type_proto.sequence_type.elem_type.WhichOneof("value") == "map_type"
    )


def _remove_zipmaps(model: Any) -> tuple[dict[str, tuple[int | str, ...]], list[str]]:
    """Replace each ZipMap that produces a graph output (and feeds nothing else) by an Identity
    of its probability tensor; the output becomes FP32 `[N, classes]`. Returns the labels per
    output and a note per rewrite."""
    from onnx import TensorProto, helper

    outputs = {o.name: o for o in model.graph.output}
    consumed = {name for node in model.graph.node for name in node.input}
    labels: dict[str, tuple[int | str, ...]] = {}
    notes: list[str] = []
    for index, node in enumerate(model.graph.node):
        if node.op_type != "ZipMap" or node.domain != "ai.onnx.ml":
            continue
        (name,) = node.output
        if name not in outputs or name in consumed:
            continue  # refused with the fix when its output is read
        classes = _zipmap_labels(node)
        if not classes:
            continue
        identity = helper.make_node("Identity", [node.input[0]], [name], name=node.name)
        model.graph.node[index].CopyFrom(identity)
        outputs[name].type.CopyFrom(
            helper.make_tensor_type_proto(TensorProto.FLOAT, ["N", len(classes)])
        )
        stale = [v for v in model.graph.value_info if v.name == name]
        for v in stale:
            model.graph.value_info.remove(v)
        _import_default_opset(model)
        labels[name] = classes
        notes.append(
            f"output {name!r}: ZipMap removed, served as FP32 [N, {len(classes)}] "
            "(class probabilities in the order of its labels)"
        )
    return labels, notes


def _import_default_opset(model: Any) -> None:
    """The Identity that replaces a ZipMap is an operator of the default domain, which a graph
    made only of `ai.onnx.ml` operators (older scikit-learn exports) does not import: import the
    newest opset its IR version allows."""
    from onnx.helper import VERSION_TABLE, make_opsetid

    if any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        return
    allowed = [row[2] for row in VERSION_TABLE if row[1] <= model.ir_version]
    model.opset_import.append(make_opsetid("", max(allowed, default=1)))


def _zipmap_labels(node: Any) -> tuple[int | str, ...]:
    for attr in node.attribute:
        if attr.name == "classlabels_int64s" and attr.ints:
            return tuple(int(i) for i in attr.ints)
        if attr.name == "classlabels_strings" and attr.strings:
            return tuple(s.decode("utf-8") for s in attr.strings)
    return ()


def type_name(type_proto: Any) -> str:
    """An ONNX type as onnxruntime names it: tensor(float), seq(map(int64,tensor(float)))."""
    from onnx import TensorProto

    what = type_proto.WhichOneof("value")
    if what in ("tensor_type", "sparse_tensor_type"):
        elem = getattr(type_proto, what).elem_type
        elem_name = TensorProto.DataType.Name(elem).lower() if elem else "undefined"
        prefix = "tensor" if what == "tensor_type" else "sparse_tensor"
        return f"{prefix}({elem_name})"
    if what == "sequence_type":
        return f"seq({type_name(type_proto.sequence_type.elem_type)})"
    if what == "map_type":
        key = TensorProto.DataType.Name(type_proto.map_type.key_type).lower()
        return f"map({key},{type_name(type_proto.map_type.value_type)})"
    if what == "optional_type":
        return f"optional({type_name(type_proto.optional_type.elem_type)})"
    return what or "undefined"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
