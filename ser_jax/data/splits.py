"""Speaker-independent (or per-class stratified) train/val/test splits of clips."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from absl import logging

from ser_jax.data.corpora import Clip
from ser_jax.data.errors import DatasetError

SPLITS = ("train", "val", "test")



def split_clips(
    clips: Sequence[Clip],
    *,
    mode: str = "speaker",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    val_speakers: Sequence[str] = (),
    test_speakers: Sequence[str] = (),
    seed: int = 0,
) -> dict[str, list[int]]:
    """Splits clips into train/val/test index lists (sorted; every index in exactly one split).

    mode "speaker": no speaker in two splits; speakers are assigned greedily (largest first, ties
    in seeded random order) to the split whose per-class deficit they fill best, after giving
    each split with a positive fraction one speaker. An explicit speaker list for a split wins
    over that split's fraction; the other split still uses its fraction. mode "file": per-class
    stratified split of files, ignoring speakers.
    """
    if not clips:
        raise DatasetError("Cannot split an empty clip list: no audio clips were found or loaded.")
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise DatasetError(f"{name}={fraction} must be in [0, 1).")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no training "
            "data; keep their sum below 1."
        )
    rng = np.random.default_rng(seed)
    if mode == "speaker":
        splits = _split_by_speaker(
            clips, val_fraction, test_fraction, tuple(val_speakers), tuple(test_speakers), rng
        )
    elif mode == "file":
        if val_speakers or test_speakers:
            raise DatasetError(
                "val_speakers/test_speakers only apply to mode='speaker'; "
                "clear them or switch the split mode to 'speaker'."
            )
        splits = _split_by_file(clips, val_fraction, test_fraction, rng)
    else:
        raise DatasetError(f"Unknown split mode {mode!r}; use 'speaker' or 'file'.")
    return {name: sorted(indices) for name, indices in splits.items()}


def _split_by_speaker(
    clips: Sequence[Clip],
    val_fraction: float,
    test_fraction: float,
    val_speakers: tuple[str, ...],
    test_speakers: tuple[str, ...],
    rng: np.random.Generator,
) -> dict[str, list[int]]:
    classes = sorted({c.emotion for c in clips})
    class_index = {name: i for i, name in enumerate(classes)}
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        by_speaker[clip.speaker].append(i)
    speakers = sorted(by_speaker)
    counts = {s: np.zeros(len(classes)) for s in speakers}
    for s, indices in by_speaker.items():
        for i in indices:
            counts[s][class_index[clips[i].emotion]] += 1

    explicit = {"val": val_speakers, "test": test_speakers}
    _check_explicit_speakers(explicit, by_speaker)
    assignment: dict[str, str] = {}
    for name, listed in explicit.items():
        assignment.update(dict.fromkeys(listed, name))

    fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction,
                 "test": test_fraction}
    open_splits = [n for n in SPLITS if fractions[n] > 0 and not explicit.get(n)]
    free = [s for s in speakers if s not in assignment]
    if not free:
        raise DatasetError(
            "The explicit val/test speaker lists take every speaker; leave at least one speaker "
            f"for training (speakers: {', '.join(speakers)})."
        )
    if len(free) < len(open_splits):
        raise DatasetError(
            f"A speaker-independent split needs one speaker per split ({', '.join(open_splits)}) "
            f"but only {len(free)} speaker(s) are left to assign ({', '.join(free) or 'none'}) of "
            f"{len(speakers)} in total. Use fewer splits (test_fraction=0), add speakers, pass "
            "explicit val/test speaker lists, or use split mode 'file'."
        )

    filled = {n: np.zeros(len(classes)) for n in SPLITS}
    for s, name in assignment.items():
        filled[name] += counts[s]
    # Per-class clip targets; an explicit split's target is what it already holds.
    totals = sum(counts.values())
    target = {n: filled[n] if explicit[n] else fractions[n] * totals for n in ("val", "test")}
    target["train"] = np.maximum(totals - target["val"] - target["test"], 0.0)
    # Largest speakers first (better packing); ties in seeded random order.
    order = [free[i] for i in rng.permutation(len(free))]
    order.sort(key=lambda s: -counts[s].sum())

    # Seed every open split with one speaker: the one covering the most classes whose size is
    # closest to the split's target size (the smallest split first, so it gets the best fit).
    for name in sorted(open_splits, key=lambda n: fractions[n]):
        size = target[name].sum()
        best = min(
            order,
            key=lambda s: (-np.count_nonzero(counts[s]), abs(counts[s].sum() - size)),
        )
        order.remove(best)
        assignment[best] = name
        filled[name] += counts[best]

    # Greedy: each speaker goes to the open split with the largest deficit in its classes.
    for s in order:
        deficits = [float(counts[s] @ (target[n] - filled[n])) for n in open_splits]
        name = open_splits[int(np.argmax(deficits))]
        assignment[s] = name
        filled[name] += counts[s]

    splits = {n: [] for n in SPLITS}
    for s, name in assignment.items():
        splits[name].extend(by_speaker[s])
    return splits


def _check_explicit_speakers(
    explicit: dict[str, tuple[str, ...]], by_speaker: dict[str, list[int]]
) -> None:
    valid = ", ".join(sorted(by_speaker))
    for name, listed in explicit.items():
        unknown = [s for s in listed if s not in by_speaker]
        if unknown:
            raise DatasetError(
                f"Unknown {name}_speakers {', '.join(unknown)}; speaker ids are "
                f"'<corpus>_<id>', valid ones here: {valid}."
            )
    both = sorted(set(explicit["val"]) & set(explicit["test"]))
    if both:
        raise DatasetError(
            f"Speaker(s) {', '.join(both)} listed in both val_speakers and test_speakers; "
            "list each speaker in one split only."
        )


def _split_by_file(
    clips: Sequence[Clip], val_fraction: float, test_fraction: float, rng: np.random.Generator
) -> dict[str, list[int]]:
    fractions = {"val": val_fraction, "test": test_fraction}
    wanted = [n for n in ("val", "test") if fractions[n] > 0]
    if len(clips) < 1 + len(wanted):
        raise DatasetError(
            f"Only {len(clips)} clip(s): not enough for train plus {' and '.join(wanted)}; "
            "add clips or set the val/test fractions to 0."
        )
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        by_class[clip.emotion].append(i)
    classes = sorted(by_class)
    shuffled = {c: [by_class[c][j] for j in rng.permutation(len(by_class[c]))] for c in classes}

    # Per-class quotas: floors of the exact shares, then the overall total (at least one clip for
    # a positive fraction) is reached by giving the leftovers to the largest remainders.
    quotas = {n: dict.fromkeys(classes, 0) for n in wanted}
    for name in wanted:
        exact = {c: fractions[name] * len(by_class[c]) for c in classes}
        total = max(1, round(fractions[name] * len(clips)))
        for c in classes:
            quotas[name][c] = int(np.floor(exact[c]))
        tied = [classes[i] for i in rng.permutation(len(classes))]  # ties in seeded order
        by_remainder = sorted(tied, key=lambda c: exact[c] - quotas[name][c], reverse=True)
        for c in by_remainder:
            if sum(quotas[name].values()) >= total:
                break
            quotas[name][c] += 1

    splits = {n: [] for n in SPLITS}
    for c in classes:
        rest = shuffled[c]
        for name in wanted:
            # Keep at least one clip of each class for training.
            take = min(quotas[name][c], max(len(rest) - 1, 0))
            splits[name].extend(rest[:take])
            rest = rest[take:]
        splits["train"].extend(rest)
    for name in wanted:  # a split that came out empty takes a clip from the largest class
        if not splits[name]:
            donor = max(classes, key=lambda c: sum(clips[i].emotion == c for i in splits["train"]))
            moved = next(i for i in splits["train"] if clips[i].emotion == donor)
            splits["train"].remove(moved)
            splits[name].append(moved)
    return splits


def check_class_balance(clips: Sequence[Clip], splits: dict[str, list[int]],
                        labels: Sequence[str], min_share: float, log: bool = True
                        ) -> list[str]:
    """Warnings for classes with no clips or fewer than ``min_share`` of the largest class;
    DatasetError when a non-empty split lacks a class that another split has."""
    counts = {split: {label: 0 for label in labels} for split in splits}
    for split, indices in splits.items():
        for i in indices:
            counts[split][clips[i].emotion] = counts[split].get(clips[i].emotion, 0) + 1
    totals = {label: sum(counts[split][label] for split in splits) for label in labels}
    for split, indices in splits.items():
        missing = [label for label in labels if indices and totals[label]
                   and not counts[split][label]]
        if missing:
            raise DatasetError(
                f"the {split} split has no clips of {', '.join(missing)}, which the other "
                "splits have — give it more speakers (data.split.*_fraction or *_speakers) "
                "or use --config.data.split.mode=file")
    largest = max(totals.values(), default=0)
    warnings = [f"class {label} has no clips in the corpus" for label in labels
                if not totals[label]]
    warnings += [f"class {label} has {totals[label]} clips, under {min_share:.0%} of the "
                 f"largest class ({largest})" for label in labels
                 if 0 < totals[label] < min_share * largest]
    for warning in warnings if log else ():
        logging.warning("features: %s", warning)
    return warnings
