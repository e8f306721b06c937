"""Entry point: ``python -m ser_jax.main --config=configs/default.py --workdir=DIR [--stage=all]``.

Stages: ``features`` (corpus -> parquet), ``train`` (parquet -> checkpoints + bundle),
``evaluate`` (bundle + test split -> report), ``all`` (the three in turn), ``cv`` (speaker-grouped
k-fold cross-validation into WORKDIR/cv; not part of ``all``), ``monitor`` (drift of
``--monitor_paths`` against WORKDIR/bundle's reference into WORKDIR/monitor; exits 3 on drift),
``merge_features`` (the shards written by ``features --config.data.num_shards=N
--config.data.shard=K`` -> the features folder), ``tune`` (an Optuna study into WORKDIR/tune,
configs/tune.py) and ``tune_train`` (tune, then train and evaluate the winner).

The config is validated before anything is written; ``WORKDIR/config.json`` is written once a
stage has finished, so it always describes the outputs there. Mistakes end in one line
(``ser-jax: error: ...``, exit 2 for usage, 1 for data); ``--verbose`` adds the traceback.
"""

import os
import sys
from pathlib import Path

import jax
import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from ser_jax.core import distributed
from ser_jax.core.errors import UsageError, run_cli
from ser_jax.core.files import write_json_atomic
from ser_jax.core.process import barrier, is_chief
from ser_jax.evaluation import cv, evaluate
from ser_jax.features import pipeline
from ser_jax.monitoring import run as monitoring
from ser_jax.training import loop
from ser_jax.training.validation import validate_config

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for features, checkpoints, logs and reports.")
flags.DEFINE_enum("stage", "all", ["features", "merge_features", "train", "evaluate", "all", "cv",
                                   "tune", "tune_train", "monitor"], "What to run.")
flags.DEFINE_list("monitor_paths", [], "--stage=monitor: audio files, folders or a features "
                  "parquet to compare with the bundle's training reference.")
flags.mark_flags_as_required(["config", "workdir"])
FEATURES_WAIT_S = 24 * 3600


def load_config() -> ml_collections.ConfigDict:
    """The --config file's config (with overrides); UsageError when it cannot be loaded."""
    try:
        config = FLAGS.config
        config.keys()  # a config file that failed to load raises on first use
        return config
    except (OSError, SyntaxError, AttributeError, ImportError, TypeError, ValueError) as error:
        path = FLAGS["config"].config_filename
        reason = str(error).strip().splitlines()[-1].strip()
        raise UsageError(f"--config={path}: cannot load the config file ({reason}) — give a "
                         "config file such as configs/default.py") from error


def check_workdir(path: str) -> Path:
    """``--workdir`` as a Path; UsageError when it is a file or cannot become a folder."""
    workdir = Path(path).expanduser()
    if workdir.exists() and not workdir.is_dir():
        raise UsageError(f"--workdir={path} is a file, not a folder — give a folder path (it "
                         "is created when missing)")
    parent = next((p for p in [workdir, *workdir.absolute().parents] if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"--workdir={path}: cannot create or write it ({parent} is not a "
                         "writable folder) — choose another --workdir")
    return workdir


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])} — flags look like "
                         "--stage=train; see --helpshort")
    config = load_config()
    workdir = check_workdir(FLAGS.workdir)
    distributed.initialize()  # before any JAX call (validation counts the devices)
    validate_config(config, FLAGS.stage)  # before anything is written
    if config.compilation_cache_dir and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir",
                          str(Path(config.compilation_cache_dir).expanduser()))
    if is_chief():
        workdir.mkdir(parents=True, exist_ok=True)
    logging.info("JAX %s on %d %s device(s); workdir %s", jax.__version__, jax.device_count(),
                 jax.default_backend(), workdir)
    outputs: dict[str, list[str]] = {}

    def finished(stage: str, paths: list[Path]) -> None:
        """Records the config the outputs were made with and says where they are."""
        if is_chief():
            write_json_atomic(workdir / "config.json", config.to_dict())
        outputs[stage] = [str(p) for p in paths if p.exists()]
        print(f"{stage}: outputs in {', '.join(outputs[stage])}", flush=True)

    train_result = report = None
    if FLAGS.stage in ("features", "all") and is_chief():
        finished("features", [pipeline.prepare_features(config, workdir / "features")])
    if FLAGS.stage == "merge_features" and is_chief():
        finished("merge_features", [pipeline.merge_features(config, workdir / "features")])
    # The other processes read what the chief wrote (a features stage may take hours).
    barrier("features", timeout_s=FEATURES_WAIT_S)
    if FLAGS.stage in ("train", "all"):
        train_result = loop.train_and_evaluate(config, workdir)
        finished("train", [workdir / name for name in (
            "bundle", "train_result.json", "metrics.jsonl", "evaluation/training_curves.png",
            "checkpoints")])
    if FLAGS.stage in ("evaluate", "all") and is_chief():  # reads the bundle only
        report = evaluate.evaluate(workdir)
        finished("evaluate", [workdir / "evaluation"])
    if FLAGS.stage == "cv":
        cv.cross_validate(config, workdir)
        finished("cv", [workdir / "cv"])
    if FLAGS.stage in ("tune", "tune_train"):
        from ser_jax.tuning import study  # optuna is in the tuning extra

        if FLAGS.stage == "tune":
            study.run_tune(config, workdir)
            finished("tune", [workdir / "tune"])
        else:
            train_result = study.tune_and_train(config, workdir)
            report = evaluate.evaluate(workdir)
            finished("tune_train", [workdir / "tune", workdir / "bundle", workdir / "evaluation"])
            print(summary(workdir, train_result, report), flush=True)
    if FLAGS.stage == "monitor":
        if not FLAGS.monitor_paths:
            raise UsageError("--stage=monitor needs --monitor_paths=PATH[,PATH...]")
        drift = monitoring.monitor(workdir / "bundle", FLAGS.monitor_paths, workdir / "monitor")
        finished("monitor", [workdir / "monitor"])
        print(f"monitor: {'; '.join(drift['reasons']) or 'no drift'}", flush=True)
        sys.exit(3 if drift["drift"] else 0)
    if FLAGS.stage == "all":
        print(summary(workdir, train_result, report), flush=True)


def summary(workdir: Path, train_result: dict | None, report: dict | None) -> str:
    """The end of a full run: test metrics and where the report, plots and bundle are."""
    lines = ["summary:"]
    if train_result:
        lines.append(f"  best epoch {train_result['best_epoch']} of "
                     f"{train_result['epochs_run']} run")
    if report:
        lines.append(f"  {report['split']} accuracy {report['accuracy']:.3f}, balanced "
                     f"accuracy {report['balanced_accuracy']:.3f}, macro-F1 "
                     f"{report['macro_f1']:.3f} ({report['rows']} rows)")
    evaluation = workdir / "evaluation"
    for name, path in (("report", evaluation / "metrics.json"),
                       ("predictions", evaluation / evaluate.PREDICTIONS_FILE),
                       ("confusion matrix", evaluation / "confusion_matrix.png"),
                       ("training curves", evaluation / "training_curves.png"),
                       ("bundle", workdir / "bundle")):
        if path.exists():
            lines.append(f"  {name + ':':<18}{path}")
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
