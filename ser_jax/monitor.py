"""Drift monitoring: ``python -m ser_jax.monitor --bundle=B --report=DIR PATH...``.

PATH: audio files, folders of audio, or a features parquet. Writes DIR/drift_report.json and
DIR/drift_report.png, prints a summary, and exits 0 (no drift) or 3 (drift).
"""

import sys

from absl import app, flags

from ser_jax.core.errors import run_cli
from ser_jax.monitoring import drift
from ser_jax.monitoring import run as monitoring

DRIFT_EXIT_CODE = 3
defaults = drift.Thresholds()
flags.DEFINE_string("bundle", None, "Inference bundle folder (WORKDIR/bundle).")
flags.DEFINE_string("report", None, "Folder for drift_report.json and drift_report.png.")
flags.DEFINE_float("psi_threshold", defaults.psi, "A feature drifts when its PSI >= this...")
flags.DEFINE_float("ks_alpha", defaults.ks_alpha,
                   "...and its two-sample KS test rejects at this significance level.")
flags.DEFINE_float("share_threshold", defaults.share,
                   "Drift when this share of features (0..1) drifts.")
flags.DEFINE_float("class_psi_threshold", defaults.class_psi,
                   "Drift when the predicted class mix's PSI >= this.")
flags.DEFINE_float("quality_threshold", defaults.quality,
                   "Drift when a quality rate (silent, clipped, too short) rises by >= this.")
flags.mark_flags_as_required(["bundle", "report"])
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise app.UsageError("give audio files, folders or a features parquet after the flags")
    thresholds = drift.Thresholds(FLAGS.psi_threshold, FLAGS.ks_alpha, FLAGS.share_threshold,
                                  FLAGS.class_psi_threshold, FLAGS.quality_threshold)
    report = monitoring.monitor(FLAGS.bundle, argv[1:], FLAGS.report, thresholds)
    features = report["features"]
    print(f"{report['rows']} rows; {len(features['drifted'])} features drifted "
          f"({features['share_drifted']:.1%}); "
          + (f"class mix PSI {report['class_mix']['psi']:.3f}; " if "class_mix" in report
             else "")
          + ("DRIFT: " + "; ".join(report["reasons"]) if report["drift"] else "no drift"))
    report_dir = FLAGS.report.rstrip("/")
    print(f"report: {report_dir}/{monitoring.REPORT_JSON}, {report_dir}/{monitoring.REPORT_PNG}")
    sys.exit(DRIFT_EXIT_CODE if report["drift"] else 0)


def run() -> None:
    """Console-script entry point."""
    run_cli(main)


if __name__ == "__main__":
    run()
