"""The trainer command line of each pipeline stage (the same list for pods and the local launcher).

Wired today: ``features`` (with one shard), ``train``, ``evaluate`` (``python -m ser_jax.main``).
Waiting for other branches (the commands are built, the trainer does not accept them yet):
sharded features (``--config.data.shard=K --config.data.num_shards=N``, then
``--stage=merge_features``) and ``--stage=tune`` (``--config.tune.storage``,
``--config.tune.trials``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ser_jax_dag.params import RunParams, run_dir

OPTUNA_STORAGE_ENV = "OPTUNA_STORAGE"
"""The Optuna database URL reaches tune pods only as this env var (from a Kubernetes Secret or,
locally, an Airflow Connection); the command names it as ``$(OPTUNA_STORAGE)``, which
Kubernetes expands, so the password never appears in a pod spec or a task log."""

STAGES = ("features", "merge_features", "tune", "train", "evaluate")


def trainer(params: RunParams, run: str, stage: str, python: str = "python") -> list[str]:
    """``python -m ser_jax.main --config=... --workdir=ROOT/runs/RUN --stage=STAGE [overrides]``."""
    return [python, "-m", "ser_jax.main", f"--config={params.config}",
            f"--workdir={run_dir(params.root, run)}", f"--stage={stage}",
            *params.config_overrides]


def features(params: RunParams, run: str, shard: int, python: str = "python") -> list[str]:
    """Features of shard ``shard`` of ``params.shards``; one shard is the plain features stage."""
    if not 0 <= shard < params.shards:
        raise ValueError(f"shard {shard} is outside 0..{params.shards - 1}")
    command = trainer(params, run, "features", python)
    if params.shards > 1:
        command += [f"--config.data.shard={shard}", f"--config.data.num_shards={params.shards}"]
    return command


def merge_features(params: RunParams, run: str, python: str = "python") -> list[str] | None:
    """Merges the shards' features into one feature folder; None with one shard (nothing to do)."""
    if params.shards == 1:
        return None
    return trainer(params, run, "merge_features", python) + [
        f"--config.data.num_shards={params.shards}"]


def tune(params: RunParams, run: str, python: str = "python") -> list[str]:
    """One tune worker: every worker joins the same study in the Optuna database."""
    return trainer(params, run, "tune", python) + [
        f"--config.tune.storage=$({OPTUNA_STORAGE_ENV})",
        f"--config.tune.trials={params.tune_trials}"]


def train(params: RunParams, run: str, python: str = "python") -> list[str]:
    return trainer(params, run, "train", python)


def evaluate(params: RunParams, run: str, python: str = "python") -> list[str]:
    return trainer(params, run, "evaluate", python)


def expand_env_references(command: list[str], env: Mapping[str, str]) -> list[str]:
    """Expands ``$(NAME)`` as Kubernetes does for container args (for the local launcher).

    A reference to a variable that is not set is an error here (Kubernetes would leave it as is
    and the trainer would get a literal ``$(NAME)``).
    """
    def substitute(match: re.Match) -> str:
        name = match.group(1)
        if name not in env:
            raise KeyError(f"command refers to $({name}) but {name} is not set")
        return env[name]

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", substitute, arg) for arg in command]
