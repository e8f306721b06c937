"""The search space, declared once in the config (``tune.spaces``): sampling and overriding.

Each dimension names the config field it sets (``key``, e.g. ``model.filters``); the Optuna
sampler calls (:func:`suggest`) and the final config (:func:`apply`) are both derived from it,
as is the best-parameters config file (:func:`write_best_config`).
"""

from __future__ import annotations

import dataclasses
import pprint
from pathlib import Path
from typing import Any

import ml_collections
import optuna

from ser_jax.core.files import write_bytes_atomic, write_json_atomic

KINDS = ("int", "float", "log_float", "categorical")


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One hyperparameter: its name in the study, the config key it sets and its range."""

    name: str
    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        if self.kind in ("float", "log_float"):
            return trial.suggest_float(self.name, float(self.low), float(self.high),
                                       log=self.kind == "log_float")
        return trial.suggest_categorical(self.name, list(self.choices))


def dimensions(config: ml_collections.ConfigDict) -> list[Dimension]:
    """The space for ``config.model.name`` from ``config.tune.spaces``, validated."""
    spaces = config.tune.spaces
    name = config.model.name
    if name not in spaces:
        raise ValueError(f"tune.spaces has no space for model.name={name!r}; it has "
                         f"{', '.join(spaces.keys())}. Add tune.spaces.{name} to the config.")
    dims = []
    for dim_name, spec in spaces[name].items():
        where = f"tune.spaces.{name}.{dim_name}"
        dim = Dimension(dim_name, spec.key, spec.kind, spec.get("low", 0.0),
                        spec.get("high", 0.0), tuple(spec.get("choices", ())))
        if dim.kind not in KINDS:
            raise ValueError(f"{where}.kind={dim.kind!r}; valid: {', '.join(KINDS)}")
        if dim.kind == "categorical" and not dim.choices:
            raise ValueError(f"{where}: a categorical dimension needs choices")
        if dim.kind != "categorical" and not dim.low <= dim.high:
            raise ValueError(f"{where}: low={dim.low} is above high={dim.high}")
        if dim.kind == "log_float" and dim.low <= 0:
            raise ValueError(f"{where}: a log_float dimension needs low > 0, got {dim.low}")
        _parent_and_field(config, dim.key, where)  # the key must name an existing field
        dims.append(dim)
    return dims


def _parent_and_field(config: ml_collections.ConfigDict, key: str,
                      where: str) -> tuple[ml_collections.ConfigDict, str]:
    *path, field = key.split(".")
    node = config
    for part in path:
        node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or field not in node:
        raise ValueError(f"{where}.key={key!r} names no field of the config")
    return node, field


def suggest(trial: optuna.Trial, dims: list[Dimension]) -> dict[str, Any]:
    """Asks the trial for one value per dimension."""
    return {dim.name: dim.suggest(trial) for dim in dims}


def overrides(dims: list[Dimension], params: dict[str, Any]) -> dict[str, Any]:
    """``{config key: value}`` for a trial's parameters."""
    return {dim.key: params[dim.name] for dim in dims}


def apply(config: ml_collections.ConfigDict, dims: list[Dimension],
          params: dict[str, Any]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the parameters set."""
    return apply_overrides(config, overrides(dims, params))


def apply_overrides(config: ml_collections.ConfigDict,
                    values: dict[str, Any]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``{dotted key: value}`` set (float fields accept ints)."""
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in values.items():
        node, field = _parent_and_field(config, key, "override")
        if isinstance(node[field], float) and isinstance(value, int):
            value = float(value)
        node[field] = value
    return config


BEST_CONFIG_TEMPLATE = '''"""The tune stage's winner: study {study!r}, trial {number},
{metric} {value:.4f}.

The study's full config (study_config.json beside this file) with the best parameters set.
Use it as any config: --config={path} --stage=train (or cv), plus --config.* overrides.
"""

import json
from pathlib import Path

import ml_collections

from ser_jax.tuning import space

OVERRIDES = {overrides}


def get_config() -> ml_collections.ConfigDict:
    base = json.loads(Path(__file__).with_name("study_config.json").read_text())
    return space.apply_overrides(ml_collections.ConfigDict(base), OVERRIDES)
'''


def write_best_config(directory: Path, config: ml_collections.ConfigDict,
                      dims: list[Dimension], trial: optuna.trial.FrozenTrial,
                      study_name: str, metric: str) -> Path:
    """Writes ``best_config.py`` (+ ``study_config.json``, + ``best_params.json``) into
    ``directory``; returns the .py path."""
    values = overrides(dims, trial.params)
    write_json_atomic(directory / "study_config.json", config.to_dict())
    write_json_atomic(directory / "best_params.json",
                      {"study": study_name, "trial": trial.number, "value": trial.value,
                       "metric": metric, "params": trial.params, "overrides": values})
    path = directory / "best_config.py"
    text = BEST_CONFIG_TEMPLATE.format(study=study_name, number=trial.number, metric=metric,
                                       value=trial.value, path=path,
                                       overrides=pprint.pformat(values, sort_dicts=False))
    write_bytes_atomic(path, text.encode())
    return path
