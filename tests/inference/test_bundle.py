"""The inference bundle: what it saves, and that prediction standardizes as training did."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ser_jax.data import audio, synthetic
from ser_jax.data.corpora import EMOTIONS
from ser_jax.data.labels import write_labels
from ser_jax.data.schema import FEATURE_NAMES
from ser_jax.features import extractor
from ser_jax.features.scaler import Scaler
from ser_jax.inference import bundle
from ser_jax.models import registry
from tests.conftest import tiny_config


def test_a_clip_model_predicts_from_features_scaled_as_in_training(tmp_path):
    config = tiny_config()
    features = tmp_path / "features"
    features.mkdir()
    write_labels(features, list(EMOTIONS))
    rng = np.random.default_rng(0)
    scaler = Scaler(list(FEATURE_NAMES), rng.normal(size=len(FEATURE_NAMES)),
                    rng.uniform(0.5, 2.0, size=len(FEATURE_NAMES)))
    scaler.save(features / "scaler.json")
    model = registry.create_model(config.model, len(EMOTIONS))
    variables = model.init(jax.random.key(0), jnp.zeros((1, len(FEATURE_NAMES))), train=False)
    bundle.save(tmp_path / "bundle", config, variables["params"], variables["batch_stats"],
                features)

    corpus = synthetic.write_synthetic_corpus(tmp_path / "corpus", speakers=1, clips_per_class=1)
    paths = sorted(corpus.rglob("*.wav"))[:3]
    loaded = bundle.load(tmp_path / "bundle")
    data = config.data
    waves, _, _ = audio.load_clips(paths, sample_rate=data.sample_rate, offset=data.offset,
                                   duration=data.duration)
    raw = np.asarray(extractor.extract_features(waves, data.sample_rate), np.float64)
    expected = ((raw - scaler.mean) / scaler.scale).astype(np.float32)
    np.testing.assert_allclose(loaded.inputs(waves), expected, rtol=1e-5, atol=1e-5)
    probabilities = np.asarray(jax.nn.softmax(model.apply(variables, expected, train=False)))
    results = loaded.predict_files(paths)
    for result, row in zip(results, probabilities, strict=True):
        assert [result["probabilities"][label] for label in EMOTIONS] == pytest.approx(
            row.tolist(), abs=1e-5)
