"""A version's serving configuration: TOML both ways, command-line settings, validation."""

from __future__ import annotations

import pytest

from lockgate.errors import ErrorKind, LockgateError
from lockgate.model_config import ModelConfig


def test_defaults_and_every_value_survive_toml() -> None:
    assert ModelConfig.from_toml(ModelConfig().to_toml()) == ModelConfig()
    custom = ModelConfig(
        batchable="false",
        max_batch_rows=16,
        providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
        provider_fallback=True,
        intra_op_threads=2,
        inter_op_threads=1,
        graph_optimization="basic",
        sessions=3,
        warmup_samples=0,
    )
    assert ModelConfig.from_toml(custom.to_toml()) == custom
    assert ModelConfig.from_toml("") == ModelConfig()


def test_a_partial_file_keeps_the_defaults_and_accepts_toml_booleans() -> None:
    config = ModelConfig.from_toml('batchable = true\nproviders = "CPUExecutionProvider"\n')
    assert config == ModelConfig(batchable="true")


def test_command_line_settings() -> None:
    config = (
        ModelConfig()
        .with_setting("batchable=FALSE")
        .with_setting("sessions = 4")
        .with_setting("provider_fallback=true")
        .with_setting("providers=CUDAExecutionProvider, CPUExecutionProvider")
        .with_setting("graph_optimization=extended")
    )
    assert config == ModelConfig(
        batchable="false",
        sessions=4,
        provider_fallback=True,
        providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
        graph_optimization="extended",
    )


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("nope=1", "unknown model config key 'nope'"),
        ("sessions", "KEY=VALUE"),
        ("sessions=0", "'sessions' must be an integer >= 1"),
        ("sessions=1000", "'sessions' must be at most"),
        ("max_batch_rows=-3", "non-negative integer"),
        ("max_batch_rows=٣", "non-negative integer"),  # digits, but not ASCII
        ("batchable=maybe", "'batchable' must be one of auto, true, false"),
        ("graph_optimization=max", "'graph_optimization' must be one of"),
        ("provider_fallback=yes", "true or false"),
        ("providers=", "non-empty list"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(setting: str, says: str) -> None:
    with pytest.raises(LockgateError) as refused:
        ModelConfig().with_setting(setting)
    assert refused.value.kind is ErrorKind.INVALID and says in refused.value.message


def test_bad_files_are_refused() -> None:
    for text, says in (
        ("sessions = ", "not valid TOML"),
        ("threads = 2", "unknown model config key(s) threads"),
        ('sessions = "2"', "'sessions' must be an integer"),
        ("providers = 3", "list of provider names"),
    ):
        with pytest.raises(LockgateError) as refused:
            ModelConfig.from_toml(text)
        assert says in refused.value.message
