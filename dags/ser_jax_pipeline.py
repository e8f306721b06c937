"""ser-jax training pipeline: features -> merge -> tune -> train -> evaluate -> gate -> publish.

Each stage runs ``python -m ser_jax.main --stage=...`` in a pod (``launcher=gke`` or
``kubernetes``: CPU pods for features, merge and evaluate; a GPU pod, TPU host or multi-host TPU
slice for tune and train) or on the worker itself (``launcher=local``). The run's folder is
``ROOT/runs/<run>``, named from the Airflow run id, so a retried task or a cleared run resumes:
the features stage reuses features with the same fingerprint and train resumes from its latest
checkpoint. The gate keeps the published model unless the candidate reaches the threshold and
the champion's score on the same test speakers; publish writes ``ROOT/models/<run>/`` and then
the ``ROOT/models/current`` pointer. Deployment: docs/deploy.md.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # not every Airflow process puts the DAG folder on sys.path
    sys.path.insert(0, _HERE)

from airflow.sdk import DAG, Param, TriggerRule, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from ser_jax_dag import gate as gate_lib
from ser_jax_dag import launchers
from ser_jax_dag import publish as publish_lib
from ser_jax_dag.params import RunParams, run_dir, run_name_from_run_id

# Retries: exponential back-off from RETRY_DELAY (SER_JAX_DAG_RETRY_DELAY_S lowers it for tests).
RETRY_DELAY = datetime.timedelta(seconds=float(os.environ.get("SER_JAX_DAG_RETRY_DELAY_S", 60)))
POD_TASK = dict(retries=3, retry_delay=RETRY_DELAY, retry_exponential_backoff=2.0,
                max_retry_delay=datetime.timedelta(minutes=30))
HOUR = datetime.timedelta(hours=1)

PARAMS = {
    "launcher": Param("gke", enum=["gke", "kubernetes", "local"],
                      description="gke: GKEStartPodOperator; kubernetes: KubernetesPodOperator; "
                                  "local: the commands on the Airflow worker"),
    "root": Param("", type="string", description="Absolute folder or gs://bucket[/prefix] "
                                                 "holding runs/ and models/ (required)"),
    "run_name": Param("", type="string", description="Run folder name; '' = from the run id"),
    "config": Param("configs/default.py", type="string", description="Trainer config file"),
    "config_overrides": Param([], type="array", items={"type": "string"},
                              description="Extra '--config.FIELD=VALUE' flags for every stage"),
    "image": Param("", type="string",
                   description="Image for every pod; '' = Variable ser_jax_image_<hardware>"),
    "hardware": Param("gpu", enum=["cpu", "gpu", "tpu"], description="Tune and train hardware"),
    "accelerator": Param("nvidia-l4", type="string",
                         description="GKE accelerator: nvidia-l4, nvidia-h100-80gb, "
                                     "tpu-v5-lite-podslice, ..."),
    "accelerator_count": Param(1, type="integer", minimum=1, maximum=16,
                               description="GPUs per pod or TPU chips per host"),
    "tpu_topology": Param("", type="string", description="TPU slice topology, e.g. 2x4"),
    "tpu_hosts": Param(1, type="integer", minimum=1, maximum=256,
                       description="> 1: a multi-host TPU slice (indexed Job)"),
    "cpu": Param("4", type="string", description="CPU request per pod"),
    "memory": Param("16Gi", type="string", description="Memory request and limit per pod"),
    "shards": Param(1, type="integer", minimum=1, maximum=256,
                    description="Feature shards, one CPU pod each"),
    "tune_workers": Param(0, type="integer", minimum=0, maximum=64,
                          description="Tune pods on one Optuna study (0 skips tuning)"),
    "tune_trials": Param(0, type="integer", minimum=0, maximum=10000,
                         description="Optuna trials in all (0 skips tuning)"),
    "threshold": Param(0.5, type="number", minimum=0, maximum=1,
                       description="Lowest test balanced accuracy that may be published"),
    "on_incomparable_champion": Param("fail", enum=["fail", "threshold_only"],
                                      description="Champion tested on other speakers: keep it "
                                                  "(fail) or let the threshold decide"),
    "local_python": Param("", type="string",
                          description="local launcher: interpreter with ser_jax installed"),
    "local_repo": Param("", type="string",
                        description="local launcher: working directory holding configs/"),
}


def _run() -> tuple[RunParams, str, dict]:
    """The validated params, the run's folder name and the task context."""
    context = get_current_context()
    params = RunParams.from_dict(dict(context["params"]))
    return params, params.run_name or run_name_from_run_id(context["run_id"]), context


