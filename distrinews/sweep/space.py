"""A sweep's search space: a small YAML file mapping training options to a range or a list of choices.

    learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}     # a float option: uniform, or log-uniform with log
    num_train_epochs: {low: 1, high: 4, step: 1}              # step: only multiples of it above low
    warmup_ratio: {low: 0.0, high: 0.2}
    max_length: {low: 64, high: 256, log: true}               # an int option: integers in [low, high]
    model_name_or_path: {choices: [distilbert-base-uncased, prajjwal1/bert-small]}

Each key is a ``distrinews train`` option (a ``TrainConfig`` field, distrinews/training/config.py); the option's type
says whether low and high are floats or integers, and its bounds and choices are checked here, with the other
options the sweep fixes, before any trial starts: one line names the file, the option and what is wrong.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import ConfigError
from ..training.config import FREE, TrainConfig

RANGE_KEYS = {"low", "high", "log", "step"}


@dataclass(frozen=True)
class Param:
    """One searched option: a range of ``kind`` (float or int) from ``low`` to ``high``, or ``choices``."""

    name: str
    kind: str  # "float", "int" or "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """This option's value for an Optuna ``trial`` (a trial that already has it, a resumed one, keeps it)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict:
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, **({"step": self.step} if self.step else {})}


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    params: tuple[Param, ...]

    def suggest(self, trial) -> dict[str, Any]:
        return {param.name: param.suggest(trial) for param in self.params}

    def to_dict(self) -> dict[str, dict]:
        return {param.name: param.to_dict() for param in self.params}


def load_search_space(path: str | Path, fixed: dict[str, Any]) -> SearchSpace:
    """Read and check the search space in ``path``; ``fixed`` holds the training options every trial shares (as
    given, not yet checked). Raises ConfigError naming the file and the option."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"search space {path} is not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"search space {path} must map at least one training option to {{low: ..., high: ...}} "
                          "or {choices: [...]}")
    return SearchSpace(path, tuple(_param(path, str(name), spec, fixed) for name, spec in data.items()))


def _param(path: Path, name: str, spec: Any, fixed: dict[str, Any]) -> Param:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    where = f"search space {path}: {name}"
    if name not in fields:
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f" (did you mean {close[0]}?)" if close else " (`distrinews train --help` lists the options)"
        raise ConfigError(f"search space {path}: unknown option {name!r}{hint}")
    if fields[name].metadata["resume"] == FREE:
        raise ConfigError(f"{where}: this option does not change what a trial trains or how it is scored on "
                          "validation (where files go, logging, the Hub, workers): it cannot be searched")
    if name in fixed:
        raise ConfigError(f"{where}: the option is also given on the command line or in --config; give it in one "
                          "place")
    if not isinstance(spec, dict) or not (set(spec) == {"choices"} or {"low", "high"} <= set(spec) <= RANGE_KEYS):
        raise ConfigError(f"{where}: expected {{low: ..., high: ...}} (with log: true or step: ... if wanted) or "
                          f"{{choices: [...]}}, not {spec!r}")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list")
        values = tuple(_checked(where, name, value, fixed) for value in choices)
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: choices must be distinct, not {choices!r}")
        return Param(name, "categorical", choices=values)
    return _range(where, name, fields[name], spec, fixed)


def _range(where: str, name: str, field: dataclasses.Field, spec: dict, fixed: dict[str, Any]) -> Param:
    kind = getattr(field.type, "__name__", field.type)
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}: a {kind} option takes {{choices: [...]}}, not a range")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, not {log!r}")
    low, high = (_checked(where, name, spec[end], fixed, end) for end in ("low", "high"))
    step = spec.get("step")
    if step is not None:
        step = _number(where, "step", step, kind)
        if step <= 0 or log:
            raise ConfigError(f"{where}: step={step!r} must be > 0, and cannot go with log: true")
    if not low < high:
        raise ConfigError(f"{where}: low={low!r} must be below high={high!r} (one value: give it as a fixed option)")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0, not {low!r}")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _checked(where: str, name: str, value: Any, fixed: dict[str, Any], end: str = "") -> Any:
    """``value`` as the option's type, checked against its bounds and choices together with the fixed options."""
    label = f"{end}={value!r}" if end else repr(value)
    try:
        return getattr(TrainConfig(**{**fixed, name: value}), name)
    except ConfigError as err:
        rule = re.sub(rf"^{name}=[^:]*: ", "", str(err))  # the option's own rule; another option's error stays whole
        raise ConfigError(f"{where}: {label}: {rule}") from None


def _number(where: str, what: str, value: Any, kind: str) -> float | int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {what}={value!r} must be a number") from None
    if kind == "int":
        if not number.is_integer():
            raise ConfigError(f"{where}: {what}={value!r} must be an integer")
        return int(number)
    return number
