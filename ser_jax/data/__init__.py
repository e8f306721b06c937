"""Data: corpora (one parser per corpus, manifest rows), audio (decode, resample, window),
the synthetic demo corpus, speaker-independent splits, the feature files on disk (store: parquet
and .npy; schema: column names; labels: labels.json) and DatasetError. May import core only."""
