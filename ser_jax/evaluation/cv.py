"""The `cv` stage: speaker-grouped k-fold cross-validation with the full training recipe.

Speakers are grouped into config.cv.folds folds. Fold k tests on its own speakers, validates
(early stopping, plateau schedule) on the speakers of fold k+1 and trains from scratch on the
rest: the recipe's rows (augmented copies included) of its training speakers only, standardized
with a scaler fit on those rows. Features are extracted once per clip and augmentation
(clip_cache.clip_features), not once per fold.

    WORKDIR/cv/clip_features/  raw features of every clip under each recipe entry and "none"
                               (a cache; clip_cache.clip_features)
    WORKDIR/cv/fold_XX/        one training workdir per fold (XX = 00, 01, ...): features/ (the
                               features stage's layout), checkpoints/, metrics.jsonl,
                               tensorboard/, bundle/, train_result.json, evaluation/ (and
                               members/K/ for an ensemble)
    WORKDIR/cv/summary.json    per-fold and mean ± std accuracy, balanced accuracy, macro-F1;
                               per-class recall; the summed confusion matrix (also CSV and PNG)
    WORKDIR/cv/predictions.csv every clip's out-of-fold prediction and class probabilities

A killed run resumes: finished folds are read back, an unfinished one resumes from its latest
checkpoint. A fold made from other data, speakers or model/training settings starts again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np
import pandas as pd
from absl import logging

from ser_jax.core.files import write_bytes_atomic, write_json_atomic
from ser_jax.core.process import barrier, is_chief
from ser_jax.data.corpora import Clip
from ser_jax.data.errors import DatasetError
from ser_jax.data.labels import label_names
from ser_jax.data.splits import SPLITS
from ser_jax.evaluation import evaluate
from ser_jax.evaluation.metrics import classification_metrics
from ser_jax.evaluation.report import format_table, write_confusion
from ser_jax.features import clip_cache, feature_dir, pipeline
from ser_jax.training import loop, settings

FOLD_FORMAT_VERSION = 1  # bump when a fold's files or their meaning change
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


@dataclasses.dataclass(frozen=True)
class Fold:
    """One cross-validation round: disjoint speaker sets for training, validation and test."""

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


# --------------------------------------------------------------------------- folds


def assign_speakers(clips: Sequence[Clip], folds: int, seed: int = 0) -> list[list[str]]:
    """Groups the clips' speakers into `folds` disjoint, non-empty, sorted lists.

    Fold sizes differ by at most one speaker. Within that, each (corpus, gender) group is spread
    as evenly as possible over the folds (RAVDESS: one man and one woman per fold), then clip
    counts are balanced: greedily, then by swapping speakers of the same group between folds
    while that evens out the folds' clip counts. Ties go in seeded random order, so the result is
    deterministic per seed.
    """
    clip_counts = Counter(c.speaker for c in clips)
    group_of = {c.speaker: (c.corpus, c.gender or "unknown") for c in clips}
    speakers = sorted(clip_counts)
    _check_folds(folds, speakers)
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for i in rng.permutation(len(speakers)):
        groups[group_of[speakers[i]]].append(speakers[i])
    # Largest groups first, each group's largest speakers first; sorts are stable, so speakers
    # of equal size stay in the seeded order.
    order = [s for g in sorted(groups, key=lambda g: (-len(groups[g]), g))
             for s in sorted(groups[g], key=lambda s: -clip_counts[s])]
    members: list[list[str]] = [[] for _ in range(folds)]
    in_group = [Counter() for _ in range(folds)]
    sizes = [0] * folds
    for s in order:
        tie = rng.permutation(folds)
        k = min(range(folds), key=lambda k: (len(members[k]), in_group[k][group_of[s]], sizes[k],
                                             tie[k]))
        members[k].append(s)
        in_group[k][group_of[s]] += 1
        sizes[k] += clip_counts[s]
    _balance_clips(members, group_of, clip_counts)
    return [sorted(m) for m in members]


def _balance_clips(members: list[list[str]], group_of: dict[str, tuple[str, str]],
                   clip_counts: Counter) -> None:
    """Swaps same-group speakers between folds while that lowers the sum of squared fold clip
    counts (so speaker and group counts per fold stay as they are)."""
    totals = [sum(clip_counts[s] for s in m) for m in members]
    improved = True
    while improved:
        improved = False
        for a, b in itertools.combinations(range(len(members)), 2):
            for i, j in itertools.product(range(len(members[a])), range(len(members[b]))):
                s, t = members[a][i], members[b][j]
                moved = clip_counts[t] - clip_counts[s]  # clips fold a gains
                if group_of[s] != group_of[t] or moved == 0:
                    continue
                if (totals[a] + moved) ** 2 + (totals[b] - moved) ** 2 < (
                        totals[a] ** 2 + totals[b] ** 2):
                    members[a][i], members[b][j] = t, s
                    totals[a] += moved
                    totals[b] -= moved
                    improved = True


def _check_folds(folds: int, speakers: Sequence[str]) -> None:
    listed = ", ".join(speakers[:20]) + (f" and {len(speakers) - 20} more"
                                         if len(speakers) > 20 else "")
    if len(speakers) < 3:
        raise DatasetError(
            f"Speaker-grouped cross-validation needs at least 3 speakers (test, validation and "
            f"training speakers differ), but the corpus has {len(speakers)}: {listed or 'none'}. "
            "Add corpora or speakers."
        )
    if folds < 3:
        raise DatasetError(
            f"cv.folds={folds} is too few: each fold takes its test and validation speakers from "
            "two other folds than its training speakers, so at least 3 folds are needed; set "
            f"cv.folds between 3 and {len(speakers)} (the number of speakers)."
        )
    if folds > len(speakers):
        raise DatasetError(
            f"cv.folds={folds} needs at least {folds} speakers (one or more per fold), but the "
            f"corpus has {len(speakers)}: {listed}. Set cv.folds to at most {len(speakers)}."
        )


def make_folds(groups: Sequence[Sequence[str]]) -> list[Fold]:
    """Fold k: test = groups[k], val = groups[(k + 1) mod K], train = every other group."""
    count = len(groups)
    folds = []
    for k in range(count):
        val = (k + 1) % count
        rest = sorted(s for j, g in enumerate(groups) if j not in (k, val) for s in g)
        folds.append(Fold(k, tuple(rest), tuple(sorted(groups[val])), tuple(sorted(groups[k]))))
    return folds


# --------------------------------------------------------------------------- fold data


def fold_splits(clips: Sequence[Clip], fold: Fold) -> dict[str, list[int]]:
    """The fold's clip indices per split (clips of speakers outside the fold are left out)."""
    role = {s: split for split in SPLITS for s in getattr(fold, split)}
    return {split: [i for i, c in enumerate(clips) if role.get(c.speaker) == split]
            for split in SPLITS}


