"""A model version's serving configuration: `config.toml` in its registry folder, set at
registration (`--config FILE.toml`) and changed with `lockgate models config NAME VERSION --set
KEY=VALUE`. Every key is optional; a value of 0 means "the server's setting".

    batchable = "auto"          # auto | true | false: concatenate requests on axis 0
    max_batch_rows = 0          # rows per model run when batching (0: --max-batch-rows)
    providers = ["CPUExecutionProvider"]
    provider_fallback = false   # an unavailable provider: fall back to the available ones
    intra_op_threads = 0        # onnxruntime threads (0: the server's)
    inter_op_threads = 0
    graph_optimization = "all"  # disable | basic | extended | all
    sessions = 1                # sessions (concurrent runs) per loaded version
    warmup_samples = 8          # rows (or requests, without a batch dimension) warm-up feeds;
                                # 0: no warm-up run at all
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from lockgate.errors import invalid

BATCHABLE = ("auto", "true", "false")
GRAPH_OPTIMIZATION = ("disable", "basic", "extended", "all")
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
MAX_SESSIONS = 64


@dataclass(frozen=True, slots=True)
class ModelConfig:
    batchable: str = "auto"
    max_batch_rows: int = 0
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    provider_fallback: bool = False
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: str = "all"
    sessions: int = 1
    warmup_samples: int = 8

    def __post_init__(self) -> None:
        _check_choice("batchable", self.batchable, BATCHABLE)
        _check_choice("graph_optimization", self.graph_optimization, GRAPH_OPTIMIZATION)
        for name in ("max_batch_rows", "intra_op_threads", "inter_op_threads", "warmup_samples"):
            _check_int(name, getattr(self, name), 0)
        _check_int("sessions", self.sessions, 1, MAX_SESSIONS)
        if not self.providers or not all(isinstance(p, str) and p for p in self.providers):
            raise invalid("model config 'providers' must be a non-empty list of provider names")
        if not isinstance(self.provider_fallback, bool):
            raise invalid("model config 'provider_fallback' must be true or false")

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(doc.keys() - known)
        if unknown:
            names = ", ".join(sorted(known))
            raise invalid(f"unknown model config key(s) {', '.join(unknown)} (known: {names})")
        values = dict(doc)
        if "batchable" in values and isinstance(values["batchable"], bool):
            values["batchable"] = "true" if values["batchable"] else "false"
        if "providers" in values:
            providers = values["providers"]
            if isinstance(providers, str):
                providers = [providers]
            if not isinstance(providers, list | tuple):
                raise invalid("model config 'providers' must be a list of provider names")
            values["providers"] = tuple(providers)
        return cls(**values)

    @classmethod
    def from_toml(cls, text: str, source: str = "model config") -> ModelConfig:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise invalid(f"{source} is not valid TOML: {exc}") from None
        return cls.from_dict(doc)

    def with_setting(self, item: str) -> ModelConfig:
        """This configuration with one `KEY=VALUE` (as typed on a command line) changed."""
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise invalid(f"--set expects KEY=VALUE, got {item!r}")
        kinds = {f.name: f.type for f in fields(self)}
        if key not in kinds:
            raise invalid(f"unknown model config key {key!r} (known: {', '.join(sorted(kinds))})")
        value: Any = text
        current = getattr(self, key)
        if isinstance(current, bool):
            if text.lower() not in ("true", "false"):
                raise invalid(f"model config {key!r} must be true or false, got {text!r}")
            value = text.lower() == "true"
        elif isinstance(current, int):
            if not text.isascii() or not text.isdigit():
                raise invalid(f"model config {key!r} must be a non-negative integer, got {text!r}")
            value = int(text)
        elif isinstance(current, tuple):
            value = tuple(p.strip() for p in text.split(",") if p.strip())
        elif key == "batchable":
            value = text.lower()
        return replace(self, **{key: value})

    # -- writing -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["providers"] = list(self.providers)
        return doc

    def to_toml(self) -> str:
        """Every key, one per line (TOML that `from_toml` reads back to an equal config)."""
        lines = []
        for key, value in self.to_json().items():
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise invalid(f"model config {name!r} must be one of {', '.join(choices)}, got {value!r}")


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise invalid(f"model config {name!r} must be an integer >= {low}, got {value!r}")
    if high is not None and value > high:
        raise invalid(f"model config {name!r} must be at most {high}, got {value}")
