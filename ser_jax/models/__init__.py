"""Models: the seed CNN, the temporal CNN, the ensemble and the registry by name
(registry.create_model, model_inputs, ensemble_variants). May import core only (and
flax/jax); knows nothing of files or training."""