def fold_fingerprint(config: ml_collections.ConfigDict, clip_features: feature_dir.ClipFeatures,
                     fold: Fold, recipe: Sequence[str], labels: Sequence[str]) -> str:
    """A hash of everything a fold's result depends on."""
    record = {
        "version": FOLD_FORMAT_VERSION,
        "features": clip_features.fingerprint,
        "recipe": list(recipe),
        "labels": list(labels),
        "fold": dataclasses.asdict(fold),
        "seed": config.seed,
        "model": config.model.to_dict(),
        "train": settings.result_settings(config.train),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def write_fold_features(clip_features: feature_dir.ClipFeatures, fold: Fold, recipe: Sequence[str],
                        labels: list[str], out_dir: Path, fingerprint: str) -> None:
    """Writes the fold's features/ folder in the features stage's layout (atomically)."""
    manifest = {"fingerprint": fingerprint, "cv_fold": fold.index,
                "speakers": {split: list(getattr(fold, split)) for split in SPLITS},
                "corpora": clip_features.corpus_spec, "synthetic": clip_features.synthetic,
                "recipe": list(recipe)}
    clip_cache.write_split_features(out_dir, clip_features, fold_splits(clip_features.clips, fold),
                                  recipe, labels, manifest)


def _stored_fingerprint(fold_dir: Path) -> str | None:
    try:
        return json.loads((fold_dir / "features" / "manifest.json").read_text()).get(
            "fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def run_fold(config: ml_collections.ConfigDict, clip_features: feature_dir.ClipFeatures, fold: Fold,
             recipe: Sequence[str], labels: list[str], fold_dir: Path) -> dict:
    """Trains (or resumes, or skips when finished) and evaluates one fold.

    Returns the fold's evaluation report with its train_result.json under "training".
    """
    fingerprint = fold_fingerprint(config, clip_features, fold, recipe, labels)
    if is_chief() and _stored_fingerprint(fold_dir) != fingerprint:
        if fold_dir.exists():
            logging.warning("cv: %s was made from other data, speakers or settings; starting it "
                            "again", fold_dir)
            shutil.rmtree(fold_dir)
        write_fold_features(clip_features, fold, recipe, labels, fold_dir / "features",
                            fingerprint)
    barrier(f"cv features {fold_dir}")
    if (fold_dir / "train_result.json").is_file():
        logging.info("cv: fold %d already trained (%s)", fold.index, fold_dir)
    else:
        loop.train_and_evaluate(config, fold_dir)
    out = fold_dir / "evaluation"
    report = None
    if is_chief() and not (out / evaluate.PREDICTIONS_FILE).is_file():
        report = evaluate.evaluate(fold_dir)
    barrier(f"cv evaluation {fold_dir}")  # the other processes read what process 0 wrote
    if report is None:
        report = json.loads((out / "metrics.json").read_text())
    training = json.loads((fold_dir / "train_result.json").read_text())
    return {**report, "training": training}


# --------------------------------------------------------------------------- summary


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()),
            "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def summarize(folds: Sequence[Fold], reports: Sequence[dict], labels: list[str]) -> dict:
    """Per-fold and mean ± std metrics, per-class recall and the summed confusion matrix."""
    per_fold = []
    for fold, report in zip(folds, reports, strict=True):
        per_fold.append({
            "fold": fold.index, "test_speakers": list(fold.test), "val_speakers": list(fold.val),
            "rows": report["rows"], **{m: report[m] for m in METRICS},
            "best_epoch": report.get("training", {}).get("best_epoch"),
            "epochs_run": report.get("training", {}).get("epochs_run"),
            "recall": {label: row["recall"] if row["support"] else None
                       for label, row in report["per_class"].items()},
        })
    summed = np.sum([np.asarray(r["confusion_matrix"], np.int64) for r in reports], axis=0)
    pooled = classification_metrics(summed, labels)
    recall = {}
    for label in labels:
        values = [f["recall"][label] for f in per_fold if f["recall"][label] is not None]
        recall[label] = {**(_mean_std(values) if values else {"mean": None, "std": None}),
                         "folds": len(values), "pooled": pooled["per_class"][label]["recall"]}
    return {
        "folds": len(folds),
        "std_definition": "sample standard deviation over folds (ddof=1)",
        **{m: _mean_std([f[m] for f in per_fold]) for m in METRICS},
        "per_class_recall": recall,
        "pooled": pooled,
        "labels": labels,
        "confusion_matrix": summed.tolist(),
        "per_fold": per_fold,
    }


