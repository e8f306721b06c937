"""Plain-Python logic behind the ser-jax DAGs, importable and testable without Airflow.

``params`` (validated run parameters), ``commands`` (the trainer command of each stage), ``pods``
(Kubernetes resources, node selectors, tolerations and env per hardware), ``gate`` (champion /
challenger decision), ``publish`` (versioned models/ folder and the ``current`` pointer) and
``monitor`` (the drift-check command and its exit codes). ``launchers`` is the one module that
imports Airflow: it turns a command and a pod spec into an operator.
"""
