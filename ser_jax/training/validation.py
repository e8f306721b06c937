"""Config validation before any work: every value a run will use is checked up front, so no
stage fails halfway on a value that was wrong from the start and no half-made workdir is left.

It sits in the training layer because it checks names that the lower layers define (corpora,
augmentations, models); :func:`validate_config` raises one :class:`UsageError` listing every
problem, each with the flag to change.
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections

from ser_jax.core.errors import UsageError
from ser_jax.core.lists import parse_list
from ser_jax.data.audio import CLIPPING_ACTIONS, SHORT_ACTIONS
from ser_jax.data.corpora import PARSERS
from ser_jax.features.augment import AUGMENTATIONS
from ser_jax.models import registry
from ser_jax.training import batch_augment
from ser_jax.training import input as host_input

LOOPS = ("auto", "step", "scan")
COMPUTE_DTYPES = ("float32", "bfloat16")
SPLIT_MODES = ("speaker", "file")


def validate_config(config: ml_collections.ConfigDict, stage: str = "all") -> None:
    """Raises UsageError naming every bad value in ``config`` (and its fix); ``stage`` adds
    the checks of the stage that will run (``cv`` checks ``cv.folds``)."""
    problems: list[str] = []

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            value = _get(config, key)
            problems.append(f"{key}={value!r} {rule} (set --config.{key})")

    def positive(*keys: str) -> None:
        for key in keys:
            need(_number(_get(config, key)) and _get(config, key) > 0, key, "must be > 0")

    def at_least_zero(*keys: str) -> None:
        for key in keys:
            need(_number(_get(config, key)) and _get(config, key) >= 0, key, "must be >= 0")

    def one_of(key: str, names: tuple[str, ...] | list[str]) -> None:
        need(_get(config, key) in names, key, f"is not one of {', '.join(map(repr, names))}")

    def fraction(key: str, upper: str = ")") -> None:
        value = _get(config, key)
        inside = _number(value) and value >= 0 and (value < 1 if upper == ")" else value <= 1)
        need(inside, key, f"must be in [0, 1{upper}")

    at_least_zero("seed", "data.offset")
    positive("data.sample_rate", "data.duration", "data.batch_size",
             "model.filters", "model.kernel_size", "model.pool_size",
             "train.batch_size", "train.epochs", "train.eval_batch_size",
             "train.learning_rate", "train.steps_per_call")
    at_least_zero("train.plateau_patience", "train.early_stop_patience",
                  "train.min_learning_rate", "train.plateau_min_delta",
                  "train.early_stop_min_delta", "data.augment.noise_sigma",
                  "data.augment.shift_seconds")
    positive("data.augment.stretch_rate")
    need(_number(config.train.plateau_factor) and 0 < config.train.plateau_factor <= 1,
         "train.plateau_factor", "must be in (0, 1]")
    fraction("model.dropout")
    one_of("train.loop", LOOPS)
    one_of("train.input", host_input.MODES)
    one_of("train.compute_dtype", COMPUTE_DTYPES)
    _check_data(config, problems, need, positive, fraction, one_of)
    _check_model(config, problems)
    try:
        batch_augment.check_config(config.train, _inputs(config))
    except ValueError as error:
        problems.append(str(error))
    if config.train.batch_size > 0 and config.train.batch_size % jax.device_count():
        problems.append(f"train.batch_size={config.train.batch_size} is not divisible by the "
                        f"{jax.device_count()} devices (set --config.train.batch_size to a "
                        "multiple of it)")
    if 0 < config.train.eval_batch_size < jax.device_count():
        need(False, "train.eval_batch_size", f"must be at least the {jax.device_count()} devices")
    if stage == "cv":
        need(isinstance(config.cv.folds, int) and config.cv.folds >= 3, "cv.folds",
             "must be 3 or more (each fold is the test set once, the next one validation)")
    if problems:
        raise UsageError("bad config: " + "; ".join(problems))


def _check_data(config, problems, need, positive, fraction, one_of) -> None:
    data = config.data
    spec = data.corpora.strip()
    if spec:
        for item in parse_list(spec):
            name, sep, root = item.partition(":")
            name, root = name.strip(), root.strip()
            if not sep or not root:
                problems.append(f"data.corpora entry {item!r} is not NAME:PATH (set "
                                f"--config.data.corpora=NAME:PATH,...; names: "
                                f"{', '.join(PARSERS)})")
            elif name not in PARSERS:
                problems.append(f"data.corpora names unknown corpus {name!r} (valid names: "
                                f"{', '.join(PARSERS)})")
            elif not Path(root).expanduser().is_dir():
                problems.append(f"data.corpora: {name} folder {root} does not exist or is not "
                                "a folder (fix the path in --config.data.corpora)")
    else:
        positive("data.synthetic.speakers", "data.synthetic.clips_per_class")
    recipe = parse_list(data.augment.recipe)
    unknown = [kind for kind in recipe if kind not in AUGMENTATIONS]
    if unknown or not recipe:
        problems.append(f"data.augment.recipe={data.augment.recipe!r}: unknown "
                        f"{', '.join(map(repr, unknown)) or '(empty)'} (use a comma-separated "
                        f"list of {', '.join(AUGMENTATIONS)})")
    one_of("data.split.mode", SPLIT_MODES)
    fraction("data.split.val_fraction")
    fraction("data.split.test_fraction")
    split = data.split
    if (_number(split.val_fraction) and _number(split.test_fraction)
            and split.val_fraction + split.test_fraction >= 1):
        problems.append(f"data.split.val_fraction + data.split.test_fraction = "
                        f"{split.val_fraction + split.test_fraction:g} leaves no training data "
                        "(keep their sum below 1)")
    if split.mode == "file" and (split.val_speakers.strip() or split.test_speakers.strip()):
        problems.append("data.split.val_speakers/test_speakers only apply to "
                        "data.split.mode='speaker' (clear them or switch the mode)")
    quality = data.get("quality")
    if quality is not None:
        need(_number(quality.min_rms_dbfs) and quality.min_rms_dbfs <= 0,
             "data.quality.min_rms_dbfs", "must be <= 0 (dBFS; -inf turns the gate off)")
        fraction("data.quality.max_clipped_fraction", "]")
        one_of("data.quality.clipping", CLIPPING_ACTIONS)
        one_of("data.quality.short", SHORT_ACTIONS)
        fraction("data.quality.min_class_share", "]")


def _check_model(config: ml_collections.ConfigDict, problems: list[str]) -> None:
    try:
        registry.ensemble_variants(config.model)
        inputs = registry.model_inputs(config.model)
    except ValueError as error:
        problems.append(f"{error} (set --config.model.name / --config.model.ensemble)")
        return
    if inputs == "sequence" and not config.data.sequences:
        problems.append(f"model.name={config.model.name!r} reads log-mel frame sequences, but "
                        "data.sequences=False (set --config.data.sequences=True)")


def _inputs(config: ml_collections.ConfigDict) -> str:
    try:
        return registry.model_inputs(config.model)
    except ValueError:
        return "clip"


def _get(config: ml_collections.ConfigDict, key: str):
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value