def format_summary(summary: dict) -> str:
    """A short plain-text table: one line per fold, mean ± std, per-class recall."""
    def row(name: str, speakers: str, rows: str, values: list[str]) -> str:
        return f"{name:<6} {speakers:<26} {rows:>6} " + " ".join(f"{v:>15}" for v in values)

    lines = [row("fold", "test speakers", "rows", ["accuracy", "balanced acc.", "macro-F1"])]
    for f in summary["per_fold"]:
        speakers = ",".join(f["test_speakers"])
        speakers = speakers if len(speakers) <= 26 else speakers[:23] + "..."
        lines.append(row(str(f["fold"]), speakers, str(f["rows"]),
                         [f"{f[m]:.3f}" for m in METRICS]))
    lines.append(row("mean", "± std over folds", str(summary["pooled"]["rows"]),
                     [f"{summary[m]['mean']:.3f} ± {summary[m]['std']:.3f}" for m in METRICS]))
    lines.append(f"recall per class: {'mean ± std over folds':>24} {'summed matrix':>14}")
    for label, r in summary["per_class_recall"].items():
        spread = "-" if r["mean"] is None else f"{r['mean']:.3f} ± {r['std']:.3f}"
        lines.append(f"  {label:<15} {spread:>24} {r['pooled']:>14.3f}")
    pooled = {"split": "summed test folds'", **summary["pooled"]}
    return "\n".join(lines) + "\n" + format_table(pooled)


