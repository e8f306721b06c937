"""Predict emotions for audio files and folders with a trained bundle.

``python -m ser_jax.predict --bundle=WORKDIR/bundle clip.wav recordings/`` (or
``ser-jax-predict``) decodes each file whole, classifies sliding windows of the training window
(``--hop`` seconds apart; ser_jax.inference.windows) and writes, per file, one row per window
(start, end, speech, emotion, probabilities) and a file row averaging its speech windows, or
an error row when the file cannot be decoded. Rows go to stdout as JSON lines, or to
``--output=FILE.csv|FILE.jsonl``. Folders are searched recursively for audio files.

Exit status: the number of files that failed (missing, undecodable), capped at 125; 0 when
every file was predicted. Bad flags (exit 2) or an unusable bundle (exit 1) stop before any
file is read, with one line on stderr (``ser-jax: error: ...``; ``--verbose`` adds the
traceback).
"""

import contextlib
import sys

from absl import flags
from tqdm import tqdm

from ser_jax.core.errors import UsageError, run_cli
from ser_jax.data.quality import SILENCE_DB
from ser_jax.inference import bundle, cli, windows

flags.DEFINE_string("bundle", None, "Inference bundle folder (WORKDIR/bundle).")
flags.DEFINE_float("hop", None, "Seconds between window starts (default: half the window).")
flags.DEFINE_string("output", None, "Write rows to FILE.csv or FILE.jsonl instead of stdout.")
flags.DEFINE_bool("windows", True, "Write a row per window (else only each file's row).")
flags.DEFINE_float("silence_db", SILENCE_DB,
                   "A window whose loudest frame is this many dB below the file's has no speech.")
flags.mark_flag_as_required("bundle")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise UsageError("no audio files given — list files or folders after the flags, e.g. "
                         "python -m ser_jax.predict --bundle=WORKDIR/bundle clip.wav")
    fmt = "jsonl"
    if FLAGS.output:
        try:
            fmt = cli.output_format(FLAGS.output)
        except ValueError as e:
            raise UsageError(str(e)) from e
    if FLAGS.hop is not None and FLAGS.hop <= 0:
        raise UsageError(f"--hop={FLAGS.hop}: give a positive number of seconds")
    model = bundle.load(FLAGS.bundle)
    files, missing = cli.expand_paths(argv[1:])
    failed = len(missing)
    with contextlib.ExitStack() as stack:
        stream = (stack.enter_context(open(FLAGS.output, "w", newline="", encoding="utf-8"))
                  if FLAGS.output else sys.stdout)
        writer = cli.RowWriter(stream, fmt, model.labels)
        writer.write(windows.error_row(path, reason) for path, reason in missing)
        bar = stack.enter_context(tqdm(total=len(files), unit="file", file=sys.stderr,
                                       disable=len(files) < 2 or None))
        for result in windows.predict_paths(model, files, FLAGS.hop, silence_db=FLAGS.silence_db,
                                            on_file=bar.update):
            if isinstance(result, dict):
                failed += 1
                writer.write([result])
            else:
                writer.write(result.rows(FLAGS.windows))
    if failed:
        print(f"{failed} of {len(files) + len(missing)} files failed", file=sys.stderr)
    sys.exit(cli.exit_code(failed))


def run() -> None:
    """The ser-jax-predict console script."""
    run_cli(main)


if __name__ == "__main__":
    run()
