"""What each stage's pod asks Kubernetes for, as plain data (launchers turn it into operators).

Features, merge and evaluate run on CPU pods; tune and train on the run's hardware: a GPU pod
(``nvidia.com/gpu`` limit, ``cloud.google.com/gke-accelerator`` selector, the GPU taint
tolerated), a TPU host (``google.com/tpu`` limit, ``gke-tpu-accelerator`` and
``gke-tpu-topology`` selectors, the TPU taint tolerated) or, for a multi-host TPU slice, an
indexed Job whose pods find each other through a headless service.
"""

from __future__ import annotations

import dataclasses

from ser_jax_dag.commands import OPTUNA_STORAGE_ENV
from ser_jax_dag.params import RunParams

CPU_STAGES = ("features", "merge_features", "evaluate", "monitor")
COORDINATOR_PORT = 8476
COMPLETION_INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
JOB_NAME_PREFIX = "job-"  # KubernetesJobOperator prefixes every Job name with this


@dataclasses.dataclass(frozen=True)
class Environment:
    """Facts about the deployment (Airflow Variables / Connections), not about one run."""

    namespace: str = "ser-jax"
    service_account: str = "ser-jax"  # Kubernetes SA bound to a Google SA (Workload Identity)
    images: tuple[tuple[str, str], ...] = ()  # (hardware, image) pairs
    project: str = ""
    location: str = ""
    cluster: str = ""
    gcp_conn_id: str = "google_cloud_default"
    kubernetes_conn_id: str = "kubernetes_default"
    optuna_secret: str = "ser-jax-optuna"  # Kubernetes Secret with key 'url' (tune pods)
    optuna_conn_id: str = "ser_jax_optuna"  # Airflow Connection (local launcher)

    def image(self, hardware: str, override: str = "") -> str:
        if override:
            return override
        image = dict(self.images).get(hardware, "")
        if not image:
            raise ValueError(f"no image for {hardware}: set the Airflow Variable "
                             f"ser_jax_image_{hardware} or pass the param image")
        return image


@dataclasses.dataclass(frozen=True)
class PodSpec:
    """One pod (or the pod template of a slice Job)."""

    name: str
    image: str
    command: list[str]
    namespace: str
    service_account: str
    requests: dict[str, str]
    limits: dict[str, str]
    node_selector: dict[str, str]
    tolerations: list[dict[str, str]]
    env: dict[str, str]
    secret_env: dict[str, tuple[str, str]]  # env name -> (secret name, key)
    field_env: dict[str, str]  # env name -> pod field path (downward API)
    labels: dict[str, str]
    subdomain: str | None = None


@dataclasses.dataclass(frozen=True)
class SliceJob:
    """A multi-host TPU slice: ``hosts`` pods started together as one indexed Job."""

    job_name: str  # as KubernetesJobOperator will name it (prefix included)
    service_name: str  # headless service giving each pod a DNS name
    hosts: int
    pod: PodSpec

    @property
    def coordinator(self) -> str:
        return f"{self.job_name}-0.{self.service_name}:{COORDINATOR_PORT}"

    def service_manifest(self) -> dict:
        """The headless service (selects the Job's pods by the job-name label Kubernetes sets)."""
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": self.service_name, "namespace": self.pod.namespace,
                             "labels": self.pod.labels},
                "spec": {"clusterIP": "None", "selector": {"job-name": self.job_name},
                         "ports": [{"name": "coordinator", "port": COORDINATOR_PORT}]}}


def stage_hardware(params: RunParams, stage: str) -> str:
    return "cpu" if stage in CPU_STAGES else params.hardware


def pod_name(stage: str, run: str, shard: int | None = None) -> str:
    """DNS-safe: 'sj-features-3-<run>' (run names are at most 40 characters)."""
    stage = stage.replace("_", "-")
    return f"sj-{stage}-{shard}-{run}" if shard is not None else f"sj-{stage}-{run}"


def pod_spec(params: RunParams, env: Environment, stage: str, run: str, command: list[str],
             shard: int | None = None) -> PodSpec:
    """The pod that runs ``command`` for ``stage`` of run ``run``."""
    hardware = stage_hardware(params, stage)
    requests = {"cpu": params.cpu, "memory": params.memory}
    limits = {"memory": params.memory}
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, str]] = []
    if hardware == "gpu":
        limits["nvidia.com/gpu"] = str(params.accelerator_count)
        node_selector["cloud.google.com/gke-accelerator"] = params.accelerator
        tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists",
                            "effect": "NoSchedule"})
    elif hardware == "tpu":
        requests["google.com/tpu"] = limits["google.com/tpu"] = str(params.accelerator_count)
        node_selector["cloud.google.com/gke-tpu-accelerator"] = params.accelerator
        node_selector["cloud.google.com/gke-tpu-topology"] = params.tpu_topology
        tolerations.append({"key": "google.com/tpu", "operator": "Exists",
                            "effect": "NoSchedule"})
    secret_env = ({OPTUNA_STORAGE_ENV: (env.optuna_secret, "url")} if stage == "tune" else {})
    return PodSpec(
        name=pod_name(stage, run, shard), image=env.image(hardware, params.image),
        command=command, namespace=env.namespace, service_account=env.service_account,
        requests=requests, limits=limits, node_selector=node_selector, tolerations=tolerations,
        env={"PYTHONUNBUFFERED": "1", "SER_JAX_RUN": run}, secret_env=secret_env, field_env={},
        labels={"app": "ser-jax", "ser-jax/run": run, "ser-jax/stage": stage.replace("_", "-")})


def slice_job(params: RunParams, env: Environment, stage: str, run: str,
              command: list[str], attempt: int | None = None) -> SliceJob:
    """The indexed Job for a multi-host TPU slice; each pod learns its place from its index.

    ``jax.distributed`` reads JAX_COORDINATOR_ADDRESS (pod 0 through the headless service),
    JAX_NUM_PROCESSES and JAX_PROCESS_ID (the completion index); libtpu reads TPU_WORKER_ID and
    TPU_WORKER_HOSTNAMES. ``attempt`` (the task's try number) names each attempt's Job and
    service apart, so a retry never collides with a failed attempt's Job still being cleaned up.
    """
    if not params.multi_host:
        raise ValueError("slice_job is for hardware=tpu with tpu_hosts > 1")
    pod = pod_spec(params, env, stage, run, command)
    name = pod.name if attempt is None else f"{pod.name}-a{attempt}"
    job = SliceJob(job_name=f"{JOB_NAME_PREFIX}{name}", service_name=name,
                   hosts=params.tpu_hosts, pod=pod)
    hostnames = ",".join(f"{job.job_name}-{i}.{job.service_name}" for i in range(job.hosts))
    env_vars = {**pod.env, "JAX_COORDINATOR_ADDRESS": job.coordinator,
                "JAX_NUM_PROCESSES": str(job.hosts), "TPU_WORKER_HOSTNAMES": hostnames}
    field_env = {"JAX_PROCESS_ID": COMPLETION_INDEX_FIELD, "TPU_WORKER_ID": COMPLETION_INDEX_FIELD}
    return dataclasses.replace(job, pod=dataclasses.replace(
        pod, env=env_vars, field_env=field_env, subdomain=job.service_name))
