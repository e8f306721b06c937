"""Corpus adapters: turn a corpus folder into manifest rows by each corpus' naming scheme."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ser_jax.core.lists import parse_list

EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg"})


@dataclass(frozen=True)
class Clip:
    """One audio file of a corpus with its labels; `speaker` is globally unique."""

    path: str
    corpus: str
    speaker: str
    emotion: str
    gender: str | None = None
    intensity: str | None = None


@dataclass
class CorpusScan:
    """Clips that parsed, and the audio files skipped as (path, reason)."""

    clips: list[Clip] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


class _Skip(Exception):
    """Raised by a parser for a file that is not a usable clip; the message is the reason."""


@dataclass
class _Context:
    """What a parser knows besides the file name: options and per-corpus side tables."""

    keep_boredom: bool
    genders: dict[str, str] = field(default_factory=dict)


Parser = Callable[[Path, _Context], Clip]


# --- RAVDESS -----------------------------------------------------------------------------------

_RAVDESS_RE = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
_RAVDESS_EMOTIONS = {
    "01": "neutral",
    "02": "neutral",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fear",
    "07": "disgust",
    "08": "surprise",
}
_RAVDESS_INTENSITY = {"01": "normal", "02": "strong"}


def _ravdess(path: Path, ctx: _Context) -> Clip:
    m = _RAVDESS_RE.match(path.stem)
    if not m:
        raise _Skip("name does not match MM-VC-EE-II-SS-RR-AA")
    modality, channel, emotion, intensity, _, _, actor = m.groups()
    if modality != "03":
        raise _Skip(f"modality {modality} is not audio-only (03)")
    if channel == "02":
        raise _Skip("song (vocal channel 02), not speech")
    if channel != "01":
        raise _Skip(f"unknown vocal channel {channel}")
    if emotion not in _RAVDESS_EMOTIONS:
        raise _Skip(f"unknown emotion code {emotion}")
    if intensity not in _RAVDESS_INTENSITY:
        raise _Skip(f"unknown intensity code {intensity}")
    if actor == "00":
        raise _Skip("actor 00 does not exist")
    return Clip(
        path=str(path),
        corpus="ravdess",
        speaker=f"ravdess_{actor}",
        emotion=_RAVDESS_EMOTIONS[emotion],
        gender="male" if int(actor) % 2 else "female",
        intensity=_RAVDESS_INTENSITY[intensity],
    )


# --- CREMA-D -----------------------------------------------------------------------------------

_CREMA_RE = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
_CREMA_EMOTIONS = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fear",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
_CREMA_LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": None}
CREMA_DEMOGRAPHICS = "VideoDemographics.csv"


def _crema_genders(root: Path) -> dict[str, str]:
    """ActorID -> gender from VideoDemographics.csv in the root, below it or up to 2 levels up."""
    candidates = [root / CREMA_DEMOGRAPHICS, *(p / CREMA_DEMOGRAPHICS for p in root.parents[:2])]
    candidates += sorted(root.rglob(CREMA_DEMOGRAPHICS))
    for csv_path in candidates:
        if csv_path.is_file():
            with csv_path.open(newline="", encoding="utf-8-sig") as f:
                rows = csv.DictReader(f)
                return {
                    row["ActorID"].strip(): row["Sex"].strip().lower()
                    for row in rows
                    if row.get("ActorID") and row.get("Sex")
                }
    return {}


def _crema_d(path: Path, ctx: _Context) -> Clip:
    m = _CREMA_RE.match(path.stem)
    if not m:
        raise _Skip("name does not match ACTOR_SEN_EMO_LV (e.g. 1001_DFA_ANG_XX)")
    actor, _, emotion, level = m.groups()
    if emotion not in _CREMA_EMOTIONS:
        raise _Skip(f"unknown emotion code {emotion}")
    if level not in _CREMA_LEVELS:
        raise _Skip(f"unknown intensity level {level}")
    return Clip(
        path=str(path),
        corpus="crema_d",
        speaker=f"crema_d_{actor}",
        emotion=_CREMA_EMOTIONS[emotion],
        gender=ctx.genders.get(actor),
        intensity=_CREMA_LEVELS[level],
    )


# --- TESS --------------------------------------------------------------------------------------

_TESS_SPEAKERS = ("OAF", "YAF")
_TESS_EMOTIONS = {
    "angry": "angry",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happy",
    "neutral": "neutral",
    "sad": "sad",
    "ps": "surprise",
    "surprise": "surprise",
    "surprised": "surprise",
    "pleasant_surprise": "surprise",
    "pleasant_surprised": "surprise",
}


def _tess(path: Path, ctx: _Context) -> Clip:
    """Emotion from the file name only: folders vary ("OAF_Pleasant_surprise", "YAF_surprised")."""
    tokens = path.stem.lower().split("_")
    speaker = tokens[0].upper()
    if speaker not in _TESS_SPEAKERS or len(tokens) < 3:
        raise _Skip("name does not match OAF|YAF_WORD_EMOTION")
    emotion = "_".join(tokens[2:])
    if emotion not in _TESS_EMOTIONS:
        raise _Skip(f"unknown emotion {emotion!r}")
    return Clip(
        path=str(path),
        corpus="tess",
        speaker=f"tess_{speaker}",
        emotion=_TESS_EMOTIONS[emotion],
        gender="female",
    )


# --- SAVEE -------------------------------------------------------------------------------------

_SAVEE_SPEAKERS = ("DC", "JE", "JK", "KL")
_SAVEE_RE = re.compile(r"^(?:([A-Za-z]{2})_)?(sa|su|a|d|f|h|n)(\d{2})$")
_SAVEE_EMOTIONS = {
    "a": "angry",
    "d": "disgust",
    "f": "fear",
    "h": "happy",
    "n": "neutral",
    "sa": "sad",
    "su": "surprise",
}


def _savee(path: Path, ctx: _Context) -> Clip:
    m = _SAVEE_RE.match(path.stem)
    if not m:
        raise _Skip("name does not match [SPK_]EMO_NN (e.g. DC_a01 or DC/a01)")
    speaker, emotion, _ = m.groups()
    speaker = (speaker or path.parent.name).upper()
    if speaker not in _SAVEE_SPEAKERS:
        raise _Skip(f"unknown speaker {speaker!r} (expected one of {', '.join(_SAVEE_SPEAKERS)})")
    return Clip(
        path=str(path),
        corpus="savee",
        speaker=f"savee_{speaker}",
        emotion=_SAVEE_EMOTIONS[emotion],
        gender="male",
    )


# --- EmoDB -------------------------------------------------------------------------------------

_EMODB_RE = re.compile(r"^(\d{2})([ab]\d{2})([A-Z])([a-z])$")
_EMODB_EMOTIONS = {
    "W": "angry",
    "L": "boredom",
    "E": "disgust",
    "A": "fear",
    "F": "happy",
    "T": "sad",
    "N": "neutral",
}
_EMODB_GENDERS = {
    **dict.fromkeys(("03", "10", "11", "12", "15"), "male"),
    **dict.fromkeys(("08", "09", "13", "14", "16"), "female"),
}


def _emodb(path: Path, ctx: _Context) -> Clip:
    m = _EMODB_RE.match(path.stem)
    if not m:
        raise _Skip("name does not match SStttEv (e.g. 03a01Fa)")
    speaker, _, emotion, _ = m.groups()
    if speaker not in _EMODB_GENDERS:
        raise _Skip(f"unknown speaker {speaker}")
    if emotion not in _EMODB_EMOTIONS:
        raise _Skip(f"unknown emotion letter {emotion}")
    if emotion == "L" and not ctx.keep_boredom:
        raise _Skip("boredom is not one of the 7 classes (keep_boredom=False)")
    return Clip(
        path=str(path),
        corpus="emodb",
        speaker=f"emodb_{speaker}",
        emotion=_EMODB_EMOTIONS[emotion],
        gender=_EMODB_GENDERS[speaker],
    )


# --- synthetic ---------------------------------------------------------------------------------

_SYNTHETIC_RE = re.compile(r"^synthetic_spk(\d{2,})_([a-z]+)_(\d{3,})$")


def _synthetic(path: Path, ctx: _Context) -> Clip:
    m = _SYNTHETIC_RE.match(path.stem)
    if not m:
        raise _Skip("name does not match synthetic_spkNN_EMOTION_KKK")
    speaker, emotion, _ = m.groups()
    if emotion not in EMOTIONS:
        raise _Skip(f"unknown emotion {emotion!r}")
    return Clip(path=str(path), corpus="synthetic", speaker=f"synthetic_{speaker}", emotion=emotion)


PARSERS: dict[str, Parser] = {
    "ravdess": _ravdess,
    "crema_d": _crema_d,
    "tess": _tess,
    "savee": _savee,
    "emodb": _emodb,
    "synthetic": _synthetic,
}


def _audio_files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
    )


def scan_corpus(name: str, root: str | Path, *, keep_boredom: bool = False) -> CorpusScan:
    """Parses every audio file under `root` with corpus `name`'s naming; bad names are skipped."""
    if name not in PARSERS:
        raise ValueError(f"unknown corpus {name!r}; valid names: {', '.join(PARSERS)}")
    root = Path(root).absolute()
    if not root.is_dir():
        raise ValueError(
            f"corpus {name!r}: folder {root} does not exist; valid names: {', '.join(PARSERS)}"
        )
    ctx = _Context(keep_boredom=keep_boredom)
    if name == "crema_d":
        ctx.genders = _crema_genders(root)
    scan = CorpusScan()
    parse = PARSERS[name]
    for path in _audio_files(root):
        try:
            scan.clips.append(parse(path, ctx))
        except _Skip as e:
            scan.skipped.append((str(path), str(e)))
    return scan


def scan_corpora(spec: str, *, keep_boredom: bool = False) -> CorpusScan:
    """Scans comma-separated NAME:PATH pairs, e.g. "ravdess:/data/r,tess:/data/t"; the clips
    come corpus by corpus in spec order, each corpus sorted by path."""
    pairs = parse_list(spec)
    if not pairs:
        raise ValueError(
            f"no corpora in {spec!r}; expected NAME:PATH pairs, names: {', '.join(PARSERS)}"
        )
    total = CorpusScan()
    for item in pairs:
        name, sep, root = item.partition(":")
        if not sep or not root.strip():
            raise ValueError(
                f"corpus entry {item!r} is not NAME:PATH; valid names: {', '.join(PARSERS)}"
            )
        scan = scan_corpus(name.strip(), root.strip(), keep_boredom=keep_boredom)
        total.clips += scan.clips
        total.skipped += scan.skipped
    return total
