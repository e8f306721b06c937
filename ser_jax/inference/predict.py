"""Predicting emotions for audio files with a trained bundle (the library part of
``python -m ser_jax.predict``)."""

from pathlib import Path

from ser_jax.inference import bundle


def predict_files(bundle_dir: str | Path, paths: list[str | Path]) -> list[dict]:
    """One result per file, in order: its path and either the emotion with class probabilities
    or the reason it was skipped (``error``)."""
    return bundle.load(bundle_dir).predict_files(paths)
