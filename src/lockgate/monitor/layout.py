"""How a version's tensors map to monitored rows, decided once per version: from its graph and,
when the model runs at load (the warm-up), from what it actually returns.

Two layouts: *per row*, when axis 0 of every input and output is the request's rows (a table
model: each row of a request is a monitored row of features); otherwise *per request* (scalar
inputs, recurrent state, fixed shapes: each request is one monitored row, its tensors
flattened). Numeric inputs are followed value by value up to `MAX_FEATURES` values in all; a
wider input, and a string input with one value per row, is summarised into a few derived
features (:mod:`lockgate.monitor.derived`). A tensor whose values per monitored row are not
fixed (a dynamic inner dimension, several strings) cannot be followed: it is left out, and
said so once.

Converters do not always declare what the model returns (LightGBM's label is declared `[1]` and
returned as `[N]`): a run at load corrects the declared shapes, and the monitor follows what
the model returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lockgate.monitor.derived import CURRENT_DERIVATION, Derivation, Kind, Summary
from lockgate.types import ModelSpec, TensorSpec, numpy_dtype

MAX_FEATURES = 256
SYNTHETIC_DIM = 32  # a dynamic inner dimension of synthetic warm-up data (image sides, lengths)
PROBE_ROWS = (1, 3)  # two row counts tell a batch axis from a fixed leading dimension

Array = np.ndarray[Any, Any]
Arrays = dict[str, Array]
Run = Callable[[Arrays], Arrays]
Slots = list[tuple[str, int, int]]  # (tensor name, first column, end column)


@dataclass(frozen=True)
class RowLayout:
    per_row: bool  # axis 0 of every tensor holds the rows; else one monitored row per request
    shapes: Mapping[str, tuple[int, ...]]  # per tensor, as returned (-1: varies between runs)
    rows_from: str | None = None  # per row: the input whose axis 0 counts a run's rows

    def shape(self, t: TensorSpec) -> tuple[int, ...]:
        return self.shapes.get(t.name, t.shape)


def declared_layout(spec: ModelSpec) -> RowLayout:
    """The layout the graph declares (no run to correct it)."""
    tensors = (*spec.inputs, *spec.outputs)
    per_row = all(t.shape and t.shape[0] == -1 for t in tensors)
    shapes = {t.name: t.shape for t in tensors}
    return RowLayout(per_row, shapes, spec.inputs[0].name if per_row else None)


def _width(shape: tuple[int, ...], datatype: str, per_row: bool) -> tuple[int | None, str]:
    """Values per monitored row, or None and why the tensor cannot be followed."""
    if per_row and not shape:
        return None, "no row axis"
    inner = shape[1:] if per_row else shape
    if any(d < 0 for d in inner):
        return None, f"shape {list(shape)} has a dynamic inner dimension"
    width = int(np.prod(inner, dtype=np.int64))
    if datatype == "BYTES" and width != 1:
        return None, f"{width} strings per row (one is summarised)"
    return width, ""


@dataclass(frozen=True)
class Monitored:
    """What the monitor follows of the inputs or outputs of a schema: tensors followed value by
    value (`slots`: their columns in the feature matrix), tensors summarised into derived
    columns (:mod:`lockgate.monitor.derived`), the feature names, the tensors left out and why,
    and the feature columns that are categories whatever the reference shows."""

    slots: Slots
    summaries: list[tuple[Summary, int, int]]
    names: list[str]
    skipped: list[str]
    categorical: list[int]


def monitored(
    tensors: tuple[TensorSpec, ...],
    layout: RowLayout,
    derivation: Derivation = CURRENT_DERIVATION,
    summarise: bool = True,
) -> Monitored:
    """Numeric tensors are followed value by value while they fit in `MAX_FEATURES` columns;
    with `summarise`, wider ones (and strings) become derived columns, when those fit, as
    `derivation` says."""
    m = Monitored([], [], [], [], [])
    for t in tensors:
        width, why = _width(layout.shape(t), t.datatype, layout.per_row)
        text = t.datatype == "BYTES"
        if width is not None and (text or len(m.names) + width > MAX_FEATURES):
            kind: Kind = "text" if text else "wide"
            summary = Summary(t.name, kind, width, derivation)
            if summarise and len(m.names) + len(summary.names) <= MAX_FEATURES:
                lo = len(m.names)
                m.summaries.append((summary, lo, lo + len(summary.names)))
                m.categorical.extend(lo + c for c in summary.categorical)
                m.names.extend(summary.names)
                continue
            width, why = (
                None,
                "strings are not profiled"
                if text
                else (f"{width} values per row (more than {MAX_FEATURES} in all)"),
            )
        if width is None:
            m.skipped.append(f"{t.name} ({why})")
            continue
        m.slots.append((t.name, len(m.names), len(m.names) + width))
        m.names.extend([t.name] if width == 1 else [f"{t.name}[{i}]" for i in range(width)])
    return m


def feature_names(
    tensors: tuple[TensorSpec, ...], layout: RowLayout
) -> tuple[Slots, list[str], list[str]]:
    """(tensors followed value by value with their feature columns, feature names, tensors
    left out with the reason), nothing summarised: the outputs' view."""
    m = monitored(tensors, layout, summarise=False)
    return m.slots, m.names, m.skipped


