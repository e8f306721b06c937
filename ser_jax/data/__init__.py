"""Data: corpora (one parser per corpus, manifest rows), audio (decode, resample, window),
where a clip's window sits (placement), what silent, speech and clipped mean (quality),
the synthetic demo corpus, speaker-independent splits, the feature files on disk (store: parquet
and .npy; schema: column names; labels: labels.json) and DatasetError. May import core only."""
