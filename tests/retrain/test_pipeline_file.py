"""Pipeline files: a complete file parses to the expected dataclasses, defaults fill the rest,
and every bad key or value is refused with a message that names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.errors import ErrorKind, LockgateError
from lockgate.retrain.pipeline import (
    DataSpec,
    GatesSpec,
    PipelineSpec,
    RolloutSpec,
    TrainerSpec,
    TriggersSpec,
    load_pipeline,
)
from lockgate.specs import RolloutPlan

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipeline.toml"

FULL = """
endpoint = "fraud"
model = "fraud-lr"
task = "classification"

[trainer]
function = "lockgate.retrain.train:logistic_regression"
retries = 3
params = { l2 = 0.5, max_iter = 20 }

[triggers]
drift = false
min_new_labels = 0
schedule_seconds = 600
poll_seconds = 0.5
accuracy_drop = 0.05
accuracy_labels = 400

[data]
window_seconds = 7200
max_rows = 5000
holdout_fraction = 0.25
seed = 42
min_rows = 100

[gates]
metric = "accuracy"
tolerance = 0.01
slice_feature = 3
slice_bins = 5
max_slice_gap = 0.1
p99_latency_ms = 2.5
group_by = 2
group_bins = 6
max_group_gap_increase = 0.02
min_group_rows = 50

[rollout]
steps = [0.5, 10, 100]
analysis_seconds = 12.5
min_requests = 10
max_error_rate = 0.05
max_p99_ratio = 2
abort_on_drift = true
max_disagreement = 0.3
min_accuracy_delta = -0.02
shadow_seconds = 20
max_extensions = 5
p99_floor_seconds = 0.002
min_labels = 40
token_env = "RETRAIN_TOKEN"
admin_url = "http://gateway:9002/"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return path


def test_full_file_parses_to_the_expected_spec(tmp_path: Path) -> None:
    spec = load_pipeline(write(tmp_path, FULL))
    assert spec == PipelineSpec(
        endpoint="fraud",
        model="fraud-lr",
        task="classification",
        trainer=TrainerSpec(
            "lockgate.retrain.train:logistic_regression", {"l2": 0.5, "max_iter": 20}, 3
        ),
        triggers=TriggersSpec(
            drift=False,
            min_new_labels=0,
            schedule_seconds=600.0,
            poll_seconds=0.5,
            accuracy_drop=0.05,
            accuracy_labels=400,
        ),
        data=DataSpec(
            window_seconds=7200.0, max_rows=5000, holdout_fraction=0.25, seed=42, min_rows=100
        ),
        gates=GatesSpec(
            metric="accuracy",
            tolerance=0.01,
            slice_feature=3,
            slice_bins=5,
            max_slice_gap=0.1,
            p99_latency_ms=2.5,
            group_by=2,
            group_bins=6,
            max_group_gap_increase=0.02,
            min_group_rows=50,
        ),
        rollout=RolloutSpec(
            plan=RolloutPlan(
                steps=(0.5, 10.0, 100.0),
                analysis_seconds=12.5,
                min_requests=10,
                max_extensions=5,
                max_error_rate=0.05,
                max_p99_ratio=2.0,
                p99_floor_seconds=0.002,
                abort_on_drift=True,
                max_disagreement=0.3,
                min_accuracy_delta=-0.02,
                min_labels=40,
                shadow_seconds=20.0,
            ),
            token_env="RETRAIN_TOKEN",
            admin_url="http://gateway:9002",
        ),
    )
    # what a rollout stores: every plan key, none of the connection settings
    assert spec.rollout.plan.to_doc() == {
        "steps": [0.5, 10.0, 100.0],
        "analysis_seconds": 12.5,
        "min_requests": 10,
        "max_extensions": 5,
        "max_error_rate": 0.05,
        "max_p99_ratio": 2.0,
        "p99_floor_seconds": 0.002,
        "abort_on_drift": True,
        "max_disagreement": 0.3,
        "min_accuracy_delta": -0.02,
        "min_labels": 40,
        "shadow_seconds": 20.0,
    }


def test_defaults(tmp_path: Path) -> None:
    spec = load_pipeline(write(tmp_path, 'endpoint = "classifier"\n'))
    assert spec.model == "classifier"
    assert spec.task == "classification"
    assert spec.trainer == TrainerSpec("lockgate.retrain.train:logistic_regression", {}, 1)
    assert spec.triggers == TriggersSpec(True, 500, None, 5.0, None, 200)
    assert spec.data == DataSpec(3600.0, 200_000, 0.2, 0, 200)
    assert spec.gates == GatesSpec("accuracy", 0.0, None, 4, 0.05, 5.0, None, 4, 0.01, 30)
    assert spec.rollout.plan == RolloutPlan()  # the rollout store's defaults, the same schema
    assert spec.rollout.plan.steps == (1.0, 5.0, 25.0, 50.0, 100.0)
    assert (spec.rollout.plan.max_extensions, spec.rollout.plan.min_labels) == (3, 30)
    assert spec.rollout.plan.p99_floor_seconds == 0.005
    assert spec.rollout.plan.max_disagreement is None
    assert spec.rollout.plan.min_accuracy_delta is None
    assert spec.rollout.token_env == "LOCKGATE_ADMIN_TOKEN"
    assert spec.rollout.admin_url == "http://127.0.0.1:8002"
    assert spec.rollout.gateways == ("http://127.0.0.1:8002",)  # metrics from the admin URL


