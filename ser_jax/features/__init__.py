"""Features: the JAX extractor (270 clip features, log-mel frame sequences), waveform
augmentation, the scaler (numpy only, so inference stays free of pandas/pyarrow), and the one
feature pipeline (pipeline: the features stage and the cv clip cache; feature_dir: the folders
they write). May import data and core."""
