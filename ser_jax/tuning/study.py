"""The tune stage: an Optuna study whose trials are real training runs scored on held-out speakers.

    WORKDIR/features/            the features stage's output, extracted once per study (reused by
                                 fingerprint, and by the train stage of tune_train)
    WORKDIR/tune/dev_features/   its train and val files only (links): what every trial reads, so
                                 the test speakers never enter the objective
    WORKDIR/tune/folds/fold_XX/  with tune.folds=k: fold features of the non-test speakers, built
                                 from the cv stage's clip cache (WORKDIR/cv/clip_features)
    WORKDIR/tune/trial_NNNN/     one training workdir per trial (fold_XX/ inside with tune.folds)
    WORKDIR/tune/journal.log     the study (default storage; a killed study resumes from it)
    WORKDIR/tune/best_trials.csv, importances.json, history.png, importances.png
    WORKDIR/tune/best_config.py  the winner as a config file the train and cv stages accept
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import ml_collections
import numpy as np
import optuna
import sqlalchemy.exc
from absl import logging
from optuna.storages import journal
from optuna.trial import TrialState
from tqdm import tqdm

from ser_jax.core.files import atomic_directory
from ser_jax.data.labels import label_names
from ser_jax.evaluation import cv
from ser_jax.features import clip_cache, pipeline
from ser_jax.features.scaler import SEQUENCE_SCALER_FILE
from ser_jax.training import loop
from ser_jax.tuning import report, space

METRICS = {"balanced_accuracy": "maximize", "val_loss": "minimize"}
FAIL_REASON = "fail_reason"
SCHEMA_ATTEMPTS = 5
# What a trial reads: the train and val files of a features folder (never test.*).
_DEV_FILES = ("train.parquet", "val.parquet", "train.sequences.npy", "val.sequences.npy",
              "labels.json", "scaler.json", SEQUENCE_SCALER_FILE, "manifest.json")


# --------------------------------------------------------------------------- study


def journal_path(workdir: Path) -> Path:
    return workdir / "tune" / "journal.log"


def make_storage(config: ml_collections.ConfigDict, workdir: Path) -> optuna.storages.BaseStorage:
    """The journal file in the workdir ('' storage) or a database with heartbeats."""
    tune = config.tune
    if not tune.storage:
        path = journal_path(workdir)
        path.parent.mkdir(parents=True, exist_ok=True)
        return journal.JournalStorage(journal.JournalFileBackend(str(path)))
    # Workers that start together on an empty database race to create Optuna's tables (one
    # gets a unique-violation on CREATE TYPE); the loser finds them made on its next try.
    def connect() -> optuna.storages.RDBStorage:
        return optuna.storages.RDBStorage(
            tune.storage, heartbeat_interval=tune.heartbeat_interval,
            grace_period=tune.grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback())

    for attempt in range(SCHEMA_ATTEMPTS - 1):
        try:
            return connect()
        except sqlalchemy.exc.IntegrityError:
            time.sleep(0.5 * (attempt + 1))
    return connect()


def make_pruner(tune: ml_collections.ConfigDict) -> optuna.pruners.BasePruner:
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tune.pruner_startup_trials,
                                           n_warmup_steps=tune.pruner_warmup_epochs)
    if tune.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if tune.pruner == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"tune.pruner={tune.pruner!r}; valid: median, successive_halving, "
                     "hyperband, none")


def open_study(config: ml_collections.ConfigDict, workdir: Path,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Creates or loads the study ``tune.study_name`` with a TPE sampler.

    The sampler's seed is ``config.seed`` plus the number of trials the study already holds, so
    a study on one worker is reproducible and a resumed one does not draw its first trials'
    parameters again. With database storage each worker also adds random bits: workers that
    start together must not draw the same parameters.
    """
    if config.tune.metric not in METRICS:
        raise ValueError(f"tune.metric={config.tune.metric!r}; valid: {', '.join(METRICS)}")
    study = optuna.create_study(
        storage=make_storage(config, workdir), study_name=config.tune.study_name,
        direction=METRICS[config.tune.metric], load_if_exists=True,
        pruner=pruner or make_pruner(config.tune))
    seed = config.seed + len(study.get_trials(deepcopy=False))
    if config.tune.storage:
        seed += int.from_bytes(os.urandom(3), "little")
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    return study


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Journal storage only (one worker): trials left RUNNING by a killed worker are failed so
    the study resumes cleanly. A database fails them itself, by heartbeat."""
    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in orphans:
        study._storage.set_trial_user_attr(  # noqa: SLF001 - the public storage API of the study
            trial._trial_id, FAIL_REASON, "left RUNNING by a killed worker (journal storage)")
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)  # noqa: SLF001
    return [t.number for t in orphans]


# --------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class TuneData:
    """The features folders a trial trains and validates on: one (val split) or k (folds)."""

    names: tuple[str, ...]  # '' for the val split, fold_XX per fold
    dirs: tuple[Path, ...]


def dev_features(features_dir: Path, out_dir: Path) -> Path:
    """``out_dir`` holding links to ``features_dir``'s train and val files only."""
    with atomic_directory(out_dir) as staging:
        for name in _DEV_FILES:
            if (features_dir / name).exists():
                (staging / name).symlink_to((features_dir / name).resolve())
    return out_dir


