"""The tune stage's config: the default recipe plus the study settings and search spaces.

``python -m ser_jax.main --config=configs/tune.py --workdir=W --stage=tune`` (or ``tune_train``).
A search dimension is declared once, here: ``key`` is the config field it sets, ``kind`` one of
``int``, ``float``, ``log_float`` (sampled on a log scale) or ``categorical``; ``low``/``high``
bound the numeric kinds, ``choices`` lists the categorical values. The space used is
``tune.spaces[model.name]``. Override from the command line, e.g.
``--config.tune.trials=30 --config.tune.spaces.seed_cnn.kernel_size.high=7``.
"""

import ml_collections

from configs import default


def dimension(key: str, kind: str, low: float = 0, high: float = 0,
              choices: tuple = ()) -> ml_collections.ConfigDict:
    """One search dimension (see the module docstring)."""
    return ml_collections.ConfigDict({'key': key, 'kind': kind, 'low': low, 'high': high,
                                      'choices': choices})


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    tune = config.tune = ml_collections.ConfigDict()
    tune.study_name = 'ser-jax'
    tune.trials = 30  # trials THIS worker runs (0: none, only the report)
    # A study-wide cap on finished + running trials, checked after each trial (0: no cap).
    tune.total_trials = 0
    # '' : JournalStorage in WORKDIR/tune/journal.log (one worker; resumes after a kill).
    # A database URL (postgresql+psycopg2://user@host:port/db) for many workers on many machines.
    tune.storage = ''
    tune.heartbeat_interval = 60  # seconds; database storage only
    tune.grace_period = 180  # a RUNNING trial without a heartbeat this long is failed and retried
    tune.metric = 'balanced_accuracy'  # or 'val_loss' (minimized)
    # 0: score on the validation split (data.split.val_speakers). k > 0: the mean over k
    # speaker-grouped folds of the non-test speakers (cv.assign_speakers, the cv stage's grouping).
    tune.folds = 0
    tune.pruner = 'median'  # 'median', 'successive_halving', 'hyperband' or 'none'
    tune.pruner_startup_trials = 5  # median: trials finished before any pruning
    tune.pruner_warmup_epochs = 2  # median: epochs of a trial before it can be pruned
    tune.best_trials = 10  # rows of the best-trials table
    # Trials whose parameters keep every shape equal run vmapped together: not offered yet.
    tune.vmap_trials = False

    spaces = tune.spaces = ml_collections.ConfigDict()
    # The seed's space (filters, kernel, pool, dropout) plus learning rate and batch size.
    spaces.seed_cnn = ml_collections.ConfigDict({
        'filters': dimension('model.filters', 'categorical', choices=(16, 32, 64, 128)),
        'kernel_size': dimension('model.kernel_size', 'int', 3, 9),
        'pool_size': dimension('model.pool_size', 'int', 2, 5),
        'dropout': dimension('model.dropout', 'float', 0.05, 0.5),
        'learning_rate': dimension('train.learning_rate', 'log_float', 1e-4, 3e-3),
        'batch_size': dimension('train.batch_size', 'categorical', choices=(32, 64, 128)),
    })
    spaces.temporal_cnn = ml_collections.ConfigDict({
        'filters': dimension('model.filters', 'categorical', choices=(32, 48, 64)),
        'kernel_size': dimension('model.kernel_size', 'int', 3, 7),
        'dropout': dimension('model.dropout', 'float', 0.1, 0.5),
        'time_width': dimension('train.spec_augment.time_width', 'int', 0, 20),
        'freq_width': dimension('train.spec_augment.freq_width', 'int', 0, 24),
        'mixup_alpha': dimension('train.mixup_alpha', 'float', 0.0, 0.4),
    })
    return config
