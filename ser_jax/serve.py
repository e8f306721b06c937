"""Serve a bundle over HTTP: ``python -m ser_jax.serve --bundle=WORKDIR/bundle --port=8000``.

POST /v1/predict (audio upload) -> emotion + probabilities; GET /healthz, /readyz, /v1/model.
See ser_jax/serving/app.py.
"""

import uvicorn
from absl import app, flags

from ser_jax.core.errors import run_cli
from ser_jax.serving.app import Settings, create_app

flags.DEFINE_string("bundle", None, "Inference bundle folder (WORKDIR/bundle).")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
flags.DEFINE_integer("port", 8000, "Port to listen on.")
flags.DEFINE_integer("max_upload_bytes", 20 * 1024 * 1024, "Largest upload accepted (413).")
flags.DEFINE_float("max_seconds", 60.0, "Longest audio accepted, in seconds (413).")
flags.DEFINE_list("buckets", ["1", "2", "4", "8", "16", "32"],
                  "Batch shapes (window rows per model call) compiled at start.")
flags.DEFINE_float("max_wait_ms", 5.0, "How long a model call waits to gather more requests.")
flags.DEFINE_integer("max_pending", 64, "Requests in flight before answering 503.")
flags.DEFINE_boolean("batching", True, "Micro-batching; --nobatching: one request per call.")
flags.DEFINE_integer("decode_threads", 2, "Threads decoding uploads.")
flags.mark_flag_as_required("bundle")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    settings = Settings(FLAGS.bundle, FLAGS.max_upload_bytes, FLAGS.max_seconds,
                        tuple(int(b) for b in FLAGS.buckets), FLAGS.max_wait_ms,
                        FLAGS.max_pending, FLAGS.batching, FLAGS.decode_threads)
    uvicorn.run(create_app(settings), host=FLAGS.host, port=FLAGS.port, log_level="warning")


def run() -> None:
    """Console-script entry point."""
    run_cli(main)


if __name__ == "__main__":
    run()
