"""The pipeline's run parameters: one typed, validated record built from the DAG run's params.

Airflow checks each param's JSON schema when a run is triggered; :func:`RunParams.from_dict`
repeats the per-field checks (so the same rules hold outside Airflow) and adds the rules that
span fields (a GPU needs an accelerator type, a TPU a topology, ...). Every error names the
param and says what to pass instead.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

LAUNCHERS = ("gke", "kubernetes", "local")
HARDWARE = ("cpu", "gpu", "tpu")
ON_INCOMPARABLE = ("fail", "threshold_only")
_RUN_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_TOPOLOGY = re.compile(r"^[0-9]+(x[0-9]+){1,2}$")
_OVERRIDE = re.compile(r"^--config\.[A-Za-z0-9_.]+=.*$")


class ParamError(ValueError):
    """A run parameter is missing, of the wrong type or out of range."""


@dataclasses.dataclass(frozen=True)
class RunParams:
    """Everything one pipeline run needs to know that is not an environment fact."""

    launcher: str = "gke"
    root: str = ""  # absolute folder or gs://bucket[/prefix]: holds runs/ and models/
    run_name: str = ""  # '' -> derived from the Airflow run id
    config: str = "configs/default.py"  # relative to the repo (the image's working directory)
    config_overrides: tuple[str, ...] = ()  # extra '--config.x=y' flags for every stage
    image: str = ""  # '' -> Variable ser_jax_image_<cpu|gpu|tpu>
    hardware: str = "gpu"  # train / tune hardware; features always run on CPU pods
    accelerator: str = "nvidia-l4"  # GKE accelerator type (nvidia-*, tpu-*)
    accelerator_count: int = 1  # GPUs per pod, or TPU chips per host
    tpu_topology: str = ""  # e.g. '2x4'; required for tpu
    tpu_hosts: int = 1  # > 1: a multi-host slice run as an indexed Job of this many pods
    cpu: str = "4"  # CPU request of every pod
    memory: str = "16Gi"  # memory request and limit of every pod
    shards: int = 1  # feature shards (one CPU pod each); 1 = a plain features stage
    tune_workers: int = 0  # tune pods on one Optuna study; 0 (or tune_trials 0) skips tuning
    tune_trials: int = 0
    threshold: float = 0.5  # the candidate's test balanced accuracy must reach this
    on_incomparable_champion: str = "fail"  # champion tested on other speakers: or threshold_only
    local_python: str = ""  # local launcher: interpreter that runs ser_jax ('' -> sys.executable)
    local_repo: str = ""  # local launcher: working directory holding configs/ ('' -> cwd)

    @property
    def tune_enabled(self) -> bool:
        return self.tune_workers > 0 and self.tune_trials > 0

    @property
    def multi_host(self) -> bool:
        return self.hardware == "tpu" and self.tpu_hosts > 1

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunParams:
        """Builds and validates the record; unknown keys are an error (a typo must not pass)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ParamError(f"unknown param(s) {unknown}; known: {sorted(fields)}")
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            default = fields[name].default
            if isinstance(default, tuple):
                if isinstance(value, str):
                    value = [value] if value else []
                if not isinstance(value, list | tuple) or not all(
                        isinstance(v, str) for v in value):
                    raise ParamError(f"param {name}={value!r}: give a list of strings")
                value = tuple(value)
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ParamError(f"param {name}={value!r}: give an integer")
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ParamError(f"param {name}={value!r}: give a number")
                value = float(value)
            elif not isinstance(value, str):
                raise ParamError(f"param {name}={value!r}: give a string")
            kwargs[name] = value
        params = cls(**kwargs)
        params.validate()
        return params

    def validate(self) -> None:
        """Raises ParamError naming the first param that is out of range."""
        _choice("launcher", self.launcher, LAUNCHERS)
        _choice("hardware", self.hardware, HARDWARE)
        _choice("on_incomparable_champion", self.on_incomparable_champion, ON_INCOMPARABLE)
        if not (self.root.startswith("gs://") and len(self.root) > 5
                or self.root.startswith("/")):
            raise ParamError(f"param root={self.root!r}: give an absolute folder or gs://bucket")
        if self.run_name and not _RUN_NAME.match(self.run_name):
            raise ParamError(f"param run_name={self.run_name!r}: lower-case letters, digits and "
                             "'-', at most 40 characters (it names pods and folders)")
        if not self.config.endswith(".py"):
            raise ParamError(f"param config={self.config!r}: give a configs/*.py file")
        for override in self.config_overrides:
            if not _OVERRIDE.match(override):
                raise ParamError(f"param config_overrides: {override!r} is not "
                                 "'--config.FIELD=VALUE'")
        for name in ("cpu", "memory"):
            if not _QUANTITY.match(getattr(self, name)):
                raise ParamError(f"param {name}={getattr(self, name)!r}: give a Kubernetes "
                                 "quantity such as '4', '500m' or '16Gi'")
        _range("accelerator_count", self.accelerator_count, 1, 16)
        _range("tpu_hosts", self.tpu_hosts, 1, 256)
        _range("shards", self.shards, 1, 256)
        _range("tune_workers", self.tune_workers, 0, 64)
        _range("tune_trials", self.tune_trials, 0, 10_000)
        if not 0.0 <= self.threshold <= 1.0:
            raise ParamError(f"param threshold={self.threshold}: give a balanced accuracy in "
                             "[0, 1]")
        if self.hardware == "gpu" and not self.accelerator.startswith("nvidia-"):
            raise ParamError(f"param accelerator={self.accelerator!r}: hardware=gpu needs a GKE "
                             "GPU type such as 'nvidia-l4' or 'nvidia-h100-80gb'")
        if self.hardware == "tpu":
            if not self.accelerator.startswith("tpu-"):
                raise ParamError(f"param accelerator={self.accelerator!r}: hardware=tpu needs a "
                                 "GKE TPU type such as 'tpu-v5-lite-podslice'")
            if not _TOPOLOGY.match(self.tpu_topology):
                raise ParamError(f"param tpu_topology={self.tpu_topology!r}: hardware=tpu needs "
                                 "a topology such as '2x4'")
        elif self.tpu_hosts != 1:
            raise ParamError(f"param tpu_hosts={self.tpu_hosts}: only hardware=tpu runs on "
                             "several hosts")
        if self.tune_trials > 0 and self.tune_workers == 0:
            raise ParamError("param tune_trials > 0 needs tune_workers >= 1 (or set "
                             "tune_trials=0 to skip tuning)")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ParamError(f"param {name}={value!r}: choose one of {', '.join(choices)}")


def _range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ParamError(f"param {name}={value}: give an integer in [{low}, {high}]")


def run_name_from_run_id(run_id: str) -> str:
    """A folder- and pod-safe name for an Airflow run id (stable: a cleared run resumes).

    ``manual__2026-12-02T10:40:00.123+00:00`` -> ``manual-20261202t104000123``.
    """
    kind, _, stamp = run_id.partition("__")
    stamp = re.sub(r"\+00:?00$", "", stamp)
    name = re.sub(r"[^a-z0-9]+", "-", f"{kind}-{re.sub(r'[-:.]', '', stamp)}".lower()).strip("-")
    return name[:40].rstrip("-") or "run"


def run_dir(root: str, run: str) -> str:
    """The trainer's --workdir for one run."""
    return f"{root.rstrip('/')}/runs/{run}"


def models_dir(root: str) -> str:
    return f"{root.rstrip('/')}/models"
