"""Predict emotions for audio files with a trained bundle.

``python -m ser_jax.predict --bundle=WORKDIR/bundle clip1.wav clip2.flac`` prints one JSON line
per file: its path and either the emotion with class probabilities or the reason it was skipped.
A bundle that cannot be used ends in one line (``ser-jax: error: ...``, exit 1; ``--verbose``
adds the traceback).
"""

import json
import sys

from absl import flags

from ser_jax.core.errors import UsageError, run_cli
from ser_jax.inference.predict import predict_files

flags.DEFINE_string("bundle", None, "Inference bundle folder (WORKDIR/bundle).")
flags.mark_flag_as_required("bundle")


def main(argv: list[str]) -> None:
    paths = argv[1:]
    if not paths:
        raise UsageError("no audio files given — list one or more after the flags, e.g. "
                         "python -m ser_jax.predict --bundle=WORKDIR/bundle clip.wav")
    results = predict_files(flags.FLAGS.bundle, paths)
    for result in results:
        print(json.dumps(result))
    if any("error" in result for result in results):
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
