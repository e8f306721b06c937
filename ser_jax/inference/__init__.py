"""Inference: the bundle (save, load, predict_probabilities) and predicting audio files. Sits
below training because training saves bundles. May import models, features, data (audio,
labels; never the pandas-based store) and core."""
