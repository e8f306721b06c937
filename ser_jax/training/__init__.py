"""Training: the state, optimizer and early stopping (state), the compiled steps (trainer),
the one epoch loop and train_and_evaluate (loop), on-device batch augmentation, checkpoints,
the metrics log and vmapped trials. May import inference, models, features, data and core."""