def raw_columns(tensors: tuple[TensorSpec, ...], layout: RowLayout) -> tuple[Slots, int]:
    """The columns of a reference table ``[N, values]``: every numeric tensor with a fixed
    number of values per row, value by value (however wide), in schema order; and the width."""
    slots: Slots = []
    end = 0
    for t in tensors:
        width, _ = _width(layout.shape(t), t.datatype, layout.per_row)
        if width is not None and t.datatype != "BYTES":
            slots.append((t.name, end, end + width))
            end += width
    return slots, end


# -- warm-up samples ---------------------------------------------------------------------------
def synthetic_feeds(spec: ModelSpec, rows: int) -> Arrays:
    """Made-up inputs (zeros, empty strings): the last resort for a warm-up; a model may
    rightly refuse them."""
    feeds: Arrays = {}
    for t in spec.inputs:
        shape = [(rows if i == 0 else SYNTHETIC_DIM) if d < 0 else d for i, d in enumerate(t.shape)]
        if t.datatype == "BYTES":
            feeds[t.name] = np.full(shape, "", dtype=object)
        else:
            feeds[t.name] = np.zeros(shape, dtype=numpy_dtype(t.datatype))
    return feeds


def reference_feeds(spec: ModelSpec, reference: Array, rows: int) -> Arrays | None:
    """Inputs made of the first rows of the reference data (`[N, input features]`), when its
    columns are every input of the model; else None."""
    layout = declared_layout(spec)
    slots, width = raw_columns(spec.inputs, layout)
    if len(slots) != len(spec.inputs) or reference.ndim != 2 or reference.shape[1] != width:
        return None
    if reference.shape[0] == 0:
        return None
    table = reference[: max(1, rows) if layout.per_row else 1]
    feeds: Arrays = {}
    for name, lo, hi in slots:
        t = spec.input(name)
        assert t is not None
        shape = (table.shape[0], *t.shape[1:]) if layout.per_row else t.shape
        feeds[name] = table[:, lo:hi].astype(numpy_dtype(t.datatype)).reshape(shape)
    return feeds


def take_rows(sample: Arrays, rows: int) -> Arrays:
    """`rows` rows of a per-row sample, cycling through its rows."""
    out: Arrays = {}
    for name, array in sample.items():
        index = np.arange(rows) % array.shape[0]
        out[name] = array[index]
    return out


# -- the run at load -------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """What a run at load showed."""

    layout: RowLayout
    ran: bool  # the model ran on the sample
    rows_follow: bool  # every output's axis 0 followed the inputs' rows in two runs
    error: str = ""  # why it did not run
    notes: tuple[str, ...] = field(default=())  # declared shapes the model does not return


def probe(spec: ModelSpec, run: Run, sample: Arrays | None) -> Probe:
    """Run the model on `sample` (twice, with 1 and 3 rows, when every input has a leading
    dynamic dimension) and derive the layout from what it returns. A failed run is reported
    in the result, not raised: the declared layout stands."""
    declared = declared_layout(spec)
    if sample is None:
        return Probe(declared, False, False)
    row_inputs = all(t.shape and t.shape[0] == -1 for t in spec.inputs)
    try:
        if row_inputs:
            runs = {k: run(take_rows(sample, k)) for k in PROBE_ROWS}
            rows_follow = all(
                out[o.name].ndim >= 1 and out[o.name].shape[0] == k
                for k, out in runs.items()
                for o in spec.outputs
            )
            rows, observed = PROBE_ROWS[-1], runs[PROBE_ROWS[-1]]
        else:
            rows, observed, rows_follow = 0, run(sample), False
    except Exception as exc:
        text = str(exc).strip() or type(exc).__name__
        return Probe(declared, False, False, text.splitlines()[0][:300])
    shapes = dict(declared.shapes)
    notes = []
    for o in spec.outputs:
        actual = tuple(int(d) for d in observed[o.name].shape)
        shapes[o.name] = _merge(o.shape, actual, rows_follow)
        if not _agrees(o.shape, actual):
            returned = f"{list(actual)} for {rows} rows" if rows else f"{list(actual)}"
            notes.append(f"output {o.name!r} is declared {list(o.shape)} but returns {returned}")
    per_row = row_inputs and rows_follow
    layout = RowLayout(per_row, shapes, spec.inputs[0].name if per_row else None)
    return Probe(layout, True, rows_follow, notes=tuple(notes))


def _agrees(declared: tuple[int, ...], actual: tuple[int, ...]) -> bool:
    return len(declared) == len(actual) and all(
        d < 0 or d == a for d, a in zip(declared, actual, strict=True)
    )


def _merge(
    declared: tuple[int, ...], actual: tuple[int, ...], rows_follow: bool
) -> tuple[int, ...]:
    """The shape to follow: the returned one, with the declared dynamic dimensions kept dynamic
    (and axis 0 dynamic when it follows the rows)."""
    merged = list(actual)
    if len(declared) == len(actual):
        merged = [-1 if d < 0 else a for d, a in zip(declared, actual, strict=True)]
    if rows_follow and merged:
        merged[0] = -1
    return tuple(merged)
