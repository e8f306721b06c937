"""ser-jax: speech emotion recognition in JAX/Flax, in layers that import one way (downward):

core -> data -> features -> models -> inference -> training -> evaluation -> main/predict

Each subpackage's docstring says what it owns and what it may import; pyproject.toml's
[tool.importlinter] contract enforces the order (tests/test_architecture.py).
"""
