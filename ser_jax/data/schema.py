"""The feature table's columns: the 270 clip features (FEATURE_NAMES) and the 128 log-mel bands
of a frame sequence (SEQUENCE_NAMES). The extractor computes them in this order; the store
writes and validates files by these names."""

N_CHROMA = 12
N_MELS = 128
N_MFCC = 128
FEATURE_NAMES: tuple[str, ...] = (
    "zcr",
    "rms",
    *(f"chroma_{i:02d}" for i in range(N_CHROMA)),
    *(f"mel_{i:03d}" for i in range(N_MELS)),
    *(f"mfcc_{i:03d}" for i in range(N_MFCC)),
)
# Channels of the frame sequence (clip_and_sequence_features): log-mel bands in dB.
SEQUENCE_NAMES: tuple[str, ...] = tuple(f"logmel_{i:03d}" for i in range(N_MELS))