def write_summary(cv_dir: Path, summary: dict) -> None:
    """Writes summary.json and the summed confusion matrix as CSV and PNG."""
    labels, matrix = summary["labels"], np.asarray(summary["confusion_matrix"])
    write_json_atomic(cv_dir / "summary.json", summary)
    title = f"{summary['folds']}-fold speaker CV, summed test folds ({int(matrix.sum())} rows)"
    write_confusion(cv_dir, matrix, labels, title)


def write_predictions(cv_dir: Path, folds: Sequence[Fold]) -> None:
    """Writes predictions.csv: every fold's test rows with their predictions (out-of-fold: each
    clip scored by the fold whose model never heard its speaker) and a ``fold`` column."""
    frames = [pd.read_csv(cv_dir / f"fold_{fold.index:02d}" / "evaluation" /
                          evaluate.PREDICTIONS_FILE).assign(fold=fold.index) for fold in folds]
    write_bytes_atomic(cv_dir / evaluate.PREDICTIONS_FILE,
                       pd.concat(frames, ignore_index=True).to_csv(index=False).encode())


# --------------------------------------------------------------------------- stage


def cross_validate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Runs (or resumes) the cv stage into workdir/cv (see the module docstring)."""
    workdir = Path(workdir)
    cv_dir = workdir / "cv"
    recipe = pipeline.parse_recipe(config.data.augment.recipe)
    labels = label_names(config.data)
    cache = cv_dir / "clip_features"
    if is_chief():  # extracts (or reuses) the cache; the other processes then read it
        clip_features = clip_cache.clip_features(config, cache, [*recipe, "none"], workdir)
    barrier(f"cv clip features {cache}")
    if not is_chief():
        clip_features = clip_cache.clip_features(config, cache, [*recipe, "none"], workdir)
    folds = make_folds(assign_speakers(clip_features.clips, config.cv.folds, config.seed))
    logging.info("cv: %d folds over %d speakers and %d clips", len(folds),
                 sum(len(f.test) for f in folds), len(clip_features.clips))
    reports = []
    for fold in folds:
        started = time.perf_counter()
        logging.info("cv: fold %d/%d, test %s, val %s", fold.index + 1, len(folds),
                     ",".join(fold.test), ",".join(fold.val))
        reports.append(run_fold(config, clip_features, fold, recipe, labels,
                                cv_dir / f"fold_{fold.index:02d}"))
        logging.info("cv: fold %d done in %.0f s: accuracy %.3f", fold.index + 1,
                     time.perf_counter() - started, reports[-1]["accuracy"])
    summary = {
        "corpora": clip_features.corpus_spec,
        "synthetic": clip_features.synthetic,
        "recipe": recipe,
        "seed": config.seed,
        "clips": len(clip_features.clips),
        "rejects": [{"path": p, "reason": r} for p, r in clip_features.rejects],
        **summarize(folds, reports, labels),
    }
    if is_chief():
        write_summary(cv_dir, summary)
        write_predictions(cv_dir, folds)
        print(format_summary(summary), flush=True)
    barrier(f"cv summary {cv_dir}")
    return summary
