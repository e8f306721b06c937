"""The base layer: atomic file writes (files), comma-separated config lists (lists) and the
multi-process helpers (process: is_chief, barrier). Imports no other ser_jax package; every
other layer may import it."""
