"""Turns a stage's command and pod spec into work: a pod on GKE or any Kubernetes, an indexed
Job for a multi-host TPU slice, or a subprocess on the Airflow worker (``local``).

The only helper module that imports Airflow. Each pipeline task picks its launcher at run time
(the ``launcher`` param), builds the operator here and executes it inside the task, so retries,
timeouts and logs are the task's own.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.google.cloud.operators.kubernetes_engine import (
    GKEStartJobOperator,
    GKEStartPodOperator,
)
from airflow.sdk import Connection, Variable
from kubernetes.client import models as k8s

from ser_jax_dag import commands
from ser_jax_dag.params import RunParams
from ser_jax_dag.pods import Environment, PodSpec, SliceJob, pod_spec, slice_job

log = logging.getLogger(__name__)

ON_FINISH_ACTION = "delete_succeeded_pod"  # keep failed pods for `kubectl logs` / describe
STARTUP_TIMEOUT_S = 900  # accelerator node scale-up plus a multi-GB image pull


def environment() -> Environment:
    """Deployment facts from Airflow Variables (all optional for the local launcher)."""
    def var(name: str, default: str = "") -> str:
        return Variable.get(f"ser_jax_{name}", default=default)

    return Environment(
        namespace=var("namespace", "ser-jax"), service_account=var("service_account", "ser-jax"),
        images=tuple((hw, var(f"image_{hw}")) for hw in ("cpu", "gpu", "tpu")),
        project=var("gcp_project"), location=var("gke_location"), cluster=var("gke_cluster"),
        gcp_conn_id=var("gcp_conn_id", "google_cloud_default"),
        kubernetes_conn_id=var("kubernetes_conn_id", "kubernetes_default"),
        optuna_secret=var("optuna_secret", "ser-jax-optuna"),
        optuna_conn_id=var("optuna_conn_id", "ser_jax_optuna"))


def _env_vars(spec: PodSpec) -> list[k8s.V1EnvVar]:
    values = [k8s.V1EnvVar(name=k, value=v) for k, v in spec.env.items()]
    values += [k8s.V1EnvVar(name=k, value_from=k8s.V1EnvVarSource(
        secret_key_ref=k8s.V1SecretKeySelector(name=secret, key=key)))
        for k, (secret, key) in spec.secret_env.items()]
    values += [k8s.V1EnvVar(name=k, value_from=k8s.V1EnvVarSource(
        field_ref=k8s.V1ObjectFieldSelector(field_path=path)))
        for k, path in spec.field_env.items()]
    return values


def _pod_kwargs(spec: PodSpec) -> dict[str, Any]:
    """Keyword arguments shared by the pod and Job operators (GKE or not)."""
    return dict(
        name=spec.name, namespace=spec.namespace, image=spec.image, cmds=spec.command,
        arguments=[], env_vars=_env_vars(spec), labels=spec.labels,
        container_resources=k8s.V1ResourceRequirements(requests=spec.requests,
                                                       limits=spec.limits),
        node_selector=spec.node_selector,
        tolerations=[k8s.V1Toleration(**t) for t in spec.tolerations],
        service_account_name=spec.service_account, subdomain=spec.subdomain,
        get_logs=True, on_finish_action=ON_FINISH_ACTION,
        startup_timeout_seconds=STARTUP_TIMEOUT_S, do_xcom_push=False)


def _gke_kwargs(env: Environment) -> dict[str, Any]:
    missing = [f"ser_jax_{n}" for n, v in (("gcp_project", env.project),
                                           ("gke_location", env.location),
                                           ("gke_cluster", env.cluster)) if not v]
    if missing:
        raise ValueError(f"launcher=gke needs the Airflow Variables {', '.join(missing)}")
    return dict(project_id=env.project, location=env.location, cluster_name=env.cluster,
                gcp_conn_id=env.gcp_conn_id)


def pod_operator(launcher: str, spec: PodSpec, env: Environment, task_id: str,
                 **extra: Any) -> KubernetesPodOperator:
    """A GKEStartPodOperator (``gke``) or KubernetesPodOperator (``kubernetes``) for ``spec``."""
    kwargs = {**_pod_kwargs(spec), **extra}
    if launcher == "gke":
        return GKEStartPodOperator(task_id=task_id, **_gke_kwargs(env), **kwargs)
    if launcher == "kubernetes":
        return KubernetesPodOperator(task_id=task_id, kubernetes_conn_id=env.kubernetes_conn_id,
                                     **kwargs)
    raise ValueError(f"pod_operator: launcher {launcher!r} runs no pods")


def slice_operator(launcher: str, job: SliceJob, env: Environment,
                   task_id: str) -> KubernetesJobOperator:
    """An indexed Job of ``job.hosts`` pods (all started together: parallelism = completions)."""
    kwargs = {**_pod_kwargs(job.pod), "name": job.job_name.removeprefix("job-"),
              "random_name_suffix": False, "completion_mode": "Indexed",
              "completions": job.hosts, "parallelism": job.hosts, "backoff_limit": 0,
              "ttl_seconds_after_finished": 3600, "wait_until_job_complete": True}
    if launcher == "gke":
        return GKEStartJobOperator(task_id=task_id, **_gke_kwargs(env), **kwargs)
    if launcher == "kubernetes":
        return KubernetesJobOperator(task_id=task_id, kubernetes_conn_id=env.kubernetes_conn_id,
                                     **kwargs)
    raise ValueError(f"slice_operator: launcher {launcher!r} runs no pods")


def ensure_headless_service(operator: KubernetesJobOperator, job: SliceJob) -> None:
    """Creates the slice's headless service (pod DNS names) unless it exists already."""
    from kubernetes.client.exceptions import ApiException

    try:
        operator.hook.core_v1_client.create_namespaced_service(
            namespace=job.pod.namespace, body=job.service_manifest())
    except ApiException as error:
        if error.status != 409:  # 409: it exists (a retry); anything else is a real failure
            raise


