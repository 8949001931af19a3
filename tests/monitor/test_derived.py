"""Wide and string inputs: the derived features against numpy and a pure-Python hash, the
projection rebuilt from its seed alone, and drift on them (brightness, an embedding shift, text
length, a flood of new values) alerting while clean data does not, on fixed seeds."""

from __future__ import annotations

import io
import math
import weakref
import zlib
from typing import Any

import numpy as np
import pytest

from lockgate.monitor import derived
from lockgate.monitor.drift import DriftConfig, DriftMonitor
from lockgate.monitor.layout import RowLayout, declared_layout, monitored
from lockgate.monitor.profiles import VersionProfiles, build_profiles
from lockgate.monitor.record import VersionRecorder
from lockgate.types import ModelSpec, TensorSpec

Array = np.ndarray[Any, Any]


def _spec(*inputs: TensorSpec) -> ModelSpec:
    return ModelSpec("m", "1", inputs, (TensorSpec("y", "FP32", (-1, 1)),))


IMAGE = _spec(TensorSpec("image", "FP32", (-1, 3, 32, 32)))
SAMPLED_IMAGE = _spec(TensorSpec("image", "FP32", (-1, 3, 48, 48)))  # wider than SAMPLE_VALUES
EMBEDDING = _spec(TensorSpec("emb", "FP32", (-1, 768)))
TEXT = _spec(TensorSpec("text", "BYTES", (-1, 1)))


def _fnv1a(value: bytes, buckets: int) -> int:
    h = 0xCBF29CE484222325
    for byte in value:
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h % buckets


# -- the derivation ---------------------------------------------------------------------------
def test_projection_is_rebuilt_from_the_seed_alone() -> None:
    """The documented recipe, written out again here, gives the same matrix; another seed or
    tensor gives another one."""
    seed, width = 7, 3 * 32 * 32
    p = derived.projection(seed, "image", width)
    taps = max(derived.MIN_TAPS, math.ceil(math.sqrt(width)))
    rng = np.random.default_rng([seed, zlib.crc32(b"image"), width])
    picks = [rng.choice(width, taps, replace=False) for _ in range(derived.PROJECTIONS)]
    signs = rng.choice(np.array([-1.0, 1.0]), size=(derived.PROJECTIONS, taps))
    want = np.zeros((width, derived.PROJECTIONS), np.float32)
    for d in range(derived.PROJECTIONS):
        want[picks[d], d] = signs[d] / math.sqrt(taps)
    np.testing.assert_array_equal(p.dense(width), want)
    assert ((want != 0).sum(axis=0) == taps).all()
    np.testing.assert_array_equal(derived.projection(seed, "image", width).weights, p.weights)
    assert not np.array_equal(derived.projection(seed + 1, "image", width).dense(width), want)
    assert not np.array_equal(derived.projection(seed, "other", width).dense(width), want)


def test_a_wide_row_is_read_through_256_evenly_spaced_blocks_and_projected_on_them() -> None:
    """The documented sample of a [3, 224, 224] row, written out again: 256 blocks of 16 values,
    the first at 0, then every (width - 16) // 255; the projection's recipe on its coordinates.
    Summary version 1 (profiles stored before the sample) reads and projects the whole row."""
    seed, width = 7, 3 * 224 * 224
    step = (width - 16) // 255
    positions = np.concatenate([np.arange(b * step, b * step + 16) for b in range(256)])
    np.testing.assert_array_equal(derived.sample_positions(width), positions)
    assert positions[-1] < width and np.all(np.diff(positions) > 0)
    p = derived.projection(seed, "image", width)
    rng = np.random.default_rng([seed, zlib.crc32(b"image"), width])
    picks = [positions[rng.choice(4096, 256, replace=False)] for _ in range(derived.PROJECTIONS)]
    signs = rng.choice(np.array([-1.0, 1.0]), size=(derived.PROJECTIONS, 256))
    want = np.zeros((width, derived.PROJECTIONS), np.float32)
    for d in range(derived.PROJECTIONS):
        want[picks[d], d] = signs[d] / 16.0
    np.testing.assert_array_equal(p.dense(width), want)
    np.testing.assert_array_equal(derived.sample_positions(width, version=1), np.arange(width))
    whole = derived.projection(seed, "image", width, version=1)
    assert (whole.dense(width) != 0).sum() == derived.PROJECTIONS * 388  # ceil(sqrt(width))
    for narrow in (300, 3072, derived.SAMPLE_VALUES):  # read whole, as in version 1
        np.testing.assert_array_equal(derived.sample_positions(narrow), np.arange(narrow))
        np.testing.assert_array_equal(
            derived.projection(seed, "x", narrow).dense(narrow),
            derived.projection(seed, "x", narrow, version=1).dense(narrow),
        )


