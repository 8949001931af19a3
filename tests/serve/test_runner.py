"""The runner against real onnxruntime sessions: strings in and out, execution providers,
several sessions, and what the run at load decides (batching, cost, warm-up source)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lockgate.config import BatchConfig, RunnerConfig
from lockgate.control.registry import Registry
from lockgate.errors import ErrorKind, LockgateError
from lockgate.model_config import ModelConfig
from lockgate.serve.batch import Batcher
from lockgate.serve.runner import UNKNOWN_COST, ModelRunner
from tests import onnx_models

Array = np.ndarray[Any, Any]


def runner_for(path: Path, config: ModelConfig | None = None, **kw: Any) -> ModelRunner:
    info = Registry(path.parent).register(path, path.stem.replace("_", "-"))
    runner = ModelRunner(info.spec, info.model_path, RunnerConfig(intra_op_threads=1), config, **kw)
    runner.load()
    return runner


def multi_inputs(rows: int, strings: list[Any]) -> dict[str, Array]:
    return {
        "a": np.arange(2 * rows, dtype=np.int64).reshape(rows, 2),
        "b": np.ones((rows, 3)),
        "s": np.array(strings, dtype=object).reshape(rows, 1),
    }


def test_strings_go_in_as_str_and_come_back_as_utf8_bytes(tmp_path: Path) -> None:
    runner = runner_for(onnx_models.multi_io_model(tmp_path / "multi.onnx"))
    words = ["Zürich".encode(), "Kyōto".encode(), b"", "plain"]  # bytes from the wire, or str
    out = runner.run(multi_inputs(4, words))["s_out"]
    assert out.dtype == object and out.shape == (4, 1)
    assert out.reshape(-1).tolist() == ["Zürich".encode(), "Kyōto".encode(), b"", b"plain"]
    unicode = runner.run(dict(multi_inputs(2, ["a"] * 2), s=np.array([["é"], ["ü"]])))["s_out"]
    assert unicode.reshape(-1).tolist() == ["é".encode(), "ü".encode()]


def test_bad_utf8_is_the_clients_mistake_naming_the_input(tmp_path: Path) -> None:
    runner = runner_for(onnx_models.multi_io_model(tmp_path / "multi.onnx"))
    with pytest.raises(LockgateError) as refused:
        runner.run(multi_inputs(3, [b"ok", b"ok", b"caf\xe9"]))
    assert refused.value.kind is ErrorKind.INVALID
    assert "input 's': element 2 is not valid UTF-8" in refused.value.message


def test_an_unavailable_provider_is_a_load_error_unless_fallback(tmp_path: Path) -> None:
    path = onnx_models.scale_model(tmp_path / "scale.onnx")
    wanted = ("NoSuchExecutionProvider",)
    with pytest.raises(LockgateError) as refused:
        runner_for(path, ModelConfig(providers=wanted))
    assert refused.value.kind is ErrorKind.UNAVAILABLE
    message = refused.value.message
    assert "NoSuchExecutionProvider not available" in message and "CPUExecutionProvider" in message
    assert "provider_fallback = true" in message
    runner = runner_for(path, ModelConfig(providers=wanted, provider_fallback=True))
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(runner.run({"x": x})["y"], 2 * x)


def test_the_version_config_sets_threads_and_optimisation(tmp_path: Path) -> None:
    from lockgate.serve.runner import session_options

    config = ModelConfig(intra_op_threads=3, inter_op_threads=2, graph_optimization="basic")
    options = session_options(RunnerConfig(intra_op_threads=1, inter_op_threads=1), config)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 2)
    assert options.graph_optimization_level.name == "ORT_ENABLE_BASIC"
    defaults = session_options(RunnerConfig(intra_op_threads=1, inter_op_threads=1))
    assert (defaults.intra_op_num_threads, defaults.graph_optimization_level.name) == (
        1,
        "ORT_ENABLE_ALL",
    )


def declared_one_model(path: Path) -> Path:
    """Returns `[N]` where the graph declares `[1]` (as onnxmltools' LightGBM label)."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axis"], ["y"], keepdims=0)],
        "declared_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [helper.make_tensor("axis", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_batching_needs_the_graph_and_a_run_unless_told(tmp_path: Path) -> None:
    scale = onnx_models.scale_model(tmp_path / "scale.onnx")
    assert runner_for(scale).spec.batchable
    assert not runner_for(scale, ModelConfig(batchable="false")).spec.batchable
    odd = declared_one_model(tmp_path / "odd.onnx")
    auto = runner_for(odd)
    assert not auto.spec.batchable  # the graph does not declare a batch axis on y
    assert auto.probe is not None and auto.probe.rows_follow and auto.layout.per_row  # type: ignore[union-attr]
    assert auto.probe.notes == ("output 'y' is declared [1] but returns [3] for 3 rows",)
    told = runner_for(odd, ModelConfig(batchable="true"))
    assert told.spec.batchable
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(told.run({"x": x})["y"], x.sum(axis=1))


def test_batchable_true_is_refused_where_requests_cannot_be_concatenated(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=1)],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "fixed.onnx")
    with pytest.raises(LockgateError) as refused:
        runner_for(tmp_path / "fixed.onnx", ModelConfig(batchable="true"))
    assert "input 'x' has shape [2, 4]" in refused.value.message
    lookup = onnx_models.lookup_model(tmp_path / "lookup.onnx")  # y [N]: rows follow
    assert runner_for(lookup, ModelConfig(batchable="true")).spec.batchable


