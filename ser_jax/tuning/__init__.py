"""Hyperparameter tuning with Optuna (the tune and tune_train stages)."""
