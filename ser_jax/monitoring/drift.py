"""Drift statistics of new data against a bundle's reference, and the report (JSON + PNG).

PSI is computed on bin PROPORTIONS with epsilon smoothing: each share p becomes
(p + EPS) / (1 + K * EPS) over K bins, so empty bins give a finite PSI; PSI = sum (q - p) ln(q/p)
for reference shares p and new shares q. KS is max |F_new - F_ref| evaluated at the reference's
percentiles (0..100), which differs from the exact two-sample statistic by at most 0.01; its
p-value is the asymptotic two-sample one (Kolmogorov distribution at KS * sqrt(n m / (n + m))).

A feature counts as drifted only when its PSI reaches the threshold AND the KS test rejects at
``ks_alpha``: with tens of new clips, PSI over 10 bins has a sampling bias of about
(bins - 1) * (1/n + 1/m) (0.25 at n = 56, m = 98), so PSI alone flags unshifted data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from scipy import stats

from ser_jax.training.reference import bin_proportions

EPS = 1e-4


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """When is it drift: a feature drifts when its PSI >= ``psi`` and its KS p-value <
    ``ks_alpha``; the data drift when the share
    of drifted features >= ``share``, or the predicted class mix's PSI >= ``class_psi``, or a
    quality rate rose by >= ``quality`` (absolute) over the reference."""

    psi: float = 0.25
    ks_alpha: float = 0.01
    share: float = 0.2
    class_psi: float = 0.25
    quality: float = 0.1


def smoothed(proportions: np.ndarray) -> np.ndarray:
    p = np.asarray(proportions, np.float64)
    return (p + EPS) / (1 + len(p) * EPS)


def psi(reference: np.ndarray, new: np.ndarray) -> float:
    """Population stability index of two proportion vectors over the same bins."""
    p, q = smoothed(reference), smoothed(new)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_against_percentiles(values: np.ndarray, percentiles: np.ndarray) -> float:
    """max |F_new(x) - F_ref(x)| over the reference percentiles x (F_ref(x_k) = k/100)."""
    new_cdf = np.searchsorted(np.sort(values), percentiles, side="right") / len(values)
    return float(np.max(np.abs(new_cdf - np.linspace(0, 1, len(percentiles)))))


def compare(reference: dict, x: np.ndarray, probabilities: np.ndarray | None,
            quality: dict | None, thresholds: Thresholds) -> dict:
    """The drift report of raw feature rows ``x`` (N, D), the model's class probabilities on
    them (None: not available) and their quality rates (None: no audio) against ``reference``."""
    names = reference["feature_names"]
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != len(names) or not len(x):
        raise ValueError(f"need (rows >= 1, {len(names)}) feature rows, got shape {x.shape}")
    bins = reference["bins"]
    per_feature = []
    n, m = len(x), reference["rows"]
    for j, name in enumerate(names):
        column = x[:, j]
        new = bin_proportions(column, bins["edges"][j])
        ks = ks_against_percentiles(column, np.asarray(reference["percentiles"][j]))
        ks_p = float(stats.kstwobign.sf(ks * np.sqrt(n * m / (n + m))))
        per_feature.append({"feature": name, "psi": psi(bins["proportions"][j], new), "ks": ks,
                            "ks_p": ks_p})
    drifted = sorted((f for f in per_feature
                      if f["psi"] >= thresholds.psi and f["ks_p"] < thresholds.ks_alpha),
                     key=lambda f: -f["psi"])
    share = len(drifted) / len(names)
    reasons = []
    if share >= thresholds.share:
        reasons.append(f"{len(drifted)} of {len(names)} features ({share:.0%}) have PSI >= "
                       f"{thresholds.psi} and KS p < {thresholds.ks_alpha} (limit "
                       f"{thresholds.share:.0%}); most: "
                       + ", ".join(f["feature"] for f in drifted[:5]))
    report = {
        "rows": len(x),
        "thresholds": dataclasses.asdict(thresholds),
        "psi_smoothing": f"p -> (p + {EPS}) / (1 + K * {EPS}) over K bins",
        "features": {"drifted": [f["feature"] for f in drifted], "share_drifted": share,
                     "per_feature": per_feature},
    }
    if probabilities is not None:
        mix_ref = np.asarray(reference["class_mix"]["proportions"])
        counts = np.bincount(np.argmax(probabilities, axis=1), minlength=len(mix_ref))
        mix = counts / counts.sum()
        class_psi = psi(mix_ref, mix)
        chi2 = stats.chisquare(counts, smoothed(mix_ref) * counts.sum())
        report["class_mix"] = {
            "labels": reference["class_mix"]["labels"], "reference": mix_ref.tolist(),
            "new": mix.tolist(), "psi": class_psi, "chi_square": float(chi2.statistic),
            "chi_square_p": float(chi2.pvalue), "drift": class_psi >= thresholds.class_psi}
        if class_psi >= thresholds.class_psi:
            reasons.append(f"predicted class mix PSI {class_psi:.3f} >= {thresholds.class_psi}")
    if quality is not None:
        ref_quality = reference.get("quality")
        rows = {}
        for name in ("silent", "clipped", "too_short"):
            base = None if ref_quality is None else ref_quality[name]
            rise = quality[name] - (base or 0.0)
            rows[name] = {"rate": quality[name], "reference": base,
                          "drift": rise >= thresholds.quality}
            if rise >= thresholds.quality:
                reasons.append(f"{name} rate {quality[name]:.1%} (reference "
                               f"{(base or 0.0):.1%}) rose by >= {thresholds.quality:.0%}")
        report["quality"] = {"clips": quality["clips"], **rows}
    report["drift"] = bool(reasons)
    report["reasons"] = reasons
    return report


def plot(report: dict, path: Path, top: int = 20) -> None:
    """A PNG: the features with the highest PSI, and the class mix against the reference."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    features = sorted(report["features"]["per_feature"], key=lambda f: -f["psi"])[:top]
    mix = report.get("class_mix")
    fig, axes = plt.subplots(1, 2 if mix else 1, figsize=(13 if mix else 7, 5), squeeze=False)
    ax = axes[0, 0]
    ax.barh([f["feature"] for f in features][::-1], [f["psi"] for f in features][::-1],
            color=["tab:red" if f["psi"] >= report["thresholds"]["psi"] else "tab:gray"
                   for f in features][::-1])
    ax.axvline(report["thresholds"]["psi"], color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("PSI")
    ax.set_title(f"Top {len(features)} features by PSI "
                 f"({report['features']['share_drifted']:.0%} drifted)")
    if mix:
        ax = axes[0, 1]
        positions = np.arange(len(mix["labels"]))
        ax.bar(positions - 0.2, mix["reference"], 0.4, label="reference (validation)")
        ax.bar(positions + 0.2, mix["new"], 0.4, label="new data")
        ax.set_xticks(positions, mix["labels"], rotation=30)
        ax.set_ylabel("share of predictions")
        ax.set_title(f"Predicted class mix (PSI {mix['psi']:.3f})")
        ax.legend()
    fig.suptitle("DRIFT" if report["drift"] else "no drift")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
