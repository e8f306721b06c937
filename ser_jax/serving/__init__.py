"""HTTP serving of an inference bundle: decoding, micro-batched inference, the FastAPI app."""
