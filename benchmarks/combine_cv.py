"""Scores the average of several cv runs' out-of-fold class probabilities.

Each run's ``WORKDIR/cv/predictions.csv`` gives every clip's probabilities from the fold that
tested its speaker; averaging them over runs of the same folds (same seed) is what a per-fold
ensemble of those runs' models would predict. Prints balanced accuracy, accuracy and macro-F1
per run and for the average, pooled over all clips and as mean ± std over the folds.

    .venv/bin/python benchmarks/combine_cv.py workdir/tcv2 workdir/tcv3
    .venv/bin/python benchmarks/combine_cv.py --members workdir/tcvi0   # an ensemble's members
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ser_jax.data import store
from ser_jax.evaluation import cv, evaluate
from ser_jax.inference import bundle
from ser_jax.models import registry


def read_predictions(workdir: Path) -> pd.DataFrame:
    path = workdir / "cv" / evaluate.PREDICTIONS_FILE
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run the cv stage into {workdir} first")
    return pd.read_csv(path).set_index("path").sort_index()


def member_probabilities(workdir: Path, index: pd.Index) -> list[tuple[str, np.ndarray]]:
    """Each ensemble member's out-of-fold probabilities (rows in ``index`` order), from every
    fold's ``members/K/bundle`` on that fold's test split."""
    found: dict[str, pd.DataFrame] = {}
    for fold_dir in sorted((workdir / "cv").glob("fold_*")):
        paths = pd.read_parquet(fold_dir / "features" / "test.parquet", columns=["path"])["path"]
        for member_dir in sorted((fold_dir / "members").glob("*")):
            member = bundle.load(member_dir / "bundle")
            x, _ = store.load_inputs(fold_dir / "features", "test", member.labels,
                                       registry.model_inputs(member.config.model))
            name = f"{workdir} member {member_dir.name}"
            frame = pd.DataFrame(member.probabilities(x), index=paths)
            found[name] = pd.concat([found[name], frame]) if name in found else frame
    if not found:
        raise SystemExit(f"{workdir}/cv/fold_*/members/ is missing: not an ensemble cv run")
    return [(name, frame.loc[index].to_numpy()) for name, frame in found.items()]


def scores(frame: pd.DataFrame, probabilities: np.ndarray, labels: list[str]) -> dict:
    """Pooled metrics and mean ± std over folds of the predictions argmax(probabilities)."""
    y = frame["label"].map(labels.index).to_numpy()
    predicted = probabilities.argmax(1)

    def metrics(mask: np.ndarray) -> dict:
        matrix = metrics.confusion_matrix(y[mask], predicted[mask], len(labels))
        return metrics.classification_metrics(matrix, labels)

    folds = [metrics(frame["fold"].to_numpy() == k) for k in sorted(frame["fold"].unique())]
    pooled = metrics(np.ones(len(y), bool))
    return {m: (pooled[m], np.mean([f[m] for f in folds]), np.std([f[m] for f in folds], ddof=1))
            for m in cv.METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", type=Path, help="cv workdirs of the same folds")
    parser.add_argument("--members", action="store_true",
                        help="also score each ensemble member of every run on its own")
    args = parser.parse_args()
    frames = [read_predictions(w) for w in args.workdirs]
    labels = [c[2:] for c in frames[0].columns if c.startswith("p_")]
    for w, f in zip(args.workdirs[1:], frames[1:], strict=True):
        if not (f.index.equals(frames[0].index) and (f["fold"] == frames[0]["fold"]).all()):
            raise SystemExit(f"{w} scored other clips or folds than {args.workdirs[0]}: "
                             "combine runs of the same corpus and seed")
    columns = [f"p_{label}" for label in labels]
    rows = [(str(w), f[columns].to_numpy()) for w, f in zip(args.workdirs, frames, strict=True)]
    if len(rows) > 1:
        rows.append(("average", np.mean([p for _, p in rows], axis=0)))
    if args.members:
        rows += [row for w in args.workdirs for row in member_probabilities(w, frames[0].index)]
    print(f"{'run':<28}" + "".join(f"{m + ' pooled | folds':>34}" for m in cv.METRICS))
    for name, probabilities in rows:
        result = scores(frames[0], probabilities, labels)
        print(f"{name:<28}" + "".join(f"{p:>13.3f} | {mean:.3f} ± {std:.3f}    "
                                      for p, mean, std in result.values()))


if __name__ == "__main__":
    main()