@pytest.mark.parametrize("width", [300, 768, 150_528])
def test_projection_matches_the_dense_matmul(width: int) -> None:
    rng = np.random.default_rng(width)
    values = rng.normal(size=(5, width)).astype(np.float32)
    p = derived.projection(3, "x", width)
    want = values.astype(np.float64) @ p.dense(width).astype(np.float64)
    np.testing.assert_allclose(p.apply(values), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.float16])
def test_wide_summary_statistics_match_numpy(dtype: type[np.generic]) -> None:
    rng = np.random.default_rng(11)
    raw = rng.uniform(0, 255, size=(6, 3, 32, 32))
    raw[0] = 0.0  # a black image: std exactly 0
    values = raw.astype(dtype)
    s = derived.Summary("image", "wide", 3 * 32 * 32, derived.Derivation(5))
    got = s.columns(values, 6)
    exact = values.reshape(6, -1).astype(np.float64)
    assert s.names[:4] == ["image:mean", "image:std", "image:l2", "image:proj0"]
    assert got.shape == (6, 3 + derived.PROJECTIONS) and got.dtype == np.float32
    np.testing.assert_allclose(got[:, 0], exact.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(got[:, 1], exact.std(axis=1), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(got[:, 2], np.linalg.norm(exact, axis=1), rtol=1e-5)
    want = exact @ s.projection.dense(s.width).astype(np.float64)
    np.testing.assert_allclose(got[:, 3:], want, rtol=1e-4, atol=1e-2)
    assert got[0, 1] == 0.0


def test_text_columns_match_python() -> None:
    values = [b"", b"hello", "caf\u00e9".encode(), b"hello", b"a" * 1000, b"x\x00y"]
    array = np.empty((len(values), 1), dtype=object)
    array[:, 0] = values
    got = derived.Summary("text", "text", 1).columns(array, len(values))
    np.testing.assert_array_equal(got[:, 0], [len(v) for v in values])
    np.testing.assert_array_equal(got[:, 1], [v == b"" for v in values])
    np.testing.assert_array_equal(got[:, 2], [_fnv1a(v, derived.TEXT_BUCKETS) for v in values])
    # the same strings as str objects or a unicode array: the same features
    as_str = np.array([v.decode() for v in values], dtype=object)
    np.testing.assert_array_equal(derived.text_columns(as_str), got)
    np.testing.assert_array_equal(derived.text_columns(as_str.astype(str)), got)


# -- which tensors are summarised, and their names -----------------------------------------------
def test_wide_and_string_inputs_become_named_derived_features() -> None:
    spec = _spec(
        TensorSpec("x", "FP32", (-1, 4)),
        TensorSpec("image", "UINT8", (-1, 3, 224, 224)),
        TensorSpec("text", "BYTES", (-1,)),
        TensorSpec("pair", "BYTES", (-1, 2)),
    )
    m = monitored(spec.inputs, declared_layout(spec))
    assert m.names[:4] == [f"x[{i}]" for i in range(4)]
    assert m.names[4:7] == ["image:mean", "image:std", "image:l2"]
    assert m.names[7:15] == [f"image:proj{i}" for i in range(8)]
    assert m.names[15:] == ["text:length", "text:empty", "text:hash"]
    assert m.categorical == [17]
    assert m.skipped == ["pair (2 strings per row (one is summarised))"]
    recorder = VersionRecorder(spec, 64)
    assert recorder.input_features == m.names
    assert recorder.unfollowed == ["pair (2 strings per row (one is summarised))"]


def test_the_ring_derives_the_features_of_each_batch() -> None:
    spec = _spec(TensorSpec("x", "FP32", (-1, 2)), TensorSpec("text", "BYTES", (-1, 1)))
    spec = _spec(*spec.inputs, TensorSpec("emb", "FP32", (-1, 768)))
    recorder = VersionRecorder(spec, 64, derivation=derived.Derivation(seed=9))
    rng = np.random.default_rng(2)
    feeds = {
        "x": rng.normal(size=(3, 2)).astype(np.float32),
        "text": np.array([[b"a"], [b""], [b"abc"]], dtype=object),
        "emb": rng.normal(size=(3, 768)).astype(np.float32),
    }
    meta = recorder.meta("r1", "m", "1", 0)
    recorder.record(feeds, {"y": np.zeros((3, 1), np.float32)}, [meta], [3], [0], 0)
    cols, dropped = recorder.ring.swap()
    inputs = recorder.ring.assemble(cols, dropped).inputs
    np.testing.assert_array_equal(inputs[:, :2], feeds["x"])
    np.testing.assert_array_equal(inputs[:, 2:5], derived.text_columns(feeds["text"]))
    emb = derived.Summary("emb", "wide", 768, derived.Derivation(9)).columns(feeds["emb"], 3)
    np.testing.assert_array_equal(inputs[:, 5:], emb)


# -- drift on derived features ------------------------------------------------------------------
def _monitor(spec: ModelSpec, reference: Any, seed: int = 4) -> tuple[DriftMonitor, Any]:
    derivation = derived.Derivation(seed=seed)
    profiles = build_profiles(spec, reference, None, declared_layout(spec), derivation=derivation)
    restored = VersionProfiles.from_npz_bytes(profiles.to_npz_bytes())
    assert restored.derivation == derivation
    recorder = VersionRecorder(spec, 10_000, declared_layout(spec), restored.derivation)
    assert list(restored.inputs.names) == recorder.input_features
    config = DriftConfig(window_rows=1000, window_seconds=math.inf)
    return DriftMonitor(restored.inputs, config), recorder


def _features(recorder: VersionRecorder, feeds: dict[str, Array], rows: int) -> Array:
    """The features of `rows` rows as the gateway records them, through the ring."""
    meta = recorder.meta("r", "m", "1", 0)
    out = {"y": np.zeros((rows, 1), np.float32)}
    recorder.record(feeds, out, [meta], [rows], [0], 0)
    cols, dropped = recorder.ring.swap()
    inputs = recorder.ring.assemble(cols, dropped).inputs.copy()
    recorder.ring.release(cols)
    return inputs


def _alerts(drift: DriftMonitor, recorder: VersionRecorder, feeds: dict[str, Array]) -> set[str]:
    rows = next(iter(feeds.values())).shape[0]
    reports = drift.update(_features(recorder, feeds, rows))
    assert reports, "no window closed"
    names = recorder.input_features
    return {names[f] for r in reports for f in np.flatnonzero(r.feature_alert)}


def _images(rng: np.random.Generator, rows: int, side: int = 32) -> Array:
    """Smooth-ish images: a per-image brightness and contrast around a shared pattern."""
    base = np.linspace(0.2, 0.8, 3 * side * side).reshape(3, side, side)
    level = rng.uniform(0.7, 1.3, size=(rows, 1, 1, 1))
    noise = rng.normal(0, 0.05, size=(rows, 3, side, side))
    return np.clip(base * level + noise, 0, 1).astype(np.float32)


@pytest.mark.parametrize("spec", [IMAGE, SAMPLED_IMAGE], ids=["whole", "sampled"])
def test_brighter_images_alert_and_clean_images_do_not(spec: ModelSpec) -> None:
    side = spec.inputs[0].shape[-1]
    rng = np.random.default_rng(20)
    reference = _images(rng, 4000, side).reshape(4000, -1)
    drift, recorder = _monitor(spec, reference)
    assert _alerts(drift, recorder, {"image": _images(rng, 1000, side)}) == set()
    assert _alerts(drift, recorder, {"image": _images(rng, 1000, side)}) == set()
    brighter = _alerts(drift, recorder, {"image": _images(rng, 1000, side) * 1.2})
    assert {"image:mean", "image:l2"} <= brighter


def test_profiles_stored_before_the_sample_keep_summarising_whole_rows() -> None:
    """Profiles without a summary version were built reading every value: a gateway loading
    them summarises the traffic so too, not through the sample; a version newer than this
    build is refused (the registry then rebuilds the profiles from the reference)."""
    rng = np.random.default_rng(23)
    reference = _images(rng, 50, 48).reshape(50, -1)
    profiles = build_profiles(SAMPLED_IMAGE, reference, None)
    assert profiles.derivation == derived.Derivation(derived.DEFAULT_SEED, 2)
    with np.load(io.BytesIO(profiles.to_npz_bytes())) as z:
        stored = {k: z[k] for k in z.files if k != "summary_version"}
    old = VersionProfiles.from_npz_bytes(_npz(stored))
    assert old.derivation == derived.Derivation(derived.DEFAULT_SEED, 1)
    recorder = VersionRecorder(SAMPLED_IMAGE, 64, derivation=old.derivation)
    images = _images(rng, 5, 48)
    got = _features(recorder, {"image": images}, 5)
    whole = derived.Summary("image", "wide", 3 * 48 * 48, old.derivation).columns(images, 5)
    np.testing.assert_array_equal(got, whole)
    np.testing.assert_allclose(whole[:, :3], _moments(images.reshape(5, -1)), rtol=1e-6)
    sampled = derived.Summary("image", "wide", 3 * 48 * 48).columns(images, 5)
    assert not np.array_equal(sampled, whole)
    with pytest.raises(ValueError, match="summary version 3"):
        VersionProfiles.from_npz_bytes(_npz({**stored, "summary_version": np.int64(3)}))


def _npz(arrays: dict[str, Array]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _moments(rows: Array) -> Array:
    x = rows.astype(np.float64)
    return np.column_stack([x.mean(1), x.std(1), np.linalg.norm(x, axis=1)]).astype(np.float32)


def test_an_embedding_shift_of_half_a_std_alerts_and_clean_data_does_not() -> None:
    """Every coordinate moves by 0.5 std on average, along one random direction."""
    rng = np.random.default_rng(21)
    scale = rng.uniform(0.5, 2.0, size=768)  # coordinates of different spreads
    reference = rng.normal(size=(4000, 768)) * scale
    drift, recorder = _monitor(EMBEDDING, reference)
    clean = (rng.normal(size=(1000, 768)) * scale).astype(np.float32)
    assert _alerts(drift, recorder, {"emb": clean}) == set()
    direction = rng.normal(size=768)
    shift = 0.5 * scale * math.sqrt(768) * direction / np.linalg.norm(direction)
    moved = ((rng.normal(size=(1000, 768)) * scale) + shift).astype(np.float32)
    alerts = _alerts(drift, recorder, {"emb": moved})
    assert alerts and alerts <= set(recorder.input_features)
    assert any(name.startswith("emb:proj") for name in alerts)


WORDS = np.array([f"word{i}".encode() for i in range(40)] + [b""], dtype=object)
P_WORDS = np.r_[np.full(40, 0.95 / 40), 0.05]


def _texts(rng: np.random.Generator, rows: int, words: Array = WORDS) -> Array:
    return rng.choice(words, size=(rows, 1), p=P_WORDS if words is WORDS else None)


def test_text_length_and_a_flood_of_new_values_alert_and_clean_text_does_not() -> None:
    rng = np.random.default_rng(22)
    reference = {"text": _texts(rng, 5000).astype(str)}  # as an .npz holds strings
    drift, recorder = _monitor(TEXT, reference)
    assert _alerts(drift, recorder, {"text": _texts(rng, 1000)}) == set()
    longer = np.array([w + b" and more words" for w in WORDS], dtype=object)
    assert "text:length" in _alerts(drift, recorder, {"text": _texts(rng, 1000, longer)})
    drift, recorder = _monitor(TEXT, reference)
    flood = _texts(rng, 1000)
    flood[:400, 0] = b"a value the reference never had"
    assert "text:hash" in _alerts(drift, recorder, {"text": flood})


def test_a_table_reference_cannot_describe_a_string_input() -> None:
    with pytest.raises(ValueError, match="one array per input"):
        build_profiles(TEXT, np.zeros((10, 0)), None)


@pytest.mark.parametrize("followed", [0, 250], ids=["summarised", "left out"])
def test_a_wide_input_is_not_kept_after_its_run_is_recorded(followed: int) -> None:
    """Runs of small tensors may be held briefly before they are copied into the ring; an
    embedding input, summarised or (past MAX_FEATURES columns) left out, is never kept past
    its run."""
    inputs = (TensorSpec("x", "FP32", (-1, followed)),) if followed else ()
    spec = _spec(*inputs, TensorSpec("emb", "FP32", (-1, 768)))
    recorder = VersionRecorder(spec, 64)
    assert (recorder.unfollowed != []) == bool(followed)
    emb = np.ones((2, 768), np.float32)
    alive = weakref.ref(emb)
    feeds = {"emb": emb, **({"x": np.zeros((2, followed), np.float32)} if followed else {})}
    meta = recorder.meta("r1", "m", "1", 0)
    recorder.record(feeds, {"y": np.zeros((2, 1), np.float32)}, [meta], [2], [0], 0)
    del emb, feeds
    assert alive() is None
    cols, dropped = recorder.ring.swap()
    assert recorder.ring.assemble(cols, dropped).rows == 2


def test_the_layout_probe_decides_per_request_text() -> None:
    spec = ModelSpec("m", "1", (TensorSpec("s", "BYTES", (1,)),), (TensorSpec("y", "FP32", (1,)),))
    layout = RowLayout(False, {"s": (1,), "y": (1,)})
    recorder = VersionRecorder(spec, 8, layout)
    assert recorder.input_features == ["s:length", "s:empty", "s:hash"]
