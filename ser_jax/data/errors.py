"""DatasetError, and reading the JSON files the features stage writes (labels, scalers)."""

import json
from pathlib import Path

from ser_jax.core.errors import DataError


class DatasetError(DataError, ValueError):
    """Bad split request or bad feature file; the message names the file/value and what to do."""


def read_json(path: str | Path, what: str) -> dict:
    """The parsed JSON of ``path``; DatasetError naming the file and the remedy otherwise."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: {what} file not found; run the features stage first.") from e
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(
            f"{path}: unreadable {what} file ({e}); rerun the features stage to rewrite it."
        ) from e
