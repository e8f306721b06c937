"""The inference bundle: everything needed to predict emotions on new audio, nothing else.

A bundle folder holds ``variables.msgpack`` (parameters and batch statistics), ``config.json``
(the training config), ``made_with.json`` (the features it was trained on: fingerprint,
folder), ``labels.json`` (label order), ``scaler.json`` (clip-feature scaling) and,
for a model that reads frame sequences, ``sequence_scaler.json`` (per-band scaling).
"""

import dataclasses
import json
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ser_jax.core.batches import padded_batches
from ser_jax.core.errors import DataError
from ser_jax.core.files import atomic_directory, write_json_atomic
from ser_jax.data import audio
from ser_jax.data.labels import read_labels
from ser_jax.features import extractor as features
from ser_jax.features.scaler import SEQUENCE_SCALER_FILE, Scaler
from ser_jax.models import registry


class BundleError(DataError, FileNotFoundError):
    """A folder that is not a complete, readable inference bundle."""


MADE_WITH_FILE = "made_with.json"  # the features the bundle's model was trained on


@dataclasses.dataclass
class Bundle:
    """A loaded bundle: model, variables, label order, scalers and config."""

    model: flax.linen.Module
    variables: dict[str, Any]
    labels: list[str]
    scaler: Scaler
    sequence_scaler: Scaler | None
    config: ml_collections.ConfigDict

    def inputs(self, waves: np.ndarray) -> np.ndarray:
        """The model's standardized inputs for clips (rows, samples) loaded as in training."""
        rate = self.config.data.sample_rate
        if registry.model_inputs(self.config.model) == "sequence":
            _, sequences = features.clip_and_sequence_features(waves, rate)
            return self.sequence_scaler.transform(np.asarray(sequences))
        return self.scaler.transform(np.asarray(features.extract_features(waves, rate)))

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (rows, classes) for standardized inputs (as the splits store)."""
        return predict_probabilities(self.model, self.variables, x)

    def predict_files(self, paths: list[str | Path]) -> list[dict]:
        """Predicts each audio file; unreadable files get an ``error`` instead of a prediction."""
        waves, loaded, rejects = audio.load_config_clips(paths, self.config.data)
        results = [{"path": path, "error": reason} for path, reason in rejects]
        if loaded:
            for index, row in zip(loaded, self.probabilities(self.inputs(waves)), strict=True):
                probabilities = dict(zip(self.labels, map(float, row), strict=True))
                results.append({"path": str(paths[index]),
                                "emotion": self.labels[int(row.argmax())],
                                "probabilities": probabilities})
        order = {str(p): i for i, p in enumerate(paths)}
        return sorted(results, key=lambda r: order[str(r["path"])])


def predict_log_probabilities(model: flax.linen.Module, variables: dict, x: np.ndarray,
                              batch_size: int = 256) -> np.ndarray:
    """``model``'s log class probabilities (rows, classes) for inputs ``x``, in zero-padded
    batches of one shape (one compiled program)."""
    if len(x) <= batch_size:
        return np.asarray(_log_probabilities(model, variables, jnp.asarray(x)))
    outputs = [np.asarray(_log_probabilities(model, variables, jnp.asarray(rows)))[:count]
               for rows, count in padded_batches(x, batch_size)]
    return np.concatenate(outputs)


def predict_probabilities(model: flax.linen.Module, variables: dict, x: np.ndarray,
                          batch_size: int = 256) -> np.ndarray:
    """``model``'s class probabilities (rows, classes) for inputs ``x``."""
    return np.exp(predict_log_probabilities(model, variables, x, batch_size))


@partial(jax.jit, static_argnums=0)
def _log_probabilities(model: flax.linen.Module, variables: dict, x: jax.Array) -> jax.Array:
    return jax.nn.log_softmax(model.apply(variables, x, train=False))


def save(directory: Path, config: ml_collections.ConfigDict, params: Any, batch_stats: Any,
         features_dir: Path) -> None:
    """Writes a bundle folder atomically (built beside it, then swapped in)."""
    variables = jax.device_get({"params": params, "batch_stats": batch_stats})
    names = ["labels.json", "scaler.json"]
    if registry.model_inputs(config.model) == "sequence":
        names.append(SEQUENCE_SCALER_FILE)
    with atomic_directory(directory) as staging:
        (staging / "variables.msgpack").write_bytes(flax.serialization.to_bytes(variables))
        write_json_atomic(staging / "config.json", config.to_dict())
        write_json_atomic(staging / MADE_WITH_FILE, features_provenance(features_dir))
        for name in names:
            shutil.copyfile(features_dir / name, staging / name)


def features_provenance(features_dir: Path) -> dict:
    """What a model was trained on: the features folder, its manifest's fingerprint (hash of
    audio files, data config, seed and extractor version) and when the features were made."""
    try:
        manifest = json.loads((Path(features_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    return {"features_dir": str(Path(features_dir).absolute()),
            "features_fingerprint": manifest.get("fingerprint"),
            "features_created": manifest.get("created"),
            "extractor_version": manifest.get("extractor_version")}


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """One example's shape for the config's model: (270,) or (frames, bands)."""
    if registry.model_inputs(config.model) == "sequence":
        samples = round(config.data.sample_rate * config.data.duration)
        return features.num_frames(samples), len(features.SEQUENCE_NAMES)
    return (len(features.FEATURE_NAMES),)


def load(directory: str | Path) -> Bundle:
    """Loads a bundle written by :func:`save`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: no such bundle folder — train first (--stage=train), "
                          "or point --bundle at WORKDIR/bundle")
    if not (directory / "variables.msgpack").exists():
        raise BundleError(f"{directory} is not an inference bundle (no variables.msgpack) — "
                          "train first, or point at WORKDIR/bundle")
    try:
        config = ml_collections.ConfigDict(json.loads((directory / "config.json").read_text()))
    except (OSError, ValueError) as error:
        raise BundleError(f"{directory / 'config.json'}: unreadable bundle config ({error}) — "
                          "train again to rewrite the bundle") from error
    labels = read_labels(directory)
    model = registry.create_model(config.model, len(labels))
    template = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, *input_shape(config))), train=False))
    variables = flax.serialization.from_bytes(
        jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template),
        (directory / "variables.msgpack").read_bytes())
    sequence_scaler = (Scaler.load(directory / SEQUENCE_SCALER_FILE)
                       if registry.model_inputs(config.model) == "sequence" else None)
    return Bundle(model, variables, labels, Scaler.load(directory / "scaler.json"),
                  sequence_scaler, config)
