"""The base layer: atomic file writes (files), comma-separated config lists (lists), the
multi-process helpers (process: is_chief, barrier) and the JAX compile counter (compiles).
Imports no other ser_jax package; every other layer may import it."""
