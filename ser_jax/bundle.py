"""The inference bundle: everything needed to predict emotions on new audio, nothing else.

A bundle folder holds ``variables.msgpack`` (parameters and batch statistics), ``config.json``
(the training config), ``labels.json`` (label order) and ``scaler.json`` (feature scaling).
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

from ser_jax import audio, dataset, features, models
from ser_jax.files import atomic_directory, write_json_atomic


@dataclasses.dataclass
class Bundle:
    """A loaded bundle: model, variables, label order, scaler and config."""

    model: flax.linen.Module
    variables: dict[str, Any]
    labels: list[str]
    scaler: dataset.Scaler
    config: ml_collections.ConfigDict

    def probabilities(self, raw_features: np.ndarray) -> np.ndarray:
        """Class probabilities (rows, classes) for unscaled feature rows (rows, 270)."""
        return self.probabilities_standardized(self.scaler.transform(raw_features))

    def probabilities_standardized(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for rows already standardized (as in the parquet splits)."""
        return np.asarray(_predict(self.model, self.variables, jnp.asarray(x)))

    def predict_files(self, paths: list[str | Path]) -> list[dict]:
        """Predicts each audio file; unreadable files get an ``error`` instead of a prediction."""
        data = self.config.data
        waves, loaded, rejects = audio.load_clips(
            [str(p) for p in paths], sample_rate=data.sample_rate, offset=data.offset,
            duration=data.duration)
        results = [{"path": path, "error": reason} for path, reason in rejects]
        if loaded:
            raw = np.asarray(features.extract_features(waves, data.sample_rate))
            for index, row in zip(loaded, self.probabilities(raw), strict=True):
                probabilities = dict(zip(self.labels, map(float, row), strict=True))
                results.append({"path": str(paths[index]),
                                "emotion": self.labels[int(row.argmax())],
                                "probabilities": probabilities})
        order = {str(p): i for i, p in enumerate(paths)}
        return sorted(results, key=lambda r: order[str(r["path"])])


@partial(jax.jit, static_argnums=0)
def _predict(model: flax.linen.Module, variables: dict, x: jax.Array) -> jax.Array:
    return jax.nn.softmax(model.apply(variables, x[..., None], train=False))


def save(directory: Path, config: ml_collections.ConfigDict, params: Any, batch_stats: Any,
         features_dir: Path) -> None:
    """Writes a bundle folder atomically (built beside it, then swapped in)."""
    variables = jax.device_get({"params": params, "batch_stats": batch_stats})
    with atomic_directory(directory) as staging:
        (staging / "variables.msgpack").write_bytes(flax.serialization.to_bytes(variables))
        write_json_atomic(staging / "config.json", config.to_dict())
        for name in ("labels.json", "scaler.json"):
            shutil.copyfile(features_dir / name, staging / name)


def load(directory: str | Path) -> Bundle:
    """Loads a bundle written by :func:`save`."""
    directory = Path(directory)
    if not (directory / "variables.msgpack").exists():
        raise FileNotFoundError(f"{directory} is not an inference bundle (no variables.msgpack); "
                                "train first, or point at WORKDIR/bundle")
    config = ml_collections.ConfigDict(json.loads((directory / "config.json").read_text()))
    labels = dataset.read_labels(directory)
    model = models.create_model(config.model, len(labels))
    template = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, len(features.FEATURE_NAMES), 1)), train=False))
    variables = flax.serialization.from_bytes(
        jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template),
        (directory / "variables.msgpack").read_bytes())
    return Bundle(model, variables, labels, dataset.Scaler.load(directory / "scaler.json"), config)
