"""Drift monitoring: a reference stored in the bundle at training time, and reports on new data."""