def test_regression_defaults_to_mae(tmp_path: Path) -> None:
    text = 'endpoint = "r"\ntask = "regression"\n[trainer]\n'
    text += 'function = "lockgate.retrain.train:linear_regression"\n'
    spec = load_pipeline(write(tmp_path, text))
    assert spec.gates.metric == "mae"


def test_the_example_file_is_valid() -> None:
    spec = load_pipeline(EXAMPLE)
    assert spec.endpoint == "classifier" and spec.model == "classifier"
    assert spec.rollout.plan.steps[-1] == 100


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(LockgateError) as missing:
        load_pipeline(tmp_path / "nope.toml")
    assert missing.value.kind is ErrorKind.NOT_FOUND
    with pytest.raises(LockgateError, match="not valid TOML") as bad:
        load_pipeline(write(tmp_path, "endpoint = \n"))
    assert bad.value.kind is ErrorKind.INVALID


BASE = 'endpoint = "e"\n'
BAD = [
    ("", "missing key 'endpoint'"),
    ('model = "m"\n', "missing key 'endpoint'"),
    ('endpoint = "bad name!"\n', "endpoint must be a name"),
    ("endpoint = 3\n", "endpoint must be a name"),
    (BASE + 'model = ""\n', "model must be a name"),
    (BASE + "colour = 1\n", "unknown key 'colour'"),
    (BASE + 'task = "ranking"\n', "task must be 'classification' or 'regression'"),
    (BASE + "trainer = 3\n", "trainer must be a table"),
    (BASE + "[trainer]\nparams = 3\n", "trainer.params must be a table"),
    (BASE + "[trainer]\nfunctoin = 'x:y'\n", "unknown key 'trainer.functoin'"),
    (BASE + "[trainer]\nfunction = 'no_such_module_q:fit'\n", "trainer.function: cannot import"),
    (BASE + "[trainer]\nfunction = 'lockgate.retrain.train:nope'\n", "trainer.function"),
    (BASE + "[trainer]\nfunction = 'lockgate.retrain.train:OPSET'\n", "trainer.function"),
    (BASE + "[trainer]\nfunction = 'lockgate.retrain.train'\n", "trainer.function"),
    (BASE + "[trainer]\nretries = -1\n", "trainer.retries must be an integer >= 0"),
    (BASE + "[trainer]\nretries = true\n", "trainer.retries must be an integer >= 0"),
    (BASE + "[triggers]\ndrift = 'yes'\n", "triggers.drift must be true or false"),
    (BASE + "[triggers]\nmin_new_labels = 1.5\n", "triggers.min_new_labels must be an integer"),
    (BASE + "[triggers]\nschedule_seconds = 0\n", "triggers.schedule_seconds must be a number > 0"),
    (BASE + "[triggers]\npoll_seconds = -1\n", "triggers.poll_seconds must be a number > 0"),
    (BASE + "[triggers]\naccuracy_drop = 0\n", "triggers.accuracy_drop must be a number with 0 <"),
    (BASE + "[triggers]\naccuracy_drop = 1\n", "triggers.accuracy_drop must be a number with 0 <"),
    (BASE + "[triggers]\naccuracy_labels = 0\n", "triggers.accuracy_labels must be an integer >="),
    (
        BASE
        + 'task = "regression"\n[trainer]\nfunction = "lockgate.retrain.train:linear_regression"'
        "\n[triggers]\naccuracy_drop = 0.1\n",
        "triggers.accuracy_drop applies to classification only",
    ),
    (BASE + "[triggers]\naccuracy = 0.1\n", "unknown key 'triggers.accuracy'"),
    (BASE + "[data]\nwindow_seconds = 0\n", "data.window_seconds must be a number > 0"),
    (BASE + "[data]\nmax_rows = 0\n", "data.max_rows must be an integer >= 1"),
    (BASE + "[data]\nholdout_fraction = 1.0\n", "data.holdout_fraction"),
    (BASE + "[data]\nholdout_fraction = 0\n", "data.holdout_fraction"),
    (BASE + "[data]\nseed = 1.5\n", "data.seed must be an integer >= 0"),
    (BASE + "[data]\nseed = -1\n", "data.seed must be an integer >= 0"),
    (BASE + "[data]\nmin_rows = 1\n", "data.min_rows must be an integer >= 2"),
    (BASE + "[data]\nmin_rows = 500\nmax_rows = 100\n", "data.min_rows (500) must be <="),
    (BASE + "[gates]\ntolerance = -0.1\n", "gates.tolerance must be a number >= 0"),
    (BASE + "[gates]\ntolerance = 'low'\n", "gates.tolerance must be a number >= 0"),
    (BASE + "[gates]\ntolerance = nan\n", "gates.tolerance must be a number >= 0"),
    (BASE + "[gates]\nmetric = 'mae'\n", "gates.metric must be 'accuracy'"),
    (BASE + "[gates]\nslice_feature = -1\n", "gates.slice_feature must be an integer >= 0"),
    (BASE + "[gates]\nslice_bins = 1\n", "gates.slice_bins must be an integer >= 2"),
    (BASE + "[gates]\nmax_slice_gap = -1\n", "gates.max_slice_gap must be a number >= 0"),
    (BASE + "[gates]\np99_latency_ms = 0\n", "gates.p99_latency_ms must be a number > 0"),
    (BASE + "[gates]\ngroup_by = -1\n", "gates.group_by must be an integer >= 0"),
    (BASE + "[gates]\ngroup_by = 'sex'\n", "gates.group_by must be an integer >= 0"),
    (BASE + "[gates]\ngroup_bins = 1\n", "gates.group_bins must be an integer >= 2"),
    (BASE + "[gates]\nmax_group_gap_increase = -0.01\n", "gates.max_group_gap_increase must"),
    (BASE + "[gates]\nmin_group_rows = 0\n", "gates.min_group_rows must be an integer >= 1"),
    (BASE + "[gates]\ngroupby = 1\n", "unknown key 'gates.groupby'"),
    (BASE + "[rollout]\nstepz = [1, 100]\n", "unknown key 'rollout.stepz'"),
    (BASE + "[rollout]\nsteps = []\n", "rollout.steps must be a non-empty list"),
    (BASE + "[rollout]\nsteps = 100\n", "rollout.steps must be a non-empty list"),
    (BASE + "[rollout]\nsteps = [5, 1, 100]\n", "rollout.steps must be strictly increasing"),
    (BASE + "[rollout]\nsteps = [5, 5, 100]\n", "rollout.steps must be strictly increasing"),
    (BASE + "[rollout]\nsteps = [1, 5, 50]\n", "rollout.steps must end at 100"),
    (BASE + "[rollout]\nsteps = [0, 100]\n", "rollout.steps[0] must be a number in (0, 100]"),
    (BASE + "[rollout]\nsteps = [1, 150]\n", "rollout.steps[1] must be a number in (0, 100]"),
    (BASE + "[rollout]\nsteps = [1.005, 100]\n", "rollout.steps[0] must be a multiple of 0.01"),
    (BASE + "[rollout]\nanalysis_seconds = 0\n", "rollout.analysis_seconds must be a number > 0"),
    (BASE + "[rollout]\nmin_requests = -5\n", "rollout.min_requests must be an integer >= 0"),
    (BASE + "[rollout]\nmax_error_rate = 1.5\n", "rollout.max_error_rate must be a number in"),
    (BASE + "[rollout]\nmax_p99_ratio = 0\n", "rollout.max_p99_ratio must be a number > 0"),
    (BASE + "[rollout]\nabort_on_drift = 1\n", "rollout.abort_on_drift must be true or false"),
    (BASE + "[rollout]\nmax_disagreement = 2\n", "rollout.max_disagreement must be a number in"),
    (BASE + "[rollout]\nmin_accuracy_delta = 'x'\n", "rollout.min_accuracy_delta must be a"),
    (BASE + "[rollout]\nshadow_seconds = -1\n", "rollout.shadow_seconds must be a number >= 0"),
    (BASE + "[rollout]\nmax_extensions = -1\n", "rollout.max_extensions must be an integer >= 0"),
    (BASE + "[rollout]\nmax_extensions = 1.5\n", "rollout.max_extensions must be an integer"),
    (BASE + "[rollout]\np99_floor_seconds = -1\n", "rollout.p99_floor_seconds must be a number"),
    (BASE + "[rollout]\nmin_labels = 0\n", "rollout.min_labels must be an integer >= 1"),
    (BASE + "[rollout]\ntoken_env = '1TOKEN'\n", "rollout.token_env must be an environment"),
    (BASE + "[rollout]\nadmin_url = 'ftp://x'\n", "rollout.admin_url must be an http(s)"),
    (BASE + "[rollout]\nmetrics_urls = 'http://a:1'\n", "rollout.metrics_urls must be a list"),
    (BASE + "[rollout]\nmetrics_urls = ['dns+http://a']\n", "rollout.metrics_urls must be an"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_files_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(LockgateError) as caught:
        load_pipeline(path)
    assert caught.value.kind is ErrorKind.INVALID
    assert message in caught.value.message
    assert caught.value.message.startswith(str(path))
