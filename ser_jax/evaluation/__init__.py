"""Evaluation: metrics from a confusion matrix, reports (confusion matrix CSV/PNG, tables),
the evaluate stage and the cv stage (speaker-grouped cross-validation, which trains each fold).
May import every layer below it (training, inference, models, features, data, core)."""
