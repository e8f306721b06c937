"""Entry point: ``python -m ser_jax.main --config=configs/default.py --workdir=DIR [--stage=all]``.

Stages: ``features`` (corpus -> parquet), ``train`` (parquet -> checkpoints + bundle),
``evaluate`` (bundle + test split -> report), ``all`` (the three in turn), ``cv`` (speaker-grouped
k-fold cross-validation into WORKDIR/cv; not part of ``all``), ``tune`` (an Optuna study into
WORKDIR/tune, configs/tune.py) and ``tune_train`` (tune, then train and evaluate the winner).
"""

import logging as std_logging
import os
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ser_jax import cv, evaluate, prepare, train
from ser_jax.files import write_json_atomic

FLAGS = flags.FLAGS
_PACKAGE_DIR = str(Path(__file__).resolve().parent)
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for features, checkpoints, logs and reports.")
flags.DEFINE_enum("stage", "all",
                  ["features", "train", "evaluate", "all", "cv", "tune", "tune_train"],
                  "What to run.")
flags.mark_flags_as_required(["config", "workdir"])


def _maybe_initialize_distributed() -> None:
    """Joins a multi-host job when the environment names a coordinator (TPU VM slice, GKE)."""
    if any(os.environ.get(name) for name in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
                                              "MEGASCALE_COORDINATOR_ADDRESS")):
        jax.distributed.initialize()


def _only_our_info_messages(record: std_logging.LogRecord) -> bool:
    """Keeps ser_jax's INFO lines and everyone's warnings (Orbax logs every file it writes)."""
    return record.levelno >= std_logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_only_our_info_messages)
    _maybe_initialize_distributed()
    config, workdir = FLAGS.config, Path(FLAGS.workdir)
    if config.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir",
                          str(Path(config.compilation_cache_dir).expanduser()))
    workdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(workdir / "config.json", config.to_dict())
    logging.info("JAX %s on %d %s device(s); workdir %s", jax.__version__, jax.device_count(),
                 jax.default_backend(), workdir)
    if FLAGS.stage in ("features", "all"):
        prepare.prepare_features(config, workdir / "features")
    if FLAGS.stage in ("train", "all"):
        train.train_and_evaluate(config, workdir)
    if FLAGS.stage in ("evaluate", "all"):
        evaluate.evaluate(workdir)
    if FLAGS.stage == "cv":
        cv.cross_validate(config, workdir)
    if FLAGS.stage in ("tune", "tune_train"):
        from ser_jax.tuning import study  # optuna is in the tuning extra

        if FLAGS.stage == "tune":
            study.run_tune(config, workdir)
        else:
            study.tune_and_train(config, workdir)
            evaluate.evaluate(workdir)


if __name__ == "__main__":
    app.run(main)
