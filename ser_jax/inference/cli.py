"""What the predict command needs besides the windows: finding audio files, writing rows."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

import soundfile as sf

# File name endings of the formats soundfile decodes (RAW needs a sample format: not listed).
AUDIO_SUFFIXES = frozenset(
    {f".{name.lower()}" for name in sf.available_formats() if name != "RAW"}
    | {".aif", ".aifc", ".oga", ".opus", ".snd", ".wave"})
MAX_EXIT_CODE = 125


def expand_paths(paths: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """(audio files, missing): each file as given (whatever its name), each folder's audio
    files found recursively (by AUDIO_SUFFIXES, hidden names skipped), sorted; paths that do
    not exist are returned with a reason."""
    files, missing = [], []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file()
                            and p.suffix.lower() in AUDIO_SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.exists():
            files.append(path)
        else:
            missing.append((str(path), "no such file or folder"))
    return files, missing


def exit_code(failed: int) -> int:
    """The command's exit status: the number of failed files, at most MAX_EXIT_CODE."""
    return min(failed, MAX_EXIT_CODE)


class RowWriter:
    """Writes output rows as JSON lines, or as CSV (one column per class probability)."""

    def __init__(self, stream: IO[str], fmt: str, labels: Sequence[str]):
        self.stream, self.fmt = stream, fmt
        if fmt == "csv":
            self.columns = ["path", "kind", "start", "end", "speech", "windows",
                            "speech_windows", "emotion", *labels, "error"]
            self.csv = csv.DictWriter(stream, self.columns, extrasaction="ignore")
            self.csv.writeheader()
        elif fmt != "jsonl":
            raise ValueError(f"output format {fmt!r}: use csv or jsonl")

    def write(self, rows: Iterable[dict]) -> None:
        for row in rows:
            if self.fmt == "jsonl":
                self.stream.write(json.dumps(row) + "\n")
            else:
                self.csv.writerow({**row, **(row.get("probabilities") or {})})
        self.stream.flush()


def output_format(path: str) -> str:
    """csv or jsonl from an output file name; raises ValueError for other endings."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ValueError(f"--output={path}: name a .csv or .jsonl file")
    return suffix[1:]