def local_python(params: RunParams) -> str:
    return params.local_python or sys.executable


def local_env(params: RunParams, env: Environment, run: str, stage: str) -> dict[str, str]:
    """The worker's environment plus what a pod would get (the Optuna URL for tune)."""
    values = {**os.environ, "PYTHONUNBUFFERED": "1", "SER_JAX_RUN": run}
    if stage == "tune":
        uri = Connection.get(env.optuna_conn_id).get_uri()
        values[commands.OPTUNA_STORAGE_ENV] = uri.replace("postgres://", "postgresql+psycopg2://",
                                                          1)
    return values


def run_local(command: list[str], env: Mapping[str, str], cwd: str | None) -> int:
    """Runs ``command`` on the worker, streaming its output into the task log; returns its
    exit code (the process is killed if the task is stopped or times out)."""
    command = commands.expand_env_references(command, env)
    log.info("running %s (cwd %s)", " ".join(command), cwd or os.getcwd())
    process = subprocess.Popen(command, cwd=cwd or None, env=dict(env), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            log.info("%s", line.rstrip())
        return process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def code_version(params: RunParams, env: Environment, hardware: str) -> str:
    """What produced the model: the image for pods; locally the git commit of local_repo (with
    '-dirty' for uncommitted changes) or else the installed ser-jax package version."""
    if params.launcher != "local":
        return env.image(hardware, params.image)
    cwd = params.local_repo or os.getcwd()
    git = subprocess.run(["git", "-C", cwd, "rev-parse", "HEAD"], capture_output=True, text=True)
    if git.returncode == 0:
        dirty = subprocess.run(["git", "-C", cwd, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return f"git:{git.stdout.strip()}{'-dirty' if dirty else ''}"
    version = subprocess.run([local_python(params), "-c", "import importlib.metadata as m; "
                              "print(m.version('ser-jax'))"], capture_output=True, text=True)
    if version.returncode != 0:
        raise RuntimeError(f"cannot tell the code version: {cwd} is not a git checkout and "
                           f"{local_python(params)} has no ser-jax package installed")
    return f"ser-jax=={version.stdout.strip()}"


def stage_command(params: RunParams, run: str, stage: str, shard: int | None,
                  python: str) -> list[str] | None:
    """The stage's trainer command (None: nothing to run, e.g. merging a single shard)."""
    if stage == "features":
        return commands.features(params, run, shard or 0, python)
    if stage == "merge_features":
        return commands.merge_features(params, run, python)
    builders = {"tune": commands.tune, "train": commands.train, "evaluate": commands.evaluate}
    return builders[stage](params, run, python)


def execute_stage(params: RunParams, env: Environment, run: str, stage: str,
                  context: Mapping[str, Any], shard: int | None = None) -> None:
    """Runs one stage with the run's launcher; raises when it fails (the task then retries)."""
    python = local_python(params) if params.launcher == "local" else "python"
    command = stage_command(params, run, stage, shard, python)
    if command is None:
        log.info("%s: nothing to do with %d shard(s)", stage, params.shards)
        return
    if params.launcher == "local":
        code = run_local(command, local_env(params, env, run, stage), params.local_repo)
        if code != 0:
            raise RuntimeError(f"{stage} exited with code {code}: see the lines above")
        return
    task_id = context["ti"].task_id
    if stage == "train" and params.multi_host:
        job = slice_job(params, env, stage, run, command, attempt=context["ti"].try_number)
        operator = slice_operator(params.launcher, job, env, task_id)
        ensure_headless_service(operator, job)
        operator.execute(context)
        return
    pod_operator(params.launcher, pod_spec(params, env, stage, run, command, shard), env,
                 task_id).execute(context)