def prepare_data(config: ml_collections.ConfigDict, workdir: Path) -> TuneData:
    """Extracts features once per study and returns what the trials read."""
    tune_dir = workdir / "tune"
    if config.tune.folds:
        return _fold_data(config, workdir)
    features_dir = pipeline.prepare_features(config, workdir / "features")
    return TuneData(("",), (dev_features(features_dir, tune_dir / "dev_features"),))


def _fold_data(config: ml_collections.ConfigDict, workdir: Path) -> TuneData:
    """k speaker-grouped folds of the non-test speakers: fold j validates on group j and trains on
    the others; features from the cv stage's clip cache."""
    recipe = pipeline.parse_recipe(config.data.augment.recipe)
    labels = label_names(config.data)
    clip_features = clip_cache.clip_features(config, workdir / "cv" / "clip_features",
                                          [*recipe, "none"], workdir)
    test = {s.strip() for s in config.data.split.test_speakers.split(",") if s.strip()}
    if not test:
        raise ValueError("tune.folds needs data.split.test_speakers: the speakers the study must "
                         "never see (the folds are built from all the others)")
    dev_clips = [c for c in clip_features.clips if c.speaker not in test]
    groups = cv.assign_speakers(dev_clips, config.tune.folds, config.seed)
    names, dirs = [], []
    for j, val in enumerate(groups):
        rest = tuple(sorted(s for k, g in enumerate(groups) if k != j for s in g))
        fold = cv.Fold(j, rest, tuple(val), ())
        fingerprint = hashlib.sha256(json.dumps(
            {"features": clip_features.fingerprint, "recipe": recipe, "labels": labels,
             "fold": dataclasses.asdict(fold)}, sort_keys=True).encode()).hexdigest()
        out = workdir / "tune" / "folds" / f"fold_{j:02d}"
        if _manifest_fingerprint(out) != fingerprint:
            cv.write_fold_features(clip_features, fold, recipe, labels, out, fingerprint)
        names.append(f"fold_{j:02d}")
        dirs.append(out)
    return TuneData(tuple(names), tuple(dirs))


