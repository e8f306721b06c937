"""Inference: the bundle (save, load, predict_probabilities), sliding windows over whole
recordings (windows), and the predict command's rows (cli). Sits below training because
training saves bundles. May import models, features, data (audio, placement, labels; never the
pandas-based store) and core."""