def _stage(stage: str, shard: int | None = None) -> None:
    params, run, context = _run()
    launchers.execute_stage(params, launchers.environment(), run, stage, context, shard)


with DAG(
    dag_id="ser_jax_pipeline",
    description=__doc__.splitlines()[0],
    schedule=None,  # started by hand, by the API or by the ser_jax_monitor DAG on drift
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    catchup=False,
    max_active_runs=1,  # runs publish to one models/current
    params=PARAMS,
    tags=["ser-jax", "training"],
    doc_md=__doc__,
) as dag:

    @task(retries=0, execution_timeout=datetime.timedelta(minutes=5))
    def plan() -> list[int]:
        """Validates the params (a bad value fails here, before any pod starts); returns the
        feature shards to map over."""
        params, run, _ = _run()
        print(f"run {run}: workdir {run_dir(params.root, run)}, {params.shards} shard(s), "
              f"{params.tune_workers if params.tune_enabled else 0} tune worker(s), "
              f"train on {params.hardware}")
        return list(range(params.shards))

    @task(retries=0, execution_timeout=datetime.timedelta(minutes=5))
    def tune_workers() -> list[int]:
        """The tune workers to map over: none (tune skipped) unless tune_workers and
        tune_trials are both set."""
        params, _, _ = _run()
        return list(range(params.tune_workers)) if params.tune_enabled else []

    @task(execution_timeout=2 * HOUR, **POD_TASK)
    def features(shard: int) -> None:
        _stage("features", shard)

    @task(execution_timeout=HOUR / 2, **POD_TASK)
    def merge_features() -> None:
        _stage("merge_features")

    @task(execution_timeout=12 * HOUR, **POD_TASK)
    def tune(worker: int) -> None:
        _stage("tune")

    @task(execution_timeout=12 * HOUR, trigger_rule=TriggerRule.NONE_FAILED, **POD_TASK)
    def train() -> None:
        _stage("train")

    @task(execution_timeout=HOUR, **POD_TASK)
    def evaluate() -> None:
        _stage("evaluate")

    @task(retries=0, execution_timeout=datetime.timedelta(minutes=15))
    def gate() -> dict:
        """Fails the run (and so skips publish) unless the candidate may replace the champion."""
        params, run, _ = _run()
        workdir = run_dir(params.root, run)
        candidate = publish_lib.read_json(f"{workdir}/evaluation/metrics.json")
        if candidate is None:
            raise FileNotFoundError(f"{workdir}/evaluation/metrics.json is missing")
        champion = publish_lib.current(params.root)
        if champion is not None and champion["run"] == run:
            print(f"gate: run {run} is already the published model")
            return {"passed": True, "reason": "already published", "candidate":
                    candidate["balanced_accuracy"], "champion": candidate["balanced_accuracy"]}
        decision = gate_lib.decide(candidate, publish_lib.scored_speakers(workdir), champion,
                                   params.threshold, params.on_incomparable_champion)
        print(f"gate: {'PASS' if decision.passed else 'FAIL'}: {decision.reason}")
        if not decision.passed:
            raise AirflowFailException(f"quality gate: {decision.reason}")
        return decision.as_dict()

    @task(retries=2, retry_delay=RETRY_DELAY, execution_timeout=datetime.timedelta(minutes=30))
    def publish(decision: dict) -> str:
        params, run, _ = _run()
        env = launchers.environment()
        metadata = publish_lib.publish(params.root, run, run_dir(params.root, run),
                                       launchers.code_version(params, env, params.hardware),
                                       decision)
        print(f"published {run}: {metadata['metrics']}; models/current -> {run}")
        return run

    shard_features = features.expand(shard=plan())
    merged = merge_features()
    workers = tune_workers()
    tuned = tune.expand(worker=workers)
    trained = train()
    evaluated = evaluate()
    decision = gate()
    shard_features >> merged >> workers
    merged >> tuned >> trained >> evaluated >> decision
    publish(decision)