def _manifest_fingerprint(directory: Path) -> str | None:
    try:
        return json.loads((directory / "manifest.json").read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


# --------------------------------------------------------------------------- objective


def score(metric: str, result: dict) -> float:
    """The trial's value: the best epoch's val_loss or balanced accuracy on the validation rows
    (train_and_evaluate scores the best epoch's weights)."""
    return float(result["val"]["loss" if metric == "val_loss" else "balanced_accuracy"])


def make_objective(config: ml_collections.ConfigDict, data: TuneData, trials_dir: Path
                   ) -> Callable[[optuna.Trial], float]:
    """Each trial: sample the space, train on every features folder of ``data`` (reporting each
    epoch and pruning), return the (mean) score. A failure is stored as the trial's
    ``fail_reason`` and raised, so ``optimize(catch=...)`` records it FAIL."""
    dims = space.dimensions(config)
    metric = config.tune.metric
    epochs = config.train.epochs

    def objective(trial: optuna.Trial) -> float:
        trial_config = space.apply(config, dims, space.suggest(trial, dims))
        trial_dir = trials_dir / f"trial_{trial.number:04d}"
        shutil.rmtree(trial_dir, ignore_errors=True)  # a retried number never resumes old files
        scores = []
        try:
            for j, (name, features_dir) in enumerate(zip(data.names, data.dirs, strict=True)):
                run_dir = trial_dir / name if name else trial_dir

                def on_epoch(record: dict, j: int = j) -> None:  # the loop stops on a NaN loss
                    value = (record["val_loss"] if metric == "val_loss"
                             else record["val_balanced_accuracy"])
                    trial.report(value, step=j * epochs + record["epoch"])
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

                result = loop.train_and_evaluate(trial_config, run_dir, features_dir,
                                                  on_epoch=on_epoch)
                scores.append(score(metric, result))
                trial.set_user_attr(f"{name or 'val'}_{metric}", scores[-1])
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the bundle stays
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr(FAIL_REASON, "interrupted (SIGINT)")
            raise
        except Exception as error:
            trial.set_user_attr(FAIL_REASON, f"{type(error).__name__}: {error}"[:1000])
            raise
        value = float(np.mean(scores))
        if not math.isfinite(value):
            trial.set_user_attr(FAIL_REASON, f"non-finite {metric}: {value}")
            raise FloatingPointError(f"non-finite {metric}: {value}")
        return value

    return objective


# --------------------------------------------------------------------------- progress


def trial_line(trial: optuna.trial.FrozenTrial) -> str:
    """One line per finished trial: number, state, value, elapsed, params (and why it failed)."""
    elapsed = (trial.datetime_complete - trial.datetime_start).total_seconds() if (
        trial.datetime_complete and trial.datetime_start) else float("nan")
    value = f"{trial.value:.4f}" if trial.value is not None else "-"
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        value = f"- (last {trial.intermediate_values[max(trial.intermediate_values)]:.4f})"
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    line = (f"trial {trial.number:4d} {trial.state.name:<8} value {value:<16} "
            f"{elapsed:7.1f} s  {params}")
    if trial.state == TrialState.FAIL:
        line += f"  [{trial.user_attrs.get(FAIL_REASON, 'no reason recorded')}]"
    return line


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """A tqdm bar over this worker's trials plus one printed line per finished trial."""

    def __init__(self, total: int):
        self.bar = tqdm(total=total, unit="trial", desc="tune")

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.bar.write(trial_line(trial))
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------- run


def optimize(config: ml_collections.ConfigDict, workdir: Path, study: optuna.Study,
             data: TuneData) -> None:
    """Runs ``tune.trials`` trials of this worker (fewer when ``tune.total_trials`` is reached)."""
    tune = config.tune
    if tune.vmap_trials:
        raise ValueError("tune.vmap_trials is not implemented: trials run one by one (vmapped "
                         "trials are slower on CPU, see docs/benchmarks.md); set it to False")
    if not tune.storage:
        orphans = fail_orphaned_trials(study)
        if orphans:
            logging.warning("tune: trials %s were left RUNNING by a killed worker; marked FAIL",
                            orphans)
    callbacks: list = []
    if tune.total_trials:
        # Counts finished and running trials of every worker; checked after each trial.
        callbacks.append(optuna.study.MaxTrialsCallback(
            tune.total_trials, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                       TrialState.RUNNING)))
    trials = tune.trials
    if tune.total_trials:
        done = len(study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)))
        trials = max(0, min(trials, tune.total_trials - done))
    if not trials:
        return
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # Progress prints one line per trial
    progress = Progress(trials)
    try:
        study.optimize(make_objective(config, data, workdir / "tune"), n_trials=trials,
                       catch=(Exception,), callbacks=[progress, *callbacks])
    finally:
        progress.close()


def run_tune(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """The tune stage: features once, this worker's trials, then the report and best config."""
    workdir = Path(workdir)
    space.dimensions(config)  # a bad space fails before any extraction
    started = time.perf_counter()
    data = prepare_data(config, workdir)
    study = open_study(config, workdir)
    optimize(config, workdir, study, data)
    summary = report.report(config, workdir, study)
    summary["seconds"] = time.perf_counter() - started
    return summary


def tune_and_train(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """The tune_train stage: tune, then train and evaluate the winner in ``workdir`` (its
    features folder is the one the study used)."""
    workdir = Path(workdir)
    summary = run_tune(config, workdir)
    if "best_trial" not in summary:
        raise RuntimeError(f"the study {summary['study']!r} has no complete trial to train; "
                           "run more trials (tune.trials)")
    best = json.loads((workdir / "tune" / "best_params.json").read_text())
    final = space.apply_overrides(config, best["overrides"])
    pipeline.prepare_features(final, workdir / "features")  # reused unless tune.folds was set
    result = loop.train_and_evaluate(final, workdir)
    return {"tune": summary, "train": result}
