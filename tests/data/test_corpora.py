"""Corpus adapters: naming schemes, skips with reasons, registry errors, real RAVDESS."""

from collections import Counter
from pathlib import Path

import pytest

from ser_jax.data.corpora import EMOTIONS, PARSERS, Clip, scan_corpora, scan_corpus
from tests.conftest import RAVDESS


def touch(root: Path, *names: str) -> None:
    """Creates empty files: parsing reads names only."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def by_name(clips: list[Clip]) -> dict[str, Clip]:
    return {Path(c.path).name: c for c in clips}


def reasons(skipped: list[tuple[str, str]]) -> dict[str, str]:
    return {Path(p).name: r for p, r in skipped}


def test_registry_names():
    assert set(PARSERS) == {"ravdess", "crema_d", "tess", "savee", "emodb", "synthetic"}
    assert EMOTIONS == ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def test_ravdess(tmp_path):
    touch(
        tmp_path,
        "Actor_01/03-01-01-01-01-01-01.wav",  # neutral
        "Actor_01/03-01-02-02-01-02-01.wav",  # calm -> neutral, strong
        "Actor_02/03-01-06-01-02-01-02.flac",  # fearful -> fear, female
        "Actor_15/03-01-08-02-01-01-15.WAV",  # surprised, upper-case extension
        "Actor_01/03-02-03-01-01-01-01.wav",  # song
        "Actor_01/01-01-03-01-01-01-01.wav",  # audio-video modality
        "Actor_01/03-01-09-01-01-01-01.wav",  # unknown emotion
        "Actor_01/foo.wav",
        "Actor_01/README.txt",
        "notes.csv",
    )
    scan = scan_corpus("ravdess", tmp_path)
    clips = by_name(scan.clips)
    assert [c.path for c in scan.clips] == sorted(c.path for c in scan.clips)
    assert clips["03-01-01-01-01-01-01.wav"] == Clip(
        str(tmp_path / "Actor_01/03-01-01-01-01-01-01.wav"),
        "ravdess",
        "ravdess_01",
        "neutral",
        "male",
        "normal",
    )
    calm = clips["03-01-02-02-01-02-01.wav"]
    assert (calm.emotion, calm.intensity) == ("neutral", "strong")
    fear = clips["03-01-06-01-02-01-02.flac"]
    assert (fear.emotion, fear.gender, fear.speaker) == ("fear", "female", "ravdess_02")
    assert clips["03-01-08-02-01-01-15.WAV"].emotion == "surprise"
    assert len(scan.clips) == 4
    why = reasons(scan.skipped)
    assert set(why) == {
        "03-02-03-01-01-01-01.wav",
        "01-01-03-01-01-01-01.wav",
        "03-01-09-01-01-01-01.wav",
        "foo.wav",
    }  # README.txt and notes.csv are ignored silently
    assert "song" in why["03-02-03-01-01-01-01.wav"]
    assert "audio-only" in why["01-01-03-01-01-01-01.wav"]
    assert "emotion" in why["03-01-09-01-01-01-01.wav"]
    assert why["foo.wav"] == "name does not match MM-VC-EE-II-SS-RR-AA"


def test_crema_d_with_and_without_demographics(tmp_path):
    names = [
        "AudioWAV/1001_DFA_ANG_XX.wav",
        "AudioWAV/1002_IEO_HAP_HI.wav",
        "AudioWAV/1003_TIE_FEA_LO.wav",
        "AudioWAV/1001_DFA_BOR_XX.wav",
        "AudioWAV/1001_DFA.wav",
    ]
    touch(tmp_path, *names)
    scan = scan_corpus("crema_d", tmp_path / "AudioWAV")
    assert [c.gender for c in scan.clips] == [None, None, None]
    (tmp_path / "VideoDemographics.csv").write_text(
        "ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n"
        "1002,21,Female,Caucasian,Not Hispanic\n"
    )
    scan = scan_corpus("crema_d", tmp_path / "AudioWAV")  # CSV one level up
    clips = by_name(scan.clips)
    angry = clips["1001_DFA_ANG_XX.wav"]
    assert (angry.speaker, angry.emotion, angry.gender, angry.intensity) == (
        "crema_d_1001",
        "angry",
        "male",
        None,
    )
    happy = clips["1002_IEO_HAP_HI.wav"]
    assert (happy.emotion, happy.gender, happy.intensity) == ("happy", "female", "high")
    fear = clips["1003_TIE_FEA_LO.wav"]
    assert (fear.emotion, fear.gender, fear.intensity) == ("fear", None, "low")
    why = reasons(scan.skipped)
    assert "BOR" in why["1001_DFA_BOR_XX.wav"]
    assert "does not match" in why["1001_DFA.wav"]
    # The CSV inside the scanned folder is found too.
    assert by_name(scan_corpus("crema_d", tmp_path).clips)["1001_DFA_ANG_XX.wav"].gender == "male"


def test_tess(tmp_path):
    touch(
        tmp_path,
        "OAF_angry/OAF_back_angry.wav",
        "OAF_Pleasant_surprise/OAF_back_ps.wav",
        "YAF_pleasant_surprised/YAF_bath_pleasant_surprised.wav",
        "YAF_pleasant_surprised/YAF_dog_oops.wav",  # the folder does not name the emotion
        "YAF_surprised/YAF_dog_surprised.wav",
        "YAF_sad/YAF_chat_sad.wav",
        "OAF_neutral/OAF_neutral.wav",  # no word
        "OAF_neutral/OAF_base_bored.wav",
        "XYZ_back_angry.wav",
    )
    scan = scan_corpus("tess", tmp_path)
    got = {Path(c.path).name: (c.speaker, c.emotion) for c in scan.clips}
    assert got == {
        "OAF_back_angry.wav": ("tess_OAF", "angry"),
        "OAF_back_ps.wav": ("tess_OAF", "surprise"),
        "YAF_bath_pleasant_surprised.wav": ("tess_YAF", "surprise"),
        "YAF_dog_surprised.wav": ("tess_YAF", "surprise"),
        "YAF_chat_sad.wav": ("tess_YAF", "sad"),
    }
    assert {c.gender for c in scan.clips} == {"female"}
    assert set(reasons(scan.skipped)) == {
        "OAF_neutral.wav",
        "OAF_base_bored.wav",
        "YAF_dog_oops.wav",
        "XYZ_back_angry.wav",
    }


def test_savee_flat_and_per_speaker_layouts(tmp_path):
    touch(
        tmp_path,
        "ALL/DC_a01.wav",
        "ALL/JE_sa02.wav",
        "ALL/KL_su15.wav",
        "JK/f03.wav",
        "JK/n30.wav",
        "ALL/XX_a01.wav",
        "ALL/DC_x01.wav",
        "misc/h01.wav",  # no speaker anywhere
    )
    scan = scan_corpus("savee", tmp_path)
    got = {Path(c.path).name: (c.speaker, c.emotion) for c in scan.clips}
    assert got == {
        "DC_a01.wav": ("savee_DC", "angry"),
        "JE_sa02.wav": ("savee_JE", "sad"),
        "KL_su15.wav": ("savee_KL", "surprise"),
        "f03.wav": ("savee_JK", "fear"),
        "n30.wav": ("savee_JK", "neutral"),
    }
    assert {c.gender for c in scan.clips} == {"male"}
    why = reasons(scan.skipped)
    assert set(why) == {"XX_a01.wav", "DC_x01.wav", "h01.wav"}
    assert "unknown speaker" in why["XX_a01.wav"]


def test_emodb_and_boredom(tmp_path):
    touch(
        tmp_path,
        "wav/03a01Fa.wav",
        "wav/08b02La.wav",
        "wav/16a05Wb.wav",
        "wav/13b10Ec.wav",
        "wav/03a01Xa.wav",
        "wav/99a01Fa.wav",
        "wav/3a01Fa.wav",
    )
    scan = scan_corpus("emodb", tmp_path)
    got = {Path(c.path).name: (c.speaker, c.emotion, c.gender) for c in scan.clips}
    assert got == {
        "03a01Fa.wav": ("emodb_03", "happy", "male"),
        "16a05Wb.wav": ("emodb_16", "angry", "female"),
        "13b10Ec.wav": ("emodb_13", "disgust", "female"),
    }
    why = reasons(scan.skipped)
    assert set(why) == {"08b02La.wav", "03a01Xa.wav", "99a01Fa.wav", "3a01Fa.wav"}
    assert "boredom" in why["08b02La.wav"]
    kept = scan_corpus("emodb", tmp_path, keep_boredom=True)
    assert by_name(kept.clips)["08b02La.wav"].emotion == "boredom"
    assert len(kept.skipped) == 3


def test_synthetic_layout(tmp_path):
    touch(
        tmp_path,
        "spk01/synthetic_spk01_angry_000.wav",
        "spk03/synthetic_spk03_sad_012.wav",
        "spk03/synthetic_spk03_bored_000.wav",
        "README.txt",
    )
    scan = scan_corpus("synthetic", tmp_path)
    assert [(c.speaker, c.emotion) for c in scan.clips] == [
        ("synthetic_01", "angry"),
        ("synthetic_03", "sad"),
    ]
    assert reasons(scan.skipped) == {"synthetic_spk03_bored_000.wav": "unknown emotion 'bored'"}


def test_scan_corpora_and_errors(tmp_path):
    touch(tmp_path / "r", "Actor_01/03-01-05-01-01-01-01.wav", "Actor_01/bad.wav")
    touch(tmp_path / "t", "OAF_back_angry.wav")
    scan = scan_corpora(f"ravdess:{tmp_path / 'r'}, tess:{tmp_path / 't'}")
    assert [c.speaker for c in scan.clips] == ["ravdess_01", "tess_OAF"]
    assert len(scan.skipped) == 1
    with pytest.raises(ValueError, match="unknown corpus 'iemocap'.*ravdess, crema_d"):
        scan_corpus("iemocap", tmp_path)
    with pytest.raises(ValueError, match="does not exist.*valid names"):
        scan_corpus("tess", tmp_path / "missing")
    with pytest.raises(ValueError, match="NAME:PATH"):
        scan_corpora(str(tmp_path))
    with pytest.raises(ValueError, match="no corpora"):
        scan_corpora(" , ")


def test_real_ravdess():
    if not RAVDESS.is_dir():
        pytest.skip(f"RAVDESS not found at {RAVDESS}")
    scan = scan_corpus("ravdess", RAVDESS)
    assert len(scan.clips) == 960
    assert not scan.skipped
    assert len({c.speaker for c in scan.clips}) == 16
    counts = Counter(c.emotion for c in scan.clips)
    assert set(counts) == set(EMOTIONS)
    assert counts["neutral"] == 192  # neutral + calm
    assert Counter(c.gender for c in scan.clips) == {"male": 480, "female": 480}
