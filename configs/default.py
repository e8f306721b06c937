"""Default ser-jax config: the seed recipe on the embedded synthetic demo corpus.

Override from the command line, e.g. ``--config.train.batch_size=16`` or
``--config.data.corpora=ravdess:../shared/data/ravdess``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Returns the default config."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    # Persistent XLA compilation cache shared by runs on this machine ('' turns it off; the
    # environment variable JAX_COMPILATION_CACHE_DIR, when set, wins: the tests use it).
    config.compilation_cache_dir = '~/.cache/ser-jax/xla'

    data = config.data = ml_collections.ConfigDict()
    # Comma-separated NAME:PATH pairs (ravdess, crema_d, tess, savee, emodb). Empty: synthetic demo.
    data.corpora = ''
    data.keep_boredom = False  # EmoDB boredom has no place among the 7 classes by default.
    data.sample_rate = 22050
    data.offset = 0.6
    data.duration = 2.5
    # Where each clip's window starts: 'offset' (data.offset seconds in) or 'speech' (the first
    # speech sample, energy trim as librosa.effects.trim(top_db=60)); predict uses the bundle's.
    data.placement = 'offset'
    data.batch_size = 64  # clips per feature-extraction batch
    # Sharded features stage: --stage=features with num_shards > 1 writes shard `shard` of
    # num_shards (clips by a stable hash of their path); --stage=merge_features merges them.
    data.num_shards = 1
    data.shard = 0
    # Also store each row's log-mel frame sequence (frames x 128 bands; the temporal model's
    # input) in {split}.sequences.npy, standardized per band.
    data.sequences = False
    data.synthetic = ml_collections.ConfigDict()
    data.synthetic.speakers = 6
    data.synthetic.clips_per_class = 4  # per speaker
    data.augment = ml_collections.ConfigDict()
    # Rows per training clip: any of none, noise, pitch, pitch_noise, stretch, shift.
    data.augment.recipe = 'none,noise,pitch,pitch_noise'
    data.augment.noise_sigma = 0.035
    data.augment.pitch_semitones = 3.0
    data.augment.stretch_rate = 0.8
    data.augment.shift_seconds = 0.2
    # Audio quality gates at load time (counted with reasons in features/manifest.json).
    data.quality = ml_collections.ConfigDict()
    data.quality.min_rms_dbfs = -70.0  # window RMS below this: silent (RAVDESS's quietest: -62.6)
    data.quality.max_clipped_fraction = 0.01  # more samples than this at full scale: clipped
    data.quality.clipping = 'keep'  # clipped clips: 'keep' (flagged) or 'reject'
    data.quality.short = 'pad'  # clips shorter than offset + duration: 'pad' (flagged) or 'reject'
    # A class with fewer clips than this share of the largest class is a warning in the summary.
    data.quality.min_class_share = 0.25
    data.split = ml_collections.ConfigDict()
    data.split.mode = 'speaker'  # 'speaker' (speaker-independent) or 'file' (stratified by class)
    data.split.val_fraction = 0.15
    data.split.test_fraction = 0.15
    # Explicit speaker lists (comma-separated manifest speaker ids) win over the fractions.
    data.split.val_speakers = ''
    data.split.test_speakers = ''

    model = config.model = ml_collections.ConfigDict()
    model.name = 'seed_cnn'
    model.filters = 64  # doubled per block
    model.kernel_size = 3
    model.pool_size = 2
    model.dropout = 0.2
    # temporal_cnn only: remove each clip's mean log-mel (per band) first (seed_cnn rejects it).
    model.center = False
    # The class count is not set here: it is the length of the features' labels.json.
    # Member networks, each trained as its own run one after another (seed + K, own schedule
    # and early stopping, in WORKDIR/members/K), their class probabilities averaged:
    # comma-separated variants, 'plain' or 'centered' (temporal_cnn only: as model.center=True).
    # '' trains one network.
    model.ensemble = ''

    train = config.train = ml_collections.ConfigDict()
    # 64, not the seed's 16: in round 1 of docs/benchmarks.md (2 CPU cores) ser-jax's best loop
    # (steps_per_call=16) trained 762 samples/s at 64 against 338 at 16; round 2 found the work
    # per CPU-second level across batch sizes. The seed's 16 is one override away.
    train.batch_size = 64
    train.epochs = 50
    train.learning_rate = 1e-3
    train.plateau_factor = 0.4
    train.plateau_patience = 2
    train.plateau_min_delta = 1e-4  # Keras ReduceLROnPlateau default, absolute
    train.min_learning_rate = 1e-6
    train.early_stop_patience = 4
    train.early_stop_min_delta = 1e-3
    # 'auto': 'scan' (one compiled epoch) on GPU/TPU, 'step' (steps_per_call steps unrolled per
    # compiled call) on CPU, where XLA runs while-loops 10-20x slower (docs/benchmarks.md).
    train.loop = 'auto'
    # With loop 'step': 4 takes most of the measured CPU gain over 1 (1.23-1.25x the work per
    # CPU-second at batch 64) for a small compile cost; 16 gains a little more for long runs
    # but compiles 2-3x longer (docs/benchmarks.md, "ser-jax's CPU loop").
    train.steps_per_call = 4
    # 'device': the train split resident on every device, batches gathered there (one process);
    # 'host': each process places its devices' rows of each batch (multi-process jobs);
    # 'auto': 'device' in one process, 'host' in several.
    train.input = 'auto'
    train.compute_dtype = 'float32'  # or 'bfloat16' (parameters stay float32)
    train.eval_batch_size = 512
    # On-device augmentation of each training batch. SpecAugment masking (sequence inputs only):
    # up to `*_masks` spans of at most `*_width` frames / bands set to 0 per example.
    train.spec_augment = ml_collections.ConfigDict()
    train.spec_augment.time_masks = 0
    train.spec_augment.time_width = 0
    train.spec_augment.freq_masks = 0
    train.spec_augment.freq_width = 0
    train.mixup_alpha = 0.0  # > 0: mixup with weights from Beta(alpha, alpha)

    cv = config.cv = ml_collections.ConfigDict()
    # The cv stage: speaker-grouped k-fold cross-validation. Each fold's speakers are the test
    # set once and the next fold's are its validation set (8 folds of 2 speakers on RAVDESS).
    cv.folds = 8
    return config