def test_warmup_sources_in_order_and_a_failed_warmup_loads(tmp_path: Path) -> None:
    lookup = onnx_models.lookup_model(tmp_path / "lookup.onnx", size=10)
    synthetic = runner_for(lookup)  # zeros index the table: fine
    assert synthetic.warmup_source == "synthetic data" and synthetic.probe.ran  # type: ignore[union-attr]
    from_file = runner_for(lookup, warmup={"i": np.array([3, 4], np.int64)})
    assert from_file.warmup_source == "warm-up file"
    from_reference = runner_for(lookup, reference=np.array([[2.0], [5.0]]))
    assert from_reference.warmup_source == "reference data"
    failing = runner_for(lookup, warmup={"i": np.array([99], np.int64)})  # out of the table
    assert failing.probe is not None and not failing.probe.ran and "failed" in failing.probe.error
    assert not failing.spec.batchable and failing.fixed_cost == UNKNOWN_COST
    np.testing.assert_array_equal(failing.run({"i": np.array([1, 2])})["y"], [10.0, 20.0])
    skipped = runner_for(lookup, ModelConfig(warmup_samples=0))
    assert skipped.probe is not None and not skipped.probe.ran and not skipped.spec.batchable


class BarrierRunner(ModelRunner):
    """A real runner whose runs wait for each other: two at once or none."""

    barrier = threading.Barrier(2, timeout=30)

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        if feeds["x"].shape[0] == 5:  # the test's requests, not the warm-up
            self.barrier.wait()
        return super().run(feeds)


async def test_several_sessions_run_batches_at_once(tmp_path: Path) -> None:
    path = onnx_models.slow_model(tmp_path / "slow.onnx", width=64, layers=2)
    info = Registry(tmp_path).register(path, "slow")
    config = ModelConfig(sessions=2, batchable="false")
    runner = BarrierRunner(info.spec, info.model_path, RunnerConfig(intra_op_threads=1), config)
    runner.load()
    assert len(runner._calls) == 2
    batch = BatchConfig(inline_threshold=0.0)  # always in the threads
    with ThreadPoolExecutor(2) as pool:
        batcher = Batcher(runner, batch, pool, concurrency=2)
        x = np.ones((5, 64), np.float32)
        answers = await asyncio.gather(
            *(batcher.submit({"x": x * k}, 1, float("inf")) for k in (1, 2))
        )
    want = runner.run({"x": np.ones((1, 64), np.float32)})["y"][0, 0]
    assert [a[0]["y"].shape for a in answers] == [(5, 1), (5, 1)]
    np.testing.assert_allclose(answers[0][0]["y"], want, rtol=1e-5)
    assert batcher.stats.batches == 2
